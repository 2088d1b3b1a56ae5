"""The projection's life: snapshot position, restarts without gaps, holds that lapse, rooms."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

from nats.js import JetStreamContext

from availability_svc.domain import PatientKind
from availability_svc.index import SortOrder
from availability_svc.projection import IndexBackend, Projection
from availability_svc.reference_sql import ReferenceSqlBackend
from availability_svc.search_service import AvailabilityQuery, OfferPage
from availability_svc.verify import same_offers
from common.db import Pool
from tests.integration.availability.search.world import (
    FIXED_NOW,
    GRANULE,
    EventStream,
    World,
    caught_up,
    make_projection,
    wait_for,
)

NOW_S = int(FIXED_NOW.timestamp())


def provider_query(world: World, provider: str, day: date, **extra: object) -> AvailabilityQuery:
    """Every offer of one provider around a UTC date: the local dates either side of it,
    since each location searches in its own zone (a page big enough for all)."""
    fields: dict[str, object] = {
        "organization_id": world.organization_id,
        "date_from": day - timedelta(days=1),
        "date_to": day + timedelta(days=1),
        "not_before_utc": NOW_S,
        "provider_ids": frozenset({provider}),
        "limit": 500,
    }
    fields.update(extra)
    return AvailabilityQuery(**fields)  # type: ignore[arg-type]


def starts(page: OfferPage) -> set[int]:
    return {offer.start_utc for offer in page.offers}


async def assert_agrees(projection: Projection, pool: Pool, query: AvailabilityQuery) -> OfferPage:
    index_page = await IndexBackend(projection).search(query)
    reference_page = await ReferenceSqlBackend(pool).search(query)
    assert same_offers(index_page, reference_page), (index_page, reference_page)
    return index_page


async def open_granule(world: World, days_ahead: int = 1) -> tuple[str, datetime, str]:
    """An OPEN granule of an active provider at an active location, `days_ahead` days out,
    whose next granule is OPEN too."""
    for provider, start, location in await world.rows("OPEN", 500):
        if start.date() != (FIXED_NOW + timedelta(days=days_ahead)).date():
            continue
        async with world.pool.connection() as conn:
            row = await (
                await conn.execute(
                    "SELECT p.active AND l.active AND EXISTS (SELECT 1 FROM availability.slots s"
                    " WHERE s.provider_id = p.id AND s.start_time = %s AND s.status = 'OPEN'"
                    " AND s.location_id = l.id)"
                    " FROM availability.providers p, availability.locations l"
                    " WHERE p.id = %s AND l.id = %s",
                    (start + GRANULE, provider, location),
                )
            ).fetchone()
        if row is not None and row[0]:
            return provider, start, location
    raise AssertionError("the seeded world has no such granule")


async def test_booked_and_held_time_is_never_offered(
    projection: Projection, pool: Pool, world: World
) -> None:
    provider, start, _ = await open_granule(world)
    query = provider_query(world, provider, start.date())
    before = await assert_agrees(projection, pool, query)
    assert int(start.timestamp()) in starts(before)

    await world.book(provider, start, 1)
    await world.hold(provider, [start + GRANULE], datetime.now(UTC) + timedelta(hours=1))
    await caught_up(projection, world)

    after = await assert_agrees(projection, pool, query)
    assert int(start.timestamp()) not in starts(after)
    assert int((start + GRANULE).timestamp()) not in starts(after)
    assert starts(after) == starts(before) - {
        int(start.timestamp()),
        int((start + GRANULE).timestamp()),
    }


async def test_events_already_in_the_snapshot_change_nothing_when_replayed(
    pool: Pool, js: JetStreamContext, stream: EventStream, world: World
) -> None:
    # Changes whose events are in the stream before the snapshot's position is read...
    provider, start, _ = await open_granule(world)
    appointment = await world.book(provider, start, 2)
    assert appointment is not None
    assert await world.cancel(appointment)
    await world.block(provider, [start])
    projection = make_projection(pool, js, stream)
    report = await projection.build()
    assert report.position == world.last_sequence
    # ...and the same events published again after it (another producer's late relay): the
    # snapshot's versions are newer, so none of them may reopen or close anything.
    for kind, provider_id, payload in list(world.published):
        await world.send(kind, provider_id, payload)
    await projection.start()
    try:
        await caught_up(projection, world)
        assert projection.events_applied == 0
        assert projection.events_stale == len(world.published)
        page = await assert_agrees(projection, pool, provider_query(world, provider, start.date()))
        assert int(start.timestamp()) not in starts(page)  # still blocked
        assert int((start + GRANULE).timestamp()) in starts(page)  # freed by the cancel
    finally:
        await projection.stop()


async def test_consumer_restart_resumes_after_its_position_without_gaps(
    projection: Projection, pool: Pool, world: World
) -> None:
    provider, start, _ = await open_granule(world)
    await world.block(provider, [start])
    await caught_up(projection, world)
    position = projection.position

    await projection._stop_consumer()
    # Published while nobody consumes: each must be applied exactly once after the restart.
    await world.reopen(provider, [start])
    second_provider, second_start, _ = await open_granule(world, days_ahead=2)
    await world.book(second_provider, second_start, 1)
    assert world.last_sequence == position + 2
    applied = projection.events_applied

    await projection.restart_consumer()
    await caught_up(projection, world)
    assert projection.events_applied == applied + 2
    assert projection.events_stale == 0
    first = await assert_agrees(projection, pool, provider_query(world, provider, start.date()))
    assert int(start.timestamp()) in starts(first)
    second = await assert_agrees(
        projection, pool, provider_query(world, second_provider, second_start.date())
    )
    assert int(second_start.timestamp()) not in starts(second)


async def test_a_new_process_resumes_from_its_own_snapshot(
    projection: Projection, pool: Pool, js: JetStreamContext, stream: EventStream, world: World
) -> None:
    provider, start, _ = await open_granule(world)
    await world.block(provider, [start])
    await caught_up(projection, world)

    restarted = make_projection(pool, js, stream)
    report = await restarted.build()
    assert report.position == world.last_sequence
    await restarted.start()
    try:
        await world.reopen(provider, [start])
        await caught_up(restarted, world)
        await caught_up(projection, world)
        for follower in (projection, restarted):
            page = await assert_agrees(
                follower, pool, provider_query(world, provider, start.date())
            )
            assert int(start.timestamp()) in starts(page)
        assert restarted.events_applied == 1
    finally:
        await restarted.stop()


async def test_a_hold_that_lapses_is_offered_again(
    projection: Projection, pool: Pool, world: World
) -> None:
    provider, start, _ = await open_granule(world)
    query = provider_query(world, provider, start.date())
    expires = datetime.now(UTC) + timedelta(seconds=1)
    assert await world.hold(provider, [start], expires) is not None
    await caught_up(projection, world)
    assert int(start.timestamp()) not in starts(await IndexBackend(projection).search(query))

    # The event contract: after `expire_time` the granule counts as open even if no release
    # arrives (the database keeps HELD until booking releases it).
    await wait_for(
        lambda: int(start.timestamp()) in starts(IndexBackend(projection).search_now(query)),
        timeout_s=5,
        what="the lapsed hold to be offered again",
    )


async def test_a_hold_released_and_booked_before_it_lapses_stays_closed(
    projection: Projection, world: World
) -> None:
    provider, start, _ = await open_granule(world)
    hold = await world.hold(provider, [start], datetime.now(UTC) + timedelta(seconds=0.5))
    assert hold is not None
    assert await world.release(hold)
    assert await world.book(provider, start, 1) is not None
    await caught_up(projection, world)
    await wait_for(
        lambda: (
            projection.expire_holds(datetime.now(UTC).timestamp() + 1) == 0
            and not projection._holds
        ),
        what="the hold to lapse",
    )
    page = IndexBackend(projection).search_now(provider_query(world, provider, start.date()))
    assert int(start.timestamp()) not in starts(page)


async def test_a_room_freed_by_one_visit_and_taken_by_another_stays_busy_in_either_order(
    pool: Pool, js: JetStreamContext, stream: EventStream, world: World
) -> None:
    """Booking B of a room and the cancellation of visit A that held it come from different
    providers, so their events may arrive in either order; the room must end up busy."""
    location = world.locations[0]
    room = str(uuid.uuid4())
    ultrasound_visit = world.visit_types[1]  # 2 granules, one ultrasound, new patients
    day = (FIXED_NOW + timedelta(days=2)).date()
    visit_start = datetime(day.year, day.month, day.day, 16, 0, tzinfo=UTC)
    doctors = [str(uuid.uuid4()) for _ in range(3)]
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "UPDATE availability.resources SET active = false WHERE location_id = %s", (location,)
        )
        await conn.execute(
            "INSERT INTO availability.resources (id, organization_id, location_id, display_name,"
            " category, kind) VALUES (%s, %s, %s, 'US 1', 'EQUIPMENT', 'ultrasound')",
            (room, world.organization_id, location),
        )
        for n, doctor in enumerate(doctors):
            await conn.execute(
                "INSERT INTO availability.providers (id, organization_id, display_name,"
                " specialties) VALUES (%s, %s, %s, ARRAY['cardiology'])",
                (doctor, world.organization_id, f"Dr. Room {n}"),
            )
            await conn.execute(
                "INSERT INTO availability.provider_locations (organization_id, provider_id,"
                " location_id) VALUES (%s, %s, %s)",
                (world.organization_id, doctor, location),
            )
            template = uuid.uuid4()
            await conn.execute(
                "INSERT INTO availability.schedule_templates (id, organization_id, provider_id,"
                " location_id, effective_start_date) VALUES (%s, %s, %s, %s, '2026-01-01')",
                (template, world.organization_id, doctor, location),
            )
            await conn.execute(
                "INSERT INTO availability.template_visit_types (organization_id, template_id,"
                " visit_type_id) VALUES (%s, %s, %s)",
                (world.organization_id, template, ultrasound_visit),
            )
            await conn.execute(
                "INSERT INTO availability.slots (provider_id, start_time, end_time, location_id,"
                " organization_id, status) SELECT %s, s, s + %s, %s, %s, 'OPEN'"
                " FROM generate_series(%s::timestamptz, %s, %s) AS s",
                (
                    doctor,
                    GRANULE,
                    location,
                    world.organization_id,
                    visit_start,
                    visit_start + GRANULE,
                    GRANULE,
                ),
            )
    projection = make_projection(pool, js, stream)
    await projection.build()
    await projection.start()
    try:
        query = AvailabilityQuery(
            organization_id=world.organization_id,
            date_from=day,
            date_to=day,
            not_before_utc=NOW_S,
            provider_ids=frozenset({doctors[2]}),
            visit_type_id=ultrasound_visit,
            patient_kind=PatientKind.ANY,
            sort=SortOrder.SOONEST,
        )
        free = await assert_agrees(projection, pool, query)
        assert [o.start_utc for o in free.offers] == [int(visit_start.timestamp())]
        first = await world.book(doctors[0], visit_start, 2, [room])
        assert first is not None
        await caught_up(projection, world)
        assert (await assert_agrees(projection, pool, query)).offers == ()  # room taken

        world.hold_back = True
        assert await world.cancel(first)  # held back: [0] freed A
        assert await world.book(doctors[1], visit_start, 2, [room]) is not None  # [1] booked B
        await world.flush([1, 0])
        await caught_up(projection, world)
        assert projection.events_applied == 3
        assert (await assert_agrees(projection, pool, query)).offers == ()  # still taken
    finally:
        await projection.stop()


async def test_a_consumer_lost_by_the_server_is_recreated_after_the_position(
    projection: Projection, js: JetStreamContext, stream: EventStream, world: World
) -> None:
    provider, start, _ = await open_granule(world)
    await js.delete_consumer(stream.name, projection.consumer_name)
    await world.block(provider, [start])

    await projection._check_consumer()
    await caught_up(projection, world)
    assert projection.events_applied == 1
    page = IndexBackend(projection).search_now(provider_query(world, provider, start.date()))
    assert int(start.timestamp()) not in starts(page)


async def test_reference_changes_reach_search_on_reload_and_nothing_is_reread_otherwise(
    projection: Projection, pool: Pool, world: World
) -> None:
    provider, start, _ = await open_granule(world)
    query = provider_query(world, provider, start.date(), specialty="radiology")
    assert await projection.reload_reference() is False  # nothing changed since the build
    assert (await assert_agrees(projection, pool, query)).offers == ()

    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE availability.providers SET specialties = ARRAY['radiology'] WHERE id = %s",
            (provider,),
        )
    assert await projection.reload_reference() is True
    offered = await assert_agrees(projection, pool, query)
    assert int(start.timestamp()) in starts(offered)

    # Deactivated, the provider disappears; reactivated, their granules are all still there.
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE availability.providers SET active = false WHERE id = %s", (provider,)
        )
    assert await projection.reload_reference() is True
    assert (await assert_agrees(projection, pool, query)).offers == ()
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE availability.providers SET active = true WHERE id = %s", (provider,)
        )
    assert await projection.reload_reference() is True
    assert await assert_agrees(projection, pool, query) == offered


async def test_an_empty_date_range_finds_nothing_on_every_backend(
    projection: Projection, pool: Pool, world: World
) -> None:
    day = FIXED_NOW.date() + timedelta(days=2)
    query = AvailabilityQuery(
        organization_id=world.organization_id,
        date_from=day,
        date_to=day - timedelta(days=1),
        not_before_utc=NOW_S,
    )
    page = await assert_agrees(projection, pool, query)
    assert page == OfferPage((), False)
