"""The JetStream bus on real NATS and PostgreSQL: de-duplication at both ends, retries, order."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
from nats.js import JetStreamContext

from common import bus
from common.bus import (
    ConsumerOptions,
    DurableConsumer,
    ReceivedEvent,
    StreamConsumer,
    apply_once,
    ensure_consumer,
)
from common.db import Connection, Pool
from common.errors import DependencyUnavailable
from deploy.embedded import free_port
from tests.integration.common.conftest import SCHEMA, EventStream, stream_count, wait_for

QUICK = ConsumerOptions(ack_wait_s=1.0, fetch_timeout_s=0.2, retry_delays_s=(0.05,))


async def publish_events(
    js: JetStreamContext, subject: str, count: int, *, aggregate_id: str = "agg-1"
) -> list[uuid.UUID]:
    ids = []
    for n in range(count):
        event_id = uuid.uuid4()
        await bus.publish(
            js,
            subject,
            f"payload-{n}".encode(),
            msg_id=str(event_id),
            headers={
                bus.HEADER_EVENT_TYPE: "SlotFreed",
                bus.HEADER_AGGREGATE_TYPE: "slot",
                bus.HEADER_AGGREGATE_ID: aggregate_id,
                bus.HEADER_AGGREGATE_SEQ: str(n + 1),
            },
        )
        ids.append(event_id)
    return ids


@pytest.fixture
async def applied_table(pool: Pool) -> str:
    """A table the test handlers write to, inside the consumer's transaction."""
    async with pool.connection() as conn:
        await conn.execute(
            "CREATE TABLE svc.applied (event_id uuid NOT NULL, aggregate_seq int, payload bytea)"
        )
    return "svc.applied"


async def record(event: ReceivedEvent, conn: Connection) -> None:
    await conn.execute(
        "INSERT INTO svc.applied VALUES (%s, %s, %s)",
        (event.event_id, event.aggregate_seq, event.payload),
    )


async def applied_rows(pool: Pool) -> list[tuple[uuid.UUID, int, bytes]]:
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT event_id, aggregate_seq, payload FROM svc.applied")
        return [(e, s, bytes(p)) for e, s, p in await cursor.fetchall()]


def holds(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()

    return check


def test_subject_is_built_from_valid_tokens_only() -> None:
    assert bus.subject("appointment", "booked") == "medsched.appointment.booked"
    with pytest.raises(ValueError, match=r"aggregate 'Appointment' is not a valid subject token"):
        bus.subject("Appointment", "booked")
    with pytest.raises(ValueError, match=r"event 'booked\.>' is not a valid subject token"):
        bus.subject("appointment", "booked.>")


async def test_unreachable_nats_fails_fast_with_dependency_unavailable() -> None:
    started = time.monotonic()

    with pytest.raises(DependencyUnavailable, match="NATS connection 'probe' could not be opened"):
        await bus.connect(
            f"nats://127.0.0.1:{free_port()}", name="probe", first_connect_timeout_s=1
        )

    assert time.monotonic() - started < 5


async def test_same_msg_id_published_twice_is_stored_once(
    js: JetStreamContext, stream: EventStream
) -> None:
    subject = stream.subject("slot", "freed")
    first = await bus.publish(js, subject, b"1", msg_id="event-1")
    repeat = await bus.publish(js, subject, b"1", msg_id="event-1")
    other = await bus.publish(js, subject, b"2", msg_id="event-2")

    assert (first.duplicate, repeat.duplicate, other.duplicate) == (None, True, None)
    assert repeat.seq == first.seq
    assert await stream_count(js, stream.name) == 2


async def test_ensure_stream_is_idempotent_and_applies_changed_settings(
    js: JetStreamContext, unique: str
) -> None:
    name, subjects = f"S{unique}", [f"s{unique}.>"]
    try:
        created = await bus.ensure_stream(js, name, subjects, duplicate_window_s=60)
        unchanged = await bus.ensure_stream(js, name, subjects, duplicate_window_s=60)
        changed = await bus.ensure_stream(
            js, name, [*subjects, f"u{unique}.>"], duplicate_window_s=30
        )
    finally:
        await js.delete_stream(name)

    assert created.config.duplicate_window == 60
    assert unchanged.config == created.config
    assert unchanged.config.duplicate_window == 60
    assert changed.config.duplicate_window == 30
    assert sorted(changed.config.subjects or []) == sorted([f"s{unique}.>", f"u{unique}.>"])


async def test_ensure_consumer_updates_an_existing_consumer(
    js: JetStreamContext, stream: EventStream
) -> None:
    subjects = [f"{stream.root}.>"]
    await ensure_consumer(js, stream.name, "projector", subjects, QUICK)
    changed = ConsumerOptions(ack_wait_s=7.0, max_deliver=4, max_ack_pending=50)

    info = await ensure_consumer(js, stream.name, "projector", subjects, changed)

    assert (info.config.ack_wait, info.config.max_deliver, info.config.max_ack_pending) == (
        7.0,
        4,
        50,
    )


async def test_consumer_applies_each_event_in_its_transaction_then_acks(
    js: JetStreamContext, stream: EventStream, pool: Pool, applied_table: str
) -> None:
    ids = await publish_events(js, stream.subject("slot", "freed"), 3)
    consumer = DurableConsumer(
        js,
        pool,
        SCHEMA,
        stream=stream.name,
        durable="projector",
        subjects=[f"{stream.root}.>"],
        handler=record,
        options=QUICK,
    )
    await consumer.start()
    try:
        await wait_for(holds(lambda: consumer.handled_total == 3), what="3 events")
        await wait_for(_lag_is_zero(consumer), what="acks")
    finally:
        await consumer.stop()

    assert await applied_rows(pool) == [
        (ids[0], 1, b"payload-0"),
        (ids[1], 2, b"payload-1"),
        (ids[2], 3, b"payload-2"),
    ]
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT consumer, event_id FROM svc.inbox ORDER BY stream_seq")
        assert await cursor.fetchall() == [("projector", i) for i in ids]


async def test_redelivery_after_commit_without_ack_does_not_run_the_handler_again(
    js: JetStreamContext, stream: EventStream, pool: Pool, applied_table: str
) -> None:
    (event_id,) = await publish_events(js, stream.subject("slot", "freed"), 1)
    subjects = [f"{stream.root}.>"]
    await ensure_consumer(js, stream.name, "projector", subjects, QUICK)
    # A first consumer process commits its work and dies before its ack is sent.
    crashed = await js.pull_subscribe_bind(durable="projector", stream=stream.name)
    (msg,) = await crashed.fetch(1, timeout=5)
    async with pool.connection() as conn:
        assert await apply_once(conn, SCHEMA, "projector", ReceivedEvent.from_msg(msg), record)
    await crashed.unsubscribe()

    consumer = DurableConsumer(
        js,
        pool,
        SCHEMA,
        stream=stream.name,
        durable="projector",
        subjects=subjects,
        handler=record,
        options=QUICK,
    )
    await consumer.start()
    try:
        # Redelivered once the 1 s ack wait expired; recognised by the inbox; acked.
        await wait_for(holds(lambda: consumer.duplicates_total == 1), what="the redelivery")
        await wait_for(_lag_is_zero(consumer), what="the ack")
    finally:
        await consumer.stop()

    assert consumer.handled_total == 0
    assert [row[0] for row in await applied_rows(pool)] == [event_id]


async def test_failing_handler_is_rolled_back_and_retried_until_it_succeeds(
    js: JetStreamContext, stream: EventStream, pool: Pool, applied_table: str
) -> None:
    deliveries: list[int] = []

    async def flaky(event: ReceivedEvent, conn: Connection) -> None:
        deliveries.append(event.delivery_count)
        await record(event, conn)
        if len(deliveries) < 3:
            raise RuntimeError("the projection's dependency is briefly unavailable")

    (event_id,) = await publish_events(js, stream.subject("slot", "freed"), 1)
    consumer = DurableConsumer(
        js,
        pool,
        SCHEMA,
        stream=stream.name,
        durable="projector",
        subjects=[f"{stream.root}.>"],
        handler=flaky,
        options=QUICK,
    )
    await consumer.start()
    try:
        await wait_for(holds(lambda: consumer.handled_total == 1), what="success")
    finally:
        await consumer.stop()

    assert deliveries == [1, 2, 3]
    assert consumer.failures_total == 2
    assert [row[0] for row in await applied_rows(pool)] == [event_id]


async def test_event_failing_every_delivery_is_terminated_and_later_events_still_flow(
    js: JetStreamContext, stream: EventStream, pool: Pool, applied_table: str
) -> None:
    (poison,) = await publish_events(js, stream.subject("slot", "freed"), 1, aggregate_id="bad")
    (good,) = await publish_events(js, stream.subject("slot", "freed"), 1, aggregate_id="ok")
    attempts: list[uuid.UUID] = []

    async def picky(event: ReceivedEvent, conn: Connection) -> None:
        attempts.append(event.event_id)
        if event.aggregate_id == "bad":
            raise ValueError("cannot apply")
        await record(event, conn)

    options = ConsumerOptions(
        ack_wait_s=1.0, fetch_timeout_s=0.2, retry_delays_s=(0.05,), max_deliver=3
    )
    consumer = DurableConsumer(
        js,
        pool,
        SCHEMA,
        stream=stream.name,
        durable="projector",
        subjects=[f"{stream.root}.>"],
        handler=picky,
        options=options,
    )
    await consumer.start()
    try:
        await wait_for(holds(lambda: consumer.terminated_total == 1), what="termination")
        await wait_for(_lag_is_zero(consumer), what="nothing left to deliver")
    finally:
        await consumer.stop()

    assert attempts.count(poison) == 3
    assert attempts.count(good) == 1
    assert [row[0] for row in await applied_rows(pool)] == [good]


async def test_events_on_one_subject_are_handled_in_publish_order(
    js: JetStreamContext, stream: EventStream, pool: Pool, applied_table: str
) -> None:
    await publish_events(js, stream.subject("slot", "freed"), 60)
    seen: list[int | None] = []

    async def in_order(event: ReceivedEvent, conn: Connection) -> None:
        seen.append(event.aggregate_seq)

    consumer = DurableConsumer(
        js,
        pool,
        SCHEMA,
        stream=stream.name,
        durable="projector",
        subjects=[f"{stream.root}.>"],
        handler=in_order,
        options=ConsumerOptions(ack_wait_s=5, fetch_timeout_s=0.2, batch_size=16),
    )
    await consumer.start()
    try:
        await wait_for(holds(lambda: len(seen) == 60), what="60 events")
    finally:
        await consumer.stop()

    assert seen == list(range(1, 61))


async def test_stream_consumer_needs_no_database_and_starts_at_the_given_sequence(
    js: JetStreamContext, stream: EventStream
) -> None:
    await publish_events(js, stream.subject("slot", "freed"), 5)
    seen: list[int] = []

    async def index(event: ReceivedEvent) -> None:
        seen.append(event.stream_seq)

    consumer = StreamConsumer(
        js,
        stream=stream.name,
        durable="index-replica-1",
        subjects=[f"{stream.root}.>"],
        handler=index,
        options=ConsumerOptions(fetch_timeout_s=0.2, start_sequence=3),
    )
    await consumer.start()
    try:
        await wait_for(holds(lambda: len(seen) == 3), what="events 3..5")
        await wait_for(_lag_is_zero(consumer), what="acks")
    finally:
        await consumer.stop()

    assert seen == [3, 4, 5]


async def test_message_without_event_id_is_terminated_without_running_the_handler(
    js: JetStreamContext, stream: EventStream
) -> None:
    await js.publish(stream.subject("slot", "freed"), b"stray")
    calls: list[ReceivedEvent] = []

    async def never(event: ReceivedEvent) -> None:
        calls.append(event)

    consumer = StreamConsumer(
        js,
        stream=stream.name,
        durable="strict",
        subjects=[f"{stream.root}.>"],
        handler=never,
        options=QUICK,
    )
    await consumer.start()
    try:
        await wait_for(holds(lambda: consumer.terminated_total == 1), what="termination")
        await wait_for(_lag_is_zero(consumer), what="nothing left to deliver")
    finally:
        await consumer.stop()

    assert calls == []


async def test_stop_finishes_the_event_in_hand_and_returns_the_rest_at_once(
    js: JetStreamContext, stream: EventStream
) -> None:
    await publish_events(js, stream.subject("slot", "freed"), 5)
    first_started = asyncio.Event()
    release_first = asyncio.Event()
    seen_by_first: list[int] = []
    seen_by_second: list[int] = []

    async def slow(event: ReceivedEvent) -> None:
        first_started.set()
        await release_first.wait()
        seen_by_first.append(event.stream_seq)

    async def quick(event: ReceivedEvent) -> None:
        seen_by_second.append(event.stream_seq)

    # A long ack wait: the remaining events can only come back quickly if they were nak'd.
    options = ConsumerOptions(ack_wait_s=30, fetch_timeout_s=0.2, batch_size=5)
    first = StreamConsumer(
        js,
        stream=stream.name,
        durable="worker",
        subjects=[f"{stream.root}.>"],
        handler=slow,
        options=options,
    )
    await first.start()
    await asyncio.wait_for(first_started.wait(), timeout=5)
    stopping = asyncio.create_task(first.stop())
    await wait_for(holds(lambda: first.stop_requested), what="stop requested")
    release_first.set()
    await asyncio.wait_for(stopping, timeout=5)

    second = StreamConsumer(
        js,
        stream=stream.name,
        durable="worker",
        subjects=[f"{stream.root}.>"],
        handler=quick,
        options=options,
    )
    await second.start()
    try:
        await wait_for(holds(lambda: len(seen_by_second) == 4), timeout_s=5, what="the rest")
    finally:
        await second.stop()

    assert seen_by_first == [1]
    assert seen_by_second == [2, 3, 4, 5]


def _lag_is_zero(consumer: DurableConsumer | StreamConsumer) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        lag = await consumer.lag()
        return (lag.pending, lag.ack_pending) == (0, 0)

    return check


async def test_each_event_is_handed_over_as_it_arrives_not_when_a_pull_request_ends(
    js: JetStreamContext, stream: EventStream
) -> None:
    # Pull requests expiring every 200 ms, events one at a time at random moments: many land
    # just as a request ends and the next begins. Through nats-py's `fetch`, some of those
    # waited in the client until an earlier request expired (up to the full 200 ms; 1 s with
    # the default options). Handing an event over takes a few milliseconds here.
    handled = asyncio.Event()

    async def index(event: ReceivedEvent) -> None:
        handled.set()

    consumer = StreamConsumer(
        js,
        stream=stream.name,
        durable="index-fresh",
        subjects=[f"{stream.root}.>"],
        handler=index,
        options=ConsumerOptions(fetch_timeout_s=0.2, batch_size=64),
    )
    rng = random.Random(20261124)
    waits = []
    await consumer.start()
    try:
        for n in range(80):
            await asyncio.sleep(rng.uniform(0, 0.25))
            handled.clear()
            published = time.monotonic()
            await publish_events(js, stream.subject("slot", "freed"), 1, aggregate_id=f"a{n}")
            await asyncio.wait_for(handled.wait(), timeout=10)
            waits.append(time.monotonic() - published)
    finally:
        await consumer.stop()

    assert max(waits) < 0.1, sorted(round(w * 1000, 1) for w in waits)[-5:]


async def test_a_consumer_deleted_under_it_keeps_its_loop_and_resumes_once_recreated(
    js: JetStreamContext, stream: EventStream, caplog: pytest.LogCaptureFixture
) -> None:
    # The server ends the open pull request with a 409 when its consumer is deleted; the loop
    # must back off and keep asking.
    seen: list[int] = []

    async def index(event: ReceivedEvent) -> None:
        seen.append(event.stream_seq)

    options = ConsumerOptions(fetch_timeout_s=0.5)
    consumer = StreamConsumer(
        js,
        stream=stream.name,
        durable="index-lost",
        subjects=[f"{stream.root}.>"],
        handler=index,
        options=options,
    )
    await consumer.start()
    try:
        await publish_events(js, stream.subject("slot", "freed"), 1)
        await wait_for(holds(lambda: seen == [1]), what="the first event")
        await js.delete_consumer(stream.name, "index-lost")
        await wait_for(
            holds(lambda: any(r.getMessage() == "consumer fetch failed" for r in caplog.records)),
            what="the refused pull request to be logged",
        )
        assert consumer.running

        await ensure_consumer(js, stream.name, "index-lost", [f"{stream.root}.>"], options)
        await publish_events(js, stream.subject("slot", "freed"), 1, aggregate_id="agg-2")
        await wait_for(holds(lambda: len(seen) == 3), what="delivery after the consumer is back")
    finally:
        await consumer.stop()

    # The new consumer delivers the stream from its start: the first event again, then the second.
    assert seen == [1, 1, 2]
