"""Bulk-written slot events go through the real outbox relay to JetStream like add_event's."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import date, timedelta

import nats.js.api
from nats.js import JetStreamContext

from availability_svc.materializer import materialize_providers
from common import bus
from common.db import Pool
from common.outbox import OutboxRelay, RelayOptions
from medsched.events.v1 import envelope_pb2

from .conftest import NOW, add_template, create_clinic

MONDAY = date(2026, 3, 2)


@contextlib.asynccontextmanager
async def relay_running(url: str, js: JetStreamContext) -> AsyncIterator[None]:
    relay = OutboxRelay(url, "availability", js, options=RelayOptions(poll_interval_s=0.05))
    task = asyncio.create_task(relay.run())
    try:
        yield
    finally:
        await relay.stop()
        await asyncio.wait_for(task, timeout=10)


async def test_materialized_events_reach_the_stream_in_order_with_their_ids(
    pool: Pool, availability_db: str, nats_url: str
) -> None:
    async with pool.connection() as conn:
        clinic = await create_clinic(conn)
        await add_template(
            conn, clinic, clinic.midtown, [(1, "08:00", "12:00"), (2, "08:00", "09:00")]
        )
        await materialize_providers(
            conn, clinic.org, [clinic.provider.id], MONDAY, MONDAY + timedelta(days=1), now=NOW
        )
        cursor = await conn.execute(
            "SELECT event_id::text, aggregate_seq FROM availability.outbox ORDER BY id"
        )
        written = await cursor.fetchall()

    client, js = await bus.connect(nats_url, name="test-availability-events")
    try:
        await bus.ensure_stream(js)
        subscription = await js.subscribe(
            "medsched.slots.materialized",
            deliver_policy=nats.js.api.DeliverPolicy.NEW,
            ordered_consumer=True,
        )
        received: list[tuple[str, int, envelope_pb2.EventEnvelope]] = []
        async with relay_running(availability_db, js):
            deadline = time.monotonic() + 10
            while len(received) < len(written):
                assert time.monotonic() < deadline, f"got {len(received)} of {len(written)}"
                try:
                    msg = await subscription.next_msg(timeout=0.5)
                except TimeoutError:
                    continue
                headers = msg.headers or {}
                if headers.get(bus.HEADER_AGGREGATE_ID) != clinic.provider.id:
                    continue  # another test's provider
                envelope = envelope_pb2.EventEnvelope.FromString(msg.data)
                received.append(
                    (headers[bus.HEADER_MSG_ID], int(headers[bus.HEADER_AGGREGATE_SEQ]), envelope)
                )
        await subscription.unsubscribe()
    finally:
        await client.close()

    assert [(r[0], r[1]) for r in received] == written
    assert [r[2].aggregate_sequence for r in received] == [1, 2]
    assert [r[2].event_id for r in received] == [w[0] for w in written]
    assert [
        (r[2].slots_materialized.local_date, len(r[2].slots_materialized.granules))
        for r in received
    ] == [("2026-03-02", 16), ("2026-03-03", 4)]
    assert {r[2].organization_id for r in received} == {clinic.org.id}
