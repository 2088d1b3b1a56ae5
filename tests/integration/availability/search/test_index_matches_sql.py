"""The in-memory index answers like the PostgreSQL reference query, and stays so under events.

Random searches come from hypothesis (every filter on or off, radius in either unit, local
time windows, visit types with runs and rooms, both sort orders) and are paged to the end on
both backends, each continuing from its own page keys. The seeded week crosses the US
daylight-saving change, has every granule status, versions above 1 and room reservations.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext

from availability_svc.projection import Projection
from common.db import Pool
from tests.integration.availability.search.world import (
    FIXED_NOW,
    GRANULE,
    EventStream,
    World,
    caught_up,
    check_random_searches,
    domain_of,
    make_projection,
)


async def test_index_built_from_the_snapshot_answers_like_sql(
    pool: Pool, js: JetStreamContext, stream: EventStream, world: World
) -> None:
    projection = make_projection(pool, js, stream)
    report = await projection.build()
    assert report.granule_rows > 1000
    assert report.busy_granules > 0
    offers = await check_random_searches(projection, pool, await domain_of(pool, world), 1000)
    assert offers > 1000  # the searches found plenty, not just agreed on nothing


async def test_index_answers_like_sql_after_a_stream_of_booking_events(
    projection: Projection, pool: Pool, world: World
) -> None:
    rng = random.Random(7)
    changes = 0
    for _ in range(40):
        changes += await random_change(world, rng)
    # At-least-once delivery and a second producer: replay a third of the events (some
    # superseded since), in shuffled order.
    replays = rng.sample(world.published, len(world.published) // 3)
    for kind, provider, payload in replays:
        await world.send(kind, provider, payload)
    await caught_up(projection, world)
    assert changes >= 25
    assert projection.events_applied == len(world.published)
    assert projection.events_stale == len(replays)
    await check_random_searches(projection, pool, await domain_of(pool, world), 500)


async def random_change(world: World, rng: random.Random) -> int:
    """One booking-like change (with its event); 1 if it happened, 0 if its rows moved."""
    action = rng.choice(("book", "book", "cancel", "hold", "release", "block", "reopen", "add"))
    if action == "cancel" and world.appointments:
        return int(await world.cancel(rng.choice(sorted(world.appointments))))
    if action == "release" and world.holds:
        return int(await world.release(rng.choice(sorted(world.holds))))
    if action == "reopen":
        rows = await world.rows("BLOCKED", 1)
        return int(bool(rows) and await world.reopen(rows[0][0], [rows[0][1]]))
    if action == "add":
        provider = rng.choice(world.providers)
        location = world.provider_locations[provider][0]
        day = FIXED_NOW.replace(hour=0, minute=0) + timedelta(days=rng.randint(1, 5))
        starts = [day + timedelta(hours=22) + GRANULE * k for k in range(4)]
        return int(await world.add_granules(provider, location, starts))
    rows = await world.rows("OPEN", 1)
    if not rows:
        return 0
    provider, start, location = rows[0]
    granules = rng.randint(1, 3)
    starts = [start + GRANULE * k for k in range(granules)]
    if action == "hold":
        expire = datetime.now(UTC) + timedelta(hours=1)
        return int(await world.hold(provider, starts, expire) is not None)
    if action == "block":
        return int(await world.block(provider, starts))
    rooms = [r for r, _ in world.resources[location]][: rng.randint(0, 1)]
    return int(await world.book(provider, start, granules, rooms) is not None)
