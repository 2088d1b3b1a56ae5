"""The transactional outbox and its relay against real PostgreSQL and NATS JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable

import pytest
from nats.js import JetStreamContext
from opentelemetry.sdk.trace import TracerProvider
from psycopg import sql

from common.db import Connection, Pool, connect
from common.outbox import (
    OutboxRelay,
    RelayOptions,
    add_event,
    notify_channel,
    outbox_lag,
    reserve_sequences,
)
from tests.integration.common.conftest import (
    SCHEMA,
    EventStream,
    running,
    stream_count,
    stream_messages,
    wait_for,
)

FAST = RelayOptions(
    poll_interval_s=0.2, standby_retry_s=0.1, publish_timeout_s=2.0, max_backoff_s=0.3
)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def add(
    conn: Connection,
    aggregate_id: str,
    stream: EventStream | None = None,
    *,
    subject: str | None = None,
) -> uuid.UUID:
    """Add a SlotFreed event (on the test stream's subjects when a stream is given)."""
    if subject is None:
        subject = stream.subject("slot", "freed") if stream else "medsched.slot.freed"
    return await add_event(
        conn,
        SCHEMA,
        subject=subject,
        event_type="SlotFreed",
        aggregate_type="slot",
        aggregate_id=aggregate_id,
        payload=aggregate_id.encode(),
    )


async def pending_count(pool: Pool) -> int:
    async with pool.connection() as conn:
        return (await outbox_lag(conn, SCHEMA)).pending


def pending_is(pool: Pool, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await pending_count(pool) == n

    return check


def nothing_pending(pool: Pool) -> Callable[[], Awaitable[bool]]:
    return pending_is(pool, 0)


def stream_holds(
    js: JetStreamContext, stream: EventStream, n: int
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await stream_count(js, stream.name) == n

    return check


def outbox_holds(pool: Pool, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT count(*) FROM svc.outbox")
            return await cursor.fetchone() == (n,)

    return check


def holds(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()

    return check


async def test_events_get_per_aggregate_sequence_numbers(pool: Pool, outbox_schema: str) -> None:
    async with pool.connection() as conn:
        for aggregate_id in ("a", "b", "a", "a", "b"):
            await add(conn, aggregate_id)
        cursor = await conn.execute(
            "SELECT aggregate_id, aggregate_seq FROM svc.outbox ORDER BY id"
        )
        rows = await cursor.fetchall()
    assert rows == [("a", 1), ("b", 1), ("a", 2), ("a", 3), ("b", 2)]


async def test_reserved_sequences_continue_each_aggregates_numbering(
    pool: Pool, outbox_schema: str
) -> None:
    async with pool.connection() as conn:
        await add(conn, "a")
        first = await reserve_sequences(conn, SCHEMA, {("slot", "a"): 3, ("slot", "c"): 2})
        await add(conn, "a")
        cursor = await conn.execute(
            "SELECT aggregate_seq FROM svc.outbox WHERE aggregate_id = 'a' ORDER BY id"
        )
        rows = await cursor.fetchall()
    assert first == {("slot", "a"): 2, ("slot", "c"): 1}
    assert rows == [(1,), (5,)]


async def test_reserving_sequences_outside_a_transaction_is_refused(
    database_url: str, outbox_schema: str
) -> None:
    async with await connect(database_url, application_name="t", autocommit=True) as conn:
        with pytest.raises(ValueError, match="inside the transaction"):
            await reserve_sequences(conn, SCHEMA, {("slot", "a"): 1})


async def test_rolled_back_event_leaves_no_gap_in_the_sequence(
    pool: Pool, outbox_schema: str
) -> None:
    async with pool.connection() as conn:
        await add(conn, "a")
    with contextlib.suppress(RuntimeError):
        async with pool.connection() as conn:
            await add(conn, "a")
            raise RuntimeError("the booking failed after writing its event")
    async with pool.connection() as conn:
        await add(conn, "a")
        cursor = await conn.execute("SELECT aggregate_seq FROM svc.outbox ORDER BY id")
        assert await cursor.fetchall() == [(1,), (2,)]


async def test_notification_is_sent_on_commit_only(
    database_url: str, pool: Pool, outbox_schema: str
) -> None:
    listener = await connect(database_url, application_name="test-listen", autocommit=True)
    async with listener:
        await listener.execute(
            sql.SQL("LISTEN {}").format(sql.Identifier(notify_channel(outbox_schema)))
        )
        async with pool.connection() as conn:
            await add(conn, "a")
            before_commit = [n async for n in listener.notifies(timeout=0.3)]
        after_commit = [n async for n in listener.notifies(timeout=5, stop_after=1)]
    assert before_commit == []
    assert [n.channel for n in after_commit] == ["medsched_outbox_svc"]


async def test_event_outside_a_transaction_is_refused(
    database_url: str, outbox_schema: str
) -> None:
    async with await connect(database_url, application_name="t", autocommit=True) as conn:
        with pytest.raises(ValueError, match="inside the transaction"):
            await add(conn, "a")


async def test_current_trace_context_is_stored_with_the_event(
    pool: Pool, outbox_schema: str
) -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("book appointment") as span:
        async with pool.connection() as conn:
            await add(conn, "a")
    trace_id = format(span.get_span_context().trace_id, "032x")

    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT headers FROM svc.outbox")
        (headers,) = await cursor.fetchone() or (None,)
    assert isinstance(headers, dict)
    assert headers["traceparent"].split("-")[1] == trace_id
    assert "baggage" not in headers


async def test_relay_publishes_with_event_id_as_msg_id_and_event_headers(
    database_url: str, pool: Pool, outbox_schema: str, js: JetStreamContext, stream: EventStream
) -> None:
    async with pool.connection() as conn:
        event_id = await add_event(
            conn,
            outbox_schema,
            subject=stream.subject("appointment", "booked"),
            event_type="AppointmentBooked",
            aggregate_type="appointment",
            aggregate_id="ap-1",
            payload=b"\x08\x01",
            headers={"traceparent": TRACEPARENT},
        )
    relay = OutboxRelay(database_url, outbox_schema, js, options=FAST)
    async with running(relay):
        await wait_for(nothing_pending(pool), what="publish")

    (message,) = await stream_messages(js, stream.name)
    assert message.subject == stream.subject("appointment", "booked")
    assert message.data == b"\x08\x01"
    assert message.headers is not None
    assert message.headers["Nats-Msg-Id"] == str(event_id)
    assert message.headers["Medsched-Event-Type"] == "AppointmentBooked"
    assert message.headers["Medsched-Aggregate-Type"] == "appointment"
    assert message.headers["Medsched-Aggregate-Id"] == "ap-1"
    assert message.headers["Medsched-Aggregate-Seq"] == "1"
    assert message.headers["traceparent"] == TRACEPARENT
    assert relay.published_total == 1


async def test_late_committing_row_is_not_skipped(
    database_url: str, pool: Pool, outbox_schema: str, js: JetStreamContext, stream: EventStream
) -> None:
    relay = OutboxRelay(database_url, outbox_schema, js, options=FAST)
    async with running(relay), pool.connection() as late:
        # Takes the lowest id, but commits only after later rows were published.
        late_id = await add(late, "late", stream)
        async with pool.connection() as conn:
            for n in range(3):
                await add(conn, f"early-{n}", stream)
        await wait_for(stream_holds(js, stream, 3), what="early rows")
        await late.commit()
        await wait_for(stream_holds(js, stream, 4), what="the late row")

    ids = [m.headers["Nats-Msg-Id"] for m in await stream_messages(js, stream.name) if m.headers]
    assert ids[-1] == str(late_id)
    assert await pending_count(pool) == 0


async def test_rows_published_but_not_marked_are_republished_and_the_stream_keeps_one_copy(
    database_url: str, pool: Pool, outbox_schema: str, js: JetStreamContext, stream: EventStream
) -> None:
    async with pool.connection() as conn:
        for n in range(5):
            await add(conn, f"a{n % 2}", stream)
    first = OutboxRelay(database_url, outbox_schema, js, options=FAST)
    async with running(first):
        await wait_for(nothing_pending(pool), what="first publish")
    # What a crash between the stream's ack and the UPDATE leaves behind.
    async with pool.connection() as conn:
        await conn.execute("UPDATE svc.outbox SET published_at = NULL")

    second = OutboxRelay(database_url, outbox_schema, js, options=FAST)
    async with running(second):
        await wait_for(nothing_pending(pool), what="re-publish")

    assert second.published_total == 5
    assert second.duplicates_total == 5
    assert await stream_count(js, stream.name) == 5


async def test_events_of_each_aggregate_reach_the_stream_in_sequence_order(
    database_url: str, pool: Pool, outbox_schema: str, js: JetStreamContext, stream: EventStream
) -> None:
    aggregates = [f"agg-{n}" for n in range(12)]
    async with pool.connection() as conn:
        for round_ in range(25):
            for aggregate_id in aggregates[round_ % 3 :] + aggregates[: round_ % 3]:
                await add(conn, aggregate_id, stream)
            await conn.commit()
    options = RelayOptions(poll_interval_s=0.2, batch_size=37, max_in_flight=64)
    relay = OutboxRelay(database_url, outbox_schema, js, options=options)
    async with running(relay):
        await wait_for(stream_holds(js, stream, 300), what="all events")

    sequences: dict[str, list[int]] = defaultdict(list)
    for message in await stream_messages(js, stream.name):
        assert message.headers is not None
        aggregate_id = message.headers["Medsched-Aggregate-Id"]
        sequences[aggregate_id].append(int(message.headers["Medsched-Aggregate-Seq"]))
    assert sequences == {a: list(range(1, 26)) for a in aggregates}


async def test_failed_publish_holds_back_later_events_of_that_aggregate_only(
    database_url: str, pool: Pool, outbox_schema: str, js: JetStreamContext, stream: EventStream
) -> None:
    async with pool.connection() as conn:
        await add(conn, "held", stream)
        # No stream listens on this subject: JetStream refuses it until it is fixed below.
        await add(conn, "held", stream, subject=f"nowhere{stream.root}.slot.freed")
        await add(conn, "held", stream)
        for n in range(3):
            await add(conn, f"free-{n}", stream)
    relay = OutboxRelay(database_url, outbox_schema, js, options=FAST)
    async with running(relay):
        await wait_for(stream_holds(js, stream, 4), what="publishable rows")
        await wait_for(holds(lambda: relay.failures_total > 0), what="the refused publish")
        await wait_for(pending_is(pool, 2), what="the publishable rows to be marked")
        async with pool.connection() as conn:
            await conn.execute(
                "UPDATE svc.outbox SET subject = %s WHERE published_at IS NULL",
                (stream.subject("slot", "freed"),),
            )
        await wait_for(stream_holds(js, stream, 6), what="held rows")

    held = [
        int(m.headers["Medsched-Aggregate-Seq"])
        for m in await stream_messages(js, stream.name)
        if m.headers and m.headers["Medsched-Aggregate-Id"] == "held"
    ]
    assert held == [1, 2, 3]


async def test_only_one_relay_leads_and_a_standby_takes_over_when_the_leader_dies(
    database_url: str, pool: Pool, outbox_schema: str, js: JetStreamContext, stream: EventStream
) -> None:
    leader = OutboxRelay(database_url, outbox_schema, js, options=FAST)
    standby = OutboxRelay(database_url, outbox_schema, js, options=FAST)
    leader_task = asyncio.create_task(leader.run())
    try:
        await wait_for(holds(lambda: leader.is_leader), what="a leader")
        async with running(standby):
            async with pool.connection() as conn:
                for n in range(10):
                    await add(conn, f"a{n}", stream)
            await wait_for(holds(lambda: leader.published_total == 10), what="first 10")
            assert await stream_count(js, stream.name) == 10
            assert standby.published_total == 0
            assert not standby.is_leader

            leader_task.cancel()  # the leader's process ends without a word
            with contextlib.suppress(asyncio.CancelledError):
                await leader_task
            await wait_for(holds(lambda: standby.is_leader), what="the standby to take over")
            async with pool.connection() as conn:
                for n in range(5):
                    await add(conn, f"b{n}", stream)
            await wait_for(holds(lambda: standby.published_total == 5), what="next 5")
            assert await stream_count(js, stream.name) == 15
    finally:
        leader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leader_task


async def test_published_rows_are_deleted_once_retention_passed_and_sequences_continue(
    database_url: str, pool: Pool, outbox_schema: str, js: JetStreamContext, stream: EventStream
) -> None:
    async with pool.connection() as conn:
        for _ in range(4):
            await add(conn, "a", stream)
    keeper = OutboxRelay(
        database_url, outbox_schema, js, options=RelayOptions(poll_interval_s=0.2, retention_s=60)
    )
    async with running(keeper):
        await wait_for(nothing_pending(pool), what="publish")
    kept_by_young_retention = await keeper.prune()

    pruner = OutboxRelay(
        database_url,
        outbox_schema,
        js,
        options=RelayOptions(poll_interval_s=0.1, retention_s=0, prune_interval_s=0.1),
    )
    async with running(pruner):
        await wait_for(outbox_holds(pool, 0), what="the relay to prune")
    async with pool.connection() as conn:
        next_id = await add(conn, "a", stream)
        cursor = await conn.execute("SELECT event_id, aggregate_seq FROM svc.outbox")
        rows = await cursor.fetchall()

    assert kept_by_young_retention == 0
    assert rows == [(next_id, 5)]


async def test_lag_counts_pending_rows_and_the_age_of_the_oldest(
    database_url: str, pool: Pool, outbox_schema: str, js: JetStreamContext, stream: EventStream
) -> None:
    relay = OutboxRelay(database_url, outbox_schema, js, options=FAST)
    empty = await relay.lag()
    async with pool.connection() as conn:
        await add(conn, "a", stream)
        await add(conn, "b", stream)
    behind = await relay.lag()
    async with running(relay):
        await wait_for(nothing_pending(pool), what="publish")
        caught_up = await relay.lag()

    assert (empty.pending, empty.oldest_age_s) == (0, 0.0)
    assert behind.pending == 2
    assert 0 < behind.oldest_age_s < 10
    assert (caught_up.pending, caught_up.oldest_age_s) == (0, 0.0)
