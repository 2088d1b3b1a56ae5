"""The index follows the real materializer's events through the outbox relay.

A projection is running before the organisation exists; `medsched seed` then creates it and
materializes its horizon in committed batches while the relay publishes the events. The
projection meets the new organisation mid-stream (snapshots it) and applies the rest.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext

from availability_svc.admin_model import ExceptionKind, ExceptionRecord
from availability_svc.admin_service import ScheduleAdmin
from availability_svc.projection import Projection, load_reference
from availability_svc.seed import seed_organization
from availability_svc.verify import QueryDomain
from common import bus
from common.auth import Principal, Role
from common.db import Pool
from common.outbox import OutboxRelay, RelayOptions
from tests.integration.availability.search.world import check_random_searches, wait_for

ADMIN = Principal(subject="test-admin", role=Role.ADMIN)


async def caught_up_with_relay(
    relay: OutboxRelay, js: JetStreamContext, projection: Projection
) -> None:
    """Wait until the outbox is published and the projection has handled all of it."""

    async def published() -> bool:
        return (await relay.lag()).pending == 0

    await wait_for(published, timeout_s=30, what="the relay to publish the outbox")
    last = (await js.stream_info(bus.STREAM_NAME)).state.last_seq
    await wait_for(
        lambda: projection.position >= last, timeout_s=30, what="the projection to catch up"
    )


async def test_index_follows_the_materializer_through_the_relay_and_answers_like_sql(
    pool: Pool, database_url: str, js: JetStreamContext
) -> None:
    await bus.ensure_stream(js)
    projection = Projection(pool, js)
    await projection.build()
    await projection.start()
    relay = OutboxRelay(
        database_url, "availability", js, options=RelayOptions(poll_interval_s=0.05)
    )
    relaying = asyncio.create_task(relay.run())
    try:
        summary = await seed_organization(pool, providers=8, seed=11)
        assert summary.materialized.opened > 1000

        await caught_up_with_relay(relay, js, projection)
        assert projection.org(summary.organization_id) is not None

        # A week of PTO for one provider, then taken back: the materializer blocks and
        # reopens granules, and the projection applies those events as news.
        async with pool.connection() as conn:
            data = await load_reference(conn)
        provider = sorted(
            key
            for key, row in data.providers.items()
            if row.info.organization_id == summary.organization_id and row.active
        )[0]
        today = datetime.now(UTC).date()
        admin = ScheduleAdmin(pool)
        exception, _ = await admin.create_exception(
            ADMIN,
            summary.organization_id,
            ExceptionRecord(
                id="",
                organization_id=summary.organization_id,
                provider_id=provider,
                location_id=None,
                kind=ExceptionKind.PTO,
                start_date=today + timedelta(days=2),
                end_date=today + timedelta(days=8),
                start_minute=None,
                end_minute=None,
                description="",
            ),
        )
        await caught_up_with_relay(relay, js, projection)
        blocked = projection.events_applied
        assert blocked > 0
        await admin.delete_exception(ADMIN, summary.organization_id, exception.id)
        await caught_up_with_relay(relay, js, projection)
        assert projection.events_applied > blocked

        now = datetime.now(UTC)
        domain = QueryDomain.of(data, summary.organization_id, now)
        offers = await check_random_searches(
            projection, pool, domain, 300, now_s=int(now.timestamp())
        )
        assert offers > 300
    finally:
        await relay.stop()
        await asyncio.wait_for(relaying, timeout=10)
        await projection.stop()
