"""The index answers every search exactly like the brute-force reference, page by page.

Random small organisations (several time zones, DST weeks, shared resources, keys that sort
differently from dense ids), random streams of booking events with redeliveries, and random
queries paged to the end, with events landing between pages.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from availability_svc.domain import PatientKind
from availability_svc.geo import DistanceUnit
from availability_svc.index import (
    AvailabilityIndex,
    GeoPoint,
    LocationEntry,
    ProviderEntry,
    ResourceChange,
    ResourceEntry,
    SearchHit,
    SearchQuery,
    SlotChange,
    SortOrder,
    VisitTypeEntry,
)
from tests.unit.availability.reference import ReferenceAvailability, SortKey

GRANULE_S = 15 * 60
PER_DAY = 96
# Weeks with clock changes: US spring forward (03-08), Europe (03-29), Lord Howe's
# half-hour change (04-05), US fall back (11-01), and an ordinary week.
BASE_DAYS = (
    date(2026, 3, 6),
    date(2026, 3, 27),
    date(2026, 4, 3),
    date(2026, 10, 30),
    date(2026, 6, 1),
)
ZONES = (
    "America/New_York",
    "America/Los_Angeles",
    "Europe/London",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
)
SPECIALTIES = ("cardiology", "dermatology", "pediatrics")
LANGUAGES = ("en", "es", "vi")
PLANS = ("plan-a", "plan-b", "plan-c", "plan-d")
KINDS = ("exam_room", "ultrasound")
HORIZON_DAYS = 4


@dataclass
class World:
    """The same organisation loaded into the index and the reference."""

    index: AvailabilityIndex
    reference: ReferenceAvailability
    base_s: int
    rng: random.Random
    pairs: list[tuple[int, int]] = field(default_factory=list)
    resources: list[ResourceEntry] = field(default_factory=list)
    removed_locations: dict[int, LocationEntry] = field(default_factory=dict)
    sequence: int = 0

    def apply(self, changes: list[SlotChange | ResourceChange]) -> None:
        self.sequence += 1
        assert self.index.apply(self.sequence, changes)
        assert self.reference.apply(self.sequence, changes)

    def redeliver(self, changes: list[SlotChange | ResourceChange]) -> None:
        """An old event delivered again must change nothing."""
        sequence = self.rng.randint(1, self.sequence)
        assert not self.index.apply(sequence, changes)
        assert not self.reference.apply(sequence, changes)


def _epoch(day: date) -> int:
    return int(datetime.combine(day, time(), tzinfo=UTC).timestamp())


def build_world(seed: int, n_providers: int, n_locations: int, bulk: bool) -> World:
    rng = random.Random(seed)
    base_day = rng.choice(BASE_DAYS)
    base_s = _epoch(base_day)
    index = AvailabilityIndex(base_s, horizon_days=HORIZON_DAYS)
    reference = ReferenceAvailability(GRANULE_S)
    world = World(index, reference, base_s, rng)

    for location_id in range(n_locations):
        # Several locations may share coordinates: distance ties must order the same way.
        spot = rng.randrange(3)
        entry = LocationEntry(
            id=location_id,
            key=f"loc-{rng.randrange(100):02d}-{location_id}",
            organization_id=1,
            latitude=40.0 + spot * 0.05 + rng.choice((0.0, 0.01)),
            longitude=-75.0 + rng.choice((0.0, 0.04)),
            timezone=rng.choice(ZONES),
        )
        index.upsert_location(entry)
        reference.locations[location_id] = entry

    resource_id = 0
    for location_id in range(n_locations):
        for _ in range(rng.randrange(4)):
            resource = ResourceEntry(resource_id, location_id, rng.choice(KINDS))
            index.upsert_resource(resource)
            reference.resources[resource_id] = resource
            world.resources.append(resource)
            resource_id += 1

    for visit_type_id in range(3):
        needs = tuple((kind, rng.randint(1, 2)) for kind in KINDS if rng.random() < 0.4)
        restrict = rng.random() < 0.2
        visit_type = VisitTypeEntry(
            id=visit_type_id,
            organization_id=1,
            duration_granules=rng.randint(1, 4),
            resource_needs=needs,
            patient_kind=rng.choice(list(PatientKind)),
            location_ids=frozenset({rng.randrange(n_locations)}) if restrict else frozenset(),
        )
        index.upsert_visit_type(visit_type)
        reference.visit_types[visit_type_id] = visit_type

    # Provider ids are dense but deliberately sparse in places (a removed provider's gap) and
    # the organisation has a second tenant whose data must never appear.
    for provider_id in range(n_providers):
        organization = 1 if provider_id % 5 != 4 else 2
        provider = ProviderEntry(
            id=provider_id * 2,
            key=f"prov-{rng.randrange(100):02d}-{provider_id}",
            organization_id=organization,
            specialties=frozenset(rng.sample(SPECIALTIES, rng.randint(1, 2))),
            languages=frozenset(rng.sample(LANGUAGES, rng.randint(1, 2))),
            plan_ids=frozenset(rng.sample(PLANS, rng.randint(1, 3))),
            accepts_new_patients=rng.random() < 0.7,
        )
        index.upsert_provider(provider)
        reference.providers[provider.id] = provider
        for location_id in rng.sample(range(n_locations), rng.randint(1, min(2, n_locations))):
            offered = frozenset(v for v in range(3) if rng.random() < 0.6)
            index.set_offered_visit_types(provider.id, location_id, offered)
            if offered:
                reference.offers[(provider.id, location_id)] = offered
            world.pairs.append((provider.id, location_id))

    _initial_schedule(world, bulk)
    return world


def _initial_schedule(world: World, bulk: bool) -> None:
    rng = world.rng
    rows: list[tuple[int, int, int]] = []
    by_provider: dict[int, list[int]] = {}
    for provider_id, location_id in world.pairs:
        by_provider.setdefault(provider_id, []).append(location_id)
    for provider_id, locations in by_provider.items():
        taken: set[int] = set()
        for day in range(HORIZON_DAYS):
            for _ in range(rng.randint(0, 3)):
                location_id = rng.choice(locations)
                first = day * PER_DAY + rng.randrange(PER_DAY)
                for granule in range(
                    first, min(first + rng.randint(1, 24), HORIZON_DAYS * PER_DAY)
                ):
                    if granule in taken or rng.random() < 0.25:
                        continue
                    taken.add(granule)
                    rows.append((provider_id, location_id, world.base_s + granule * GRANULE_S))
    busy: list[tuple[int, int, int]] = []
    for resource in world.resources:
        for _ in range(rng.randint(0, 4)):
            start = world.base_s + rng.randrange(HORIZON_DAYS * PER_DAY) * GRANULE_S
            busy.append((resource.id, start, start + rng.randint(1, 6) * GRANULE_S))

    for provider_id, location_id, start in rows:
        world.reference.open_granules(provider_id, location_id, start, 1)
    for resource_id, start, end in busy:
        world.reference.set_busy(resource_id, start, (end - start) // GRANULE_S, True)
    if bulk:
        world.index.bulk_load_granules(
            [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
        )
        world.index.bulk_load_resource_busy(
            [b[0] for b in busy], [b[1] for b in busy], [b[2] for b in busy]
        )
    else:
        for provider_id, location_id, start in rows:
            world.index.open_granules(provider_id, location_id, start)
        for resource_id, start, end in busy:
            world.index.set_resource_busy(resource_id, start, (end - start) // GRANULE_S, True)


def random_admin_change(world: World) -> None:
    """Schedule administration: a pair's offered visit types or a provider's attributes."""
    rng = world.rng
    provider_id, location_id = rng.choice(world.pairs)
    if rng.random() < 0.15:
        removed = world.removed_locations.pop(location_id, None)
        if removed is not None:  # the location comes back
            world.index.upsert_location(removed)
            world.reference.locations[location_id] = removed
        else:
            world.removed_locations[location_id] = world.reference.locations.pop(location_id)
            world.index.remove_location(location_id)
        return
    if rng.random() < 0.5:
        offered = frozenset(v for v in range(3) if rng.random() < 0.5)
        world.index.set_offered_visit_types(provider_id, location_id, offered)
        if offered:
            world.reference.offers[(provider_id, location_id)] = offered
        else:
            world.reference.offers.pop((provider_id, location_id), None)
        return
    provider = world.reference.providers[provider_id]
    changed = dataclasses.replace(
        provider,
        specialties=frozenset(rng.sample(SPECIALTIES, rng.randint(1, 2))),
        plan_ids=frozenset(rng.sample(PLANS, rng.randint(1, 3))),
        accepts_new_patients=not provider.accepts_new_patients,
    )
    world.index.upsert_provider(changed)
    world.reference.providers[provider_id] = changed


def random_event(world: World) -> list[SlotChange | ResourceChange]:
    """A booking-system event: book, hold, release, block, free or (re)materialize."""
    rng = world.rng
    provider_id, location_id = rng.choice(world.pairs)
    granules = rng.randint(1, 4)
    start = world.base_s + rng.randrange(HORIZON_DAYS * PER_DAY - granules) * GRANULE_S
    kind = rng.choice(("book", "hold", "release", "block", "free", "materialize"))
    here = [r for r in world.resources if r.location_id == location_id]
    if kind in ("book", "free"):
        is_open = kind == "free"
        changes: list[SlotChange | ResourceChange] = [
            SlotChange(provider_id, location_id, start, granules, is_open)
        ]
        for resource in rng.sample(here, min(len(here), rng.randint(0, 2))):
            changes.append(ResourceChange(resource.id, start, granules, not is_open))
        return changes
    is_open = kind in ("release", "materialize")
    if kind == "materialize":
        # A template change may move the granules to another of the provider's locations.
        location_id = rng.choice([loc for p, loc in world.pairs if p == provider_id])
    return [SlotChange(provider_id, location_id, start, granules, is_open)]


def random_query(world: World, rng: random.Random) -> SearchQuery:
    base_day = datetime.fromtimestamp(world.base_s, UTC).date()
    date_from = date_to = None
    if rng.random() < 0.5:
        date_from = base_day + timedelta(days=rng.randint(-1, HORIZON_DAYS))
        date_to = date_from + timedelta(days=rng.randint(0, 2))
    time_from = time_to = None
    if rng.random() < 0.4:
        hour = rng.randint(0, 20)
        time_from = time(hour, rng.choice((0, 15, 30, 45)))
        time_to = time(rng.randint(hour + 1, 23), 0) if rng.random() < 0.8 else time(0, 0)
    near = None
    radius = None
    if rng.random() < 0.6:
        near = GeoPoint(40.0 + rng.uniform(-0.05, 0.15), -75.0 + rng.uniform(-0.05, 0.1))
        if rng.random() < 0.7:
            radius = rng.choice((1.0, 3.0, 5.0, 8.0, 20.0))
    sort = SortOrder.DISTANCE if near is not None and rng.random() < 0.5 else SortOrder.SOONEST
    providers = None
    if rng.random() < 0.15:
        providers = frozenset(rng.sample([p for p, _ in world.pairs], 1))
    locations = None
    if rng.random() < 0.15:
        locations = frozenset(rng.sample([loc for _, loc in world.pairs], 1))
    return SearchQuery(
        organization_id=1 if rng.random() < 0.95 else 2,
        specialty=rng.choice(SPECIALTIES) if rng.random() < 0.4 else None,
        provider_ids=providers,
        location_ids=locations,
        near=near,
        radius=radius,
        unit=rng.choice(list(DistanceUnit)),
        plan_id=rng.choice(PLANS) if rng.random() < 0.3 else None,
        language=rng.choice(LANGUAGES) if rng.random() < 0.2 else None,
        visit_type_id=rng.randrange(3) if rng.random() < 0.6 else None,
        date_from=date_from,
        date_to=date_to,
        time_from=time_from,
        time_to=time_to,
        not_before_utc=(
            world.base_s + rng.randrange(HORIZON_DAYS * PER_DAY * GRANULE_S)
            if rng.random() < 0.3
            else None
        ),
        patient_kind=rng.choice(list(PatientKind)),
        sort=sort,
        limit=rng.randint(1, 12),
    )


def assert_pages_match(world: World, query: SearchQuery, rng: random.Random) -> int:
    """Page through `query` on the index, comparing each page with the reference; events may
    land between pages. Pages continue by cursor or by after key, at random. Returns the
    number of searches made."""
    after: SortKey | None = None
    searches = 0
    follow: SearchQuery = query
    while True:
        page = world.index.search(follow)
        searches += 1
        expected = world.reference.page(query, after)
        assert [_comparable(h) for h in page.hits] == [_comparable(r.hit) for r in expected]
        if page.next_cursor is None:
            assert page.next_after is None
            remaining = world.reference.page(query, expected[-1].key if expected else after)
            assert len(expected) < query.limit or not remaining
            return searches
        assert len(expected) == query.limit
        after = expected[-1].key
        assert page.next_after == after
        if rng.random() < 0.5:
            follow = dataclasses.replace(query, cursor=page.next_cursor)
        else:
            follow = dataclasses.replace(query, after=page.next_after)
        if rng.random() < 0.3:
            world.apply(random_event(world))


def _comparable(hit: SearchHit) -> SearchHit:
    """Distances are computed identically on both sides; rounding only guards the last bit."""
    return hit._replace(distance=None if hit.distance is None else round(hit.distance, 9))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    n_providers=st.integers(min_value=1, max_value=7),
    n_locations=st.integers(min_value=1, max_value=4),
    bulk=st.booleans(),
    n_events=st.integers(min_value=0, max_value=25),
)
def test_index_search_equals_reference_after_event_streams(
    seed: int, n_providers: int, n_locations: int, bulk: bool, n_events: int
) -> None:
    world = build_world(seed, n_providers, n_locations, bulk)
    rng = random.Random(seed ^ 0x5EED)
    searches = 0
    for _ in range(4):
        for _ in range(n_events // 4 + 1):
            changes = random_event(world)
            world.apply(changes)
            if rng.random() < 0.2:
                world.redeliver(random_event(world))
            if rng.random() < 0.1:
                random_admin_change(world)
        for _ in range(5):
            searches += assert_pages_match(world, random_query(world, rng), rng)
    assert world.index.position == world.reference.position == world.sequence
    assert searches >= 20


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    n_providers=st.integers(min_value=1, max_value=7),
    n_locations=st.integers(min_value=1, max_value=4),
)
def test_first_page_within_a_radius_equals_the_general_path(
    seed: int, n_providers: int, n_locations: int
) -> None:
    """A first page around a point takes a loop of its own; continuing after a key that
    sorts before every result takes the general one: both give the same page."""
    world = build_world(seed, n_providers, n_locations, bulk=seed % 2 == 0)
    rng = random.Random(seed)
    for _ in range(12):
        query = random_query(world, rng)
        if query.near is None or query.radius is None:
            query = dataclasses.replace(
                query,
                near=GeoPoint(40.0 + rng.uniform(-0.05, 0.15), -75.0 + rng.uniform(-0.05, 0.1)),
                radius=rng.choice((1.0, 5.0, 20.0)),
            )
        fast = world.index.search(query)
        general = world.index.search(dataclasses.replace(query, after=(-1.0, 0, "", "")))
        assert fast.hits == general.hits
        assert fast.next_after == general.next_after
        world.apply(random_event(world))
