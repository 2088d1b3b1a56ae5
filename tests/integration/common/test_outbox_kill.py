"""The relay killed mid-publish and restarted: every event arrives exactly once, in order."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

from nats.js import JetStreamContext

from common.bus import ConsumerOptions, DurableConsumer, ReceivedEvent
from common.db import Connection, Pool
from common.outbox import add_event, outbox_lag
from tests.integration.common.conftest import SCHEMA, EventStream, stream_count, wait_for

REPO_ROOT = Path(__file__).resolve().parents[3]
EVENTS = 2_000
AGGREGATES = 50


async def start_relay(database_url: str, nats_url: str) -> asyncio.subprocess.Process:
    """A relay in a process of its own, small batches so that a kill lands mid-publish."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "common.outbox",
        "relay",
        "--schema",
        SCHEMA,
        "--database-url",
        database_url,
        "--nats-url",
        nats_url,
        "--batch-size",
        "100",
        "--max-in-flight",
        "16",
        "--poll-interval",
        "0.2",
        "--standby-retry",
        "0.1",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def write_events(pool: Pool, stream: EventStream) -> dict[str, int]:
    """EVENTS events over AGGREGATES aggregates, 20 per transaction; returns count per aggregate."""
    rng = random.Random(20260302)
    written: dict[str, int] = defaultdict(int)
    for _ in range(EVENTS // 20):
        async with pool.connection() as conn:
            # Sorted within a transaction: the consistent lock order add_event asks for.
            for aggregate_id in sorted(f"slot-{rng.randrange(AGGREGATES)}" for _ in range(20)):
                written[aggregate_id] += 1
                await add_event(
                    conn,
                    SCHEMA,
                    subject=stream.subject("slot", "freed"),
                    event_type="SlotFreed",
                    aggregate_type="slot",
                    aggregate_id=aggregate_id,
                    payload=f"{aggregate_id}:{written[aggregate_id]}".encode(),
                )
    return dict(written)


async def settled_stream_count(js: JetStreamContext, stream: EventStream) -> int:
    """The stream's message count once publishes already on the wire have landed."""
    deadline = time.monotonic() + 5
    previous, unchanged_polls = -1, 0
    while unchanged_polls < 3:
        if time.monotonic() > deadline:
            raise AssertionError("stream kept growing after the relay was killed")
        current = await stream_count(js, stream.name)
        unchanged_polls = unchanged_polls + 1 if current == previous else 0
        previous = current
        await asyncio.sleep(0.05)
    return previous


async def pending_rows(pool: Pool) -> int:
    async with pool.connection() as conn:
        return (await outbox_lag(conn, SCHEMA)).pending


async def test_relay_killed_mid_publish_and_restarted_delivers_every_event_once_in_order(
    database_url: str, nats_url: str, pool: Pool, js: JetStreamContext, stream: EventStream
) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            "CREATE TABLE svc.received (arrival bigserial PRIMARY KEY, event_id uuid NOT NULL,"
            " aggregate_id text NOT NULL, aggregate_seq int NOT NULL, payload bytea NOT NULL)"
        )

    async def receive(event: ReceivedEvent, conn: Connection) -> None:
        await conn.execute(
            "INSERT INTO svc.received (event_id, aggregate_id, aggregate_seq, payload)"
            " VALUES (%s, %s, %s, %s)",
            (event.event_id, event.aggregate_id, event.aggregate_seq, event.payload),
        )

    written = await write_events(pool, stream)
    consumer = DurableConsumer(
        js,
        pool,
        SCHEMA,
        stream=stream.name,
        durable="receiver",
        subjects=[f"{stream.root}.>"],
        handler=receive,
        options=ConsumerOptions(ack_wait_s=5, fetch_timeout_s=0.2, batch_size=128),
    )
    await consumer.start()
    first = await start_relay(database_url, nats_url)
    second: asyncio.subprocess.Process | None = None
    try:
        await wait_for(
            at_least(lambda: stream_count(js, stream.name), 400), timeout_s=20, what="publishing"
        )
        first.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(first.wait(), timeout=5) == -signal.SIGKILL
        # The dead relay's last statement may still be running in its server session.
        await wait_for(no_relay_sessions(pool), what="the killed relay's sessions to end")
        in_stream = await settled_stream_count(js, stream)
        pending = await pending_rows(pool)
        # Rows the stream has but the dead relay had not yet marked: published again below.
        republished = in_stream + pending - EVENTS

        second = await start_relay(database_url, nats_url)
        await wait_for(
            at_least(lambda: received_count(pool), EVENTS), timeout_s=30, what="delivery"
        )
        second.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(second.communicate(), timeout=10)
        assert second.returncode == 0, stderr.decode()
        stats = json.loads(stdout.decode().strip().splitlines()[-1])
    finally:
        await consumer.stop()
        for process in (first, second):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()

    assert 400 <= in_stream < EVENTS, "the kill did not land mid-publish"
    assert republished >= 0
    assert stats["published"] == pending
    assert stats["duplicates"] == republished
    assert await stream_count(js, stream.name) == EVENTS
    assert await pending_rows(pool) == 0

    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT event_id, aggregate_id, aggregate_seq, payload FROM svc.received"
            " ORDER BY arrival"
        )
        received = await cursor.fetchall()
        cursor = await conn.execute("SELECT event_id FROM svc.outbox")
        outbox_ids = {row[0] for row in await cursor.fetchall()}
    assert len(received) == EVENTS
    assert {row[0] for row in received} == outbox_ids
    by_aggregate: dict[str, list[int]] = defaultdict(list)
    for _, aggregate_id, seq, payload in received:
        by_aggregate[aggregate_id].append(seq)
        assert bytes(payload) == f"{aggregate_id}:{seq}".encode()
    assert by_aggregate == {a: list(range(1, n + 1)) for a, n in written.items()}


def no_relay_sessions(pool: Pool) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name LIKE %s",
                ("medsched-outbox-relay-%",),
            )
            return await cursor.fetchone() == (0,)

    return check


async def received_count(pool: Pool) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT count(*) FROM svc.received")
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


def at_least(read: Callable[[], Awaitable[int]], minimum: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await read() >= minimum

    return check
