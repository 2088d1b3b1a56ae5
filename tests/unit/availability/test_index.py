"""Behaviour of the in-memory availability index on small hand-made schedules."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

import pytest

from availability_svc.domain import GranuleStatus, PatientKind, ValidationError
from availability_svc.geo import DistanceUnit
from availability_svc.index import (
    AvailabilityIndex,
    DenseIds,
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

NY = "America/New_York"
G = 15 * 60
DAY = date(2026, 3, 2)  # a Monday, a week before the US spring-forward change
BASE = int(datetime(2026, 3, 2, tzinfo=UTC).timestamp())
ORG = 1
# Location 0 at the query point, 1 about 11.1 km (6.9 mi) north, 2 about 22.2 km north.
POINT = GeoPoint(40.0, -75.0)
EXAM, ULTRASOUND_VISIT = 0, 1


def local(day: date, hour: int, minute: int = 0, tz: str = NY) -> int:
    """UTC epoch seconds of a local wall-clock time."""
    return int(datetime.combine(day, time(hour, minute), tzinfo=ZoneInfo(tz)).timestamp())


def make_index(providers: int = 2, locations: int = 3) -> AvailabilityIndex:
    index = AvailabilityIndex(BASE, horizon_days=30)
    for loc in range(locations):
        index.upsert_location(LocationEntry(loc, f"loc-{loc}", ORG, 40.0 + 0.1 * loc, -75.0, NY))
    for p in range(providers):
        index.upsert_provider(
            ProviderEntry(
                id=p,
                key=f"prov-{p}",
                organization_id=ORG,
                specialties=frozenset({"cardiology"}),
                languages=frozenset({"en"}),
                plan_ids=frozenset({"plan-a"}),
                accepts_new_patients=True,
            )
        )
    index.upsert_visit_type(VisitTypeEntry(EXAM, ORG, duration_granules=3))
    index.upsert_visit_type(
        VisitTypeEntry(ULTRASOUND_VISIT, ORG, duration_granules=2, resource_needs=(("us", 1),))
    )
    for p in range(providers):
        for loc in range(locations):
            index.set_offered_visit_types(p, loc, {EXAM, ULTRASOUND_VISIT})
    return index


def starts(hits: tuple[SearchHit, ...]) -> list[tuple[int, int, str]]:
    """(provider, location, local HH:MM) of each hit, for readable assertions."""
    out = []
    for hit in hits:
        moment = datetime.fromtimestamp(hit.start_utc, ZoneInfo(NY))
        out.append((hit.provider_id, hit.location_id, moment.strftime("%H:%M")))
    return out


def query(**kwargs: object) -> SearchQuery:
    return SearchQuery(organization_id=ORG, **kwargs)  # type: ignore[arg-type]


def test_visit_of_three_granules_needs_three_consecutive_open_granules() -> None:
    index = make_index(providers=1)
    index.open_granules(0, 0, local(DAY, 9), 3)  # 09:00-09:45
    index.open_granules(0, 0, local(DAY, 10), 2)  # 10:00-10:30: too short for 45 minutes
    index.open_granules(0, 0, local(DAY, 11), 4)  # 11:00-12:00: two possible starts

    page = index.search(query(visit_type_id=EXAM))

    assert starts(page.hits) == [(0, 0, "09:00"), (0, 0, "11:00"), (0, 0, "11:15")]
    assert all(h.end_utc - h.start_utc == 3 * G for h in page.hits)
    assert page.next_cursor is None


def test_consecutive_granules_must_be_at_one_location() -> None:
    index = make_index(providers=1)
    index.open_granules(0, 0, local(DAY, 9), 2)
    index.open_granules(0, 1, local(DAY, 9, 30), 2)

    assert index.search(query(visit_type_id=EXAM)).hits == ()
    assert len(index.search(query()).hits) == 4


def test_booked_ultrasound_blocks_every_provider_sharing_it() -> None:
    index = make_index(providers=2)
    index.upsert_resource(ResourceEntry(7, location_id=0, kind="us"))
    for p in (0, 1):
        index.open_granules(p, 0, local(DAY, 8), 8)  # 08:00-10:00 for both providers

    # Provider 0 books an ultrasound visit 09:00-09:30: its granules and the machine go busy.
    index.apply(
        1,
        [
            SlotChange(0, 0, local(DAY, 9), 2, open=False),
            ResourceChange(7, local(DAY, 9), 2, busy=True),
        ],
    )
    ultrasound = index.search(query(visit_type_id=ULTRASOUND_VISIT, limit=50))
    exam = index.search(query(visit_type_id=EXAM, limit=50))

    # 30-minute visits: 08:30 ends as the booking starts; 08:45 and 09:15 would overlap it.
    assert starts(ultrasound.hits) == [
        (0, 0, "08:00"),
        (1, 0, "08:00"),
        (0, 0, "08:15"),
        (1, 0, "08:15"),
        (0, 0, "08:30"),
        (1, 0, "08:30"),
        (0, 0, "09:30"),
        (1, 0, "09:30"),
    ]
    # Visits that need no ultrasound are still offered by provider 1 over 09:00-09:30.
    assert (1, 0, "09:00") in starts(exam.hits)


def test_two_of_a_kind_are_needed_when_count_is_two() -> None:
    index = make_index(providers=1)
    index.upsert_visit_type(
        VisitTypeEntry(5, ORG, duration_granules=1, resource_needs=(("room", 2),))
    )
    index.set_offered_visit_types(0, 0, {5})
    index.open_granules(0, 0, local(DAY, 9), 4)
    index.upsert_resource(ResourceEntry(1, 0, "room"))
    assert index.search(query(visit_type_id=5)).hits == ()

    index.upsert_resource(ResourceEntry(2, 0, "room"))
    index.set_resource_busy(2, local(DAY, 9, 15), 1, busy=True)
    assert starts(index.search(query(visit_type_id=5)).hits) == [
        (0, 0, "09:00"),
        (0, 0, "09:30"),
        (0, 0, "09:45"),
    ]


def test_held_and_booked_time_is_never_offered_and_release_reopens_it() -> None:
    index = make_index(providers=1)
    index.open_granules(0, 0, local(DAY, 9), 4)
    index.set_granule_status(0, 0, local(DAY, 9), GranuleStatus.HELD)
    index.set_granule_status(0, 0, local(DAY, 9, 15), GranuleStatus.BOOKED)
    index.set_granule_status(0, 0, local(DAY, 9, 30), GranuleStatus.BLOCKED)
    assert starts(index.search(query()).hits) == [(0, 0, "09:45")]

    index.set_granule_status(0, 0, local(DAY, 9), GranuleStatus.OPEN)
    assert starts(index.search(query()).hits) == [(0, 0, "09:00"), (0, 0, "09:45")]


def test_pages_cover_every_result_once_in_order() -> None:
    index = make_index(providers=3)
    for p in range(3):
        index.open_granules(p, p, local(DAY, 8), 10)
    expected = index.search(query(limit=500)).hits
    assert len(expected) == 30

    seen: list[SearchHit] = []
    cursor = None
    while True:
        page = index.search(query(limit=7, cursor=cursor))
        seen.extend(page.hits)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == list(expected)
    assert len({(h.provider_id, h.start_utc) for h in seen}) == 30


def test_last_full_page_has_no_cursor() -> None:
    index = make_index(providers=1)
    index.open_granules(0, 0, local(DAY, 8), 4)
    page = index.search(query(limit=4))
    assert len(page.hits) == 4
    assert page.next_cursor is None


def test_cursor_continues_correctly_after_unrelated_mutations() -> None:
    index = make_index(providers=2)
    index.open_granules(0, 0, local(DAY, 8), 4)
    index.open_granules(1, 0, local(DAY, 8), 4)
    first = index.search(query(limit=3))
    assert starts(first.hits) == [(0, 0, "08:00"), (1, 0, "08:00"), (0, 0, "08:15")]

    # Something earlier is booked and something later opens: the next page neither repeats
    # nor skips what is still after the cursor.
    index.apply(1, [SlotChange(0, 0, local(DAY, 8), 1, open=False)])
    index.apply(2, [SlotChange(1, 0, local(DAY, 9), 1, open=True)])
    second = index.search(query(limit=3, cursor=first.next_cursor))
    assert starts(second.hits) == [(1, 0, "08:15"), (0, 0, "08:30"), (1, 0, "08:30")]


def test_cursor_from_one_replica_continues_on_another_with_other_dense_ids() -> None:
    def replica(order: list[str]) -> tuple[AvailabilityIndex, DenseIds]:
        ids = DenseIds()
        index = AvailabilityIndex(BASE, horizon_days=30)
        index.upsert_location(LocationEntry(0, "loc-x", ORG, 40.0, -75.0, NY))
        for key in order:
            p = ids.intern(key)
            index.upsert_provider(
                ProviderEntry(p, key, ORG, frozenset({"c"}), frozenset(), frozenset(), True)
            )
            index.open_granules(p, 0, local(DAY, 8), 2)
        return index, ids

    a, a_ids = replica(["uuid-b", "uuid-a", "uuid-c"])
    b, b_ids = replica(["uuid-c", "uuid-b", "uuid-a"])
    page_a = a.search(query(limit=4))
    page_b = b.search(query(limit=4, cursor=page_a.next_cursor))

    keys = [a_ids.key(h.provider_id) for h in page_a.hits] + [
        b_ids.key(h.provider_id) for h in page_b.hits
    ]
    assert keys == ["uuid-a", "uuid-b", "uuid-c", "uuid-a", "uuid-b", "uuid-c"]
    assert page_b.next_cursor is None


def test_cursor_of_another_query_or_garbage_is_rejected() -> None:
    index = make_index(providers=1)
    index.open_granules(0, 0, local(DAY, 8), 4)
    cursor = index.search(query(limit=1)).next_cursor
    with pytest.raises(ValidationError) as other:
        index.search(query(limit=1, specialty="cardiology", cursor=cursor))
    assert other.value.violations[0].field == "cursor"
    with pytest.raises(ValidationError) as garbage:
        index.search(query(cursor="not-a-cursor"))
    assert garbage.value.violations[0].field == "cursor"


def test_radius_is_honoured_in_miles_and_kilometres() -> None:
    index = make_index(providers=3)
    for p in range(3):
        index.open_granules(p, p, local(DAY, 8))  # provider p works at location p

    def within(radius: float, unit: DistanceUnit) -> set[int]:
        page = index.search(query(near=POINT, radius=radius, unit=unit))
        return {h.location_id for h in page.hits}

    # Location 1 is 11.12 km = 6.91 mi away; location 2 is 22.24 km = 13.82 mi away.
    assert within(6.8, DistanceUnit.MI) == {0}
    assert within(7.0, DistanceUnit.MI) == {0, 1}
    assert within(11.0, DistanceUnit.KM) == {0}
    assert within(11.2, DistanceUnit.KM) == {0, 1}
    assert within(14.0, DistanceUnit.MI) == {0, 1, 2}
    hit = index.search(
        query(near=POINT, radius=7.0, unit=DistanceUnit.MI, provider_ids=frozenset({1}))
    )
    assert hit.hits[0].distance == pytest.approx(6.910, abs=0.001)


def test_distance_order_puts_nearest_first_then_soonest() -> None:
    index = make_index(providers=3)
    index.open_granules(0, 2, local(DAY, 8))  # far, earliest
    index.open_granules(1, 1, local(DAY, 9))
    index.open_granules(2, 0, local(DAY, 10))  # nearest, latest
    index.open_granules(2, 0, local(DAY, 11))

    page = index.search(query(near=POINT, sort=SortOrder.DISTANCE, unit=DistanceUnit.KM))
    assert starts(page.hits) == [(2, 0, "10:00"), (2, 0, "11:00"), (1, 1, "09:00"), (0, 2, "08:00")]
    assert [round(h.distance or 0, 2) for h in page.hits] == [0.0, 0.0, 11.12, 22.24]

    soonest = index.search(query(near=POINT))
    assert starts(soonest.hits)[0] == (0, 2, "08:00")


def test_time_window_is_local_time_across_the_dst_change() -> None:
    index = make_index(providers=1)
    before, after = date(2026, 3, 6), date(2026, 3, 9)  # EST (UTC-5), then EDT (UTC-4)
    for day in (before, after):
        index.open_granules(0, 0, local(day, 7), 12)  # 07:00-10:00 local

    page = index.search(query(time_from=time(8), time_to=time(8, 30), limit=10))

    assert [datetime.fromtimestamp(h.start_utc, UTC).strftime("%d %H:%M") for h in page.hits] == [
        "06 13:00",
        "06 13:15",
        "09 12:00",
        "09 12:15",
    ]


def test_dates_are_local_dates_of_each_location() -> None:
    index = AvailabilityIndex(BASE, horizon_days=30)
    index.upsert_location(LocationEntry(0, "ny", ORG, 40.0, -75.0, NY))
    index.upsert_location(LocationEntry(1, "kolkata", ORG, 22.5, 88.3, "Asia/Kolkata"))
    for p in (0, 1):
        index.upsert_provider(
            ProviderEntry(p, f"p{p}", ORG, frozenset({"c"}), frozenset(), frozenset(), True)
        )
    # 2026-03-03 02:00 UTC is still 03-02 in New York but already 03-03 in Kolkata.
    moment = int(datetime(2026, 3, 3, 2, tzinfo=UTC).timestamp())
    index.open_granules(0, 0, moment)
    index.open_granules(1, 1, moment)

    on_second = index.search(query(date_from=date(2026, 3, 2), date_to=date(2026, 3, 2)))
    on_third = index.search(query(date_from=date(2026, 3, 3), date_to=date(2026, 3, 3)))
    assert [h.provider_id for h in on_second.hits] == [0]
    assert [h.provider_id for h in on_third.hits] == [1]


def test_not_before_hides_past_starts() -> None:
    index = make_index(providers=1)
    index.open_granules(0, 0, local(DAY, 9), 4)
    page = index.search(query(not_before_utc=local(DAY, 9, 20)))
    assert starts(page.hits) == [(0, 0, "09:30"), (0, 0, "09:45")]


def test_attribute_filters_and_new_patient_rules() -> None:
    index = make_index(providers=2)
    index.upsert_provider(
        ProviderEntry(
            1,
            "prov-1",
            ORG,
            frozenset({"dermatology"}),
            frozenset({"es"}),
            frozenset({"plan-b"}),
            accepts_new_patients=False,
        )
    )
    index.upsert_visit_type(VisitTypeEntry(9, ORG, 1, patient_kind=PatientKind.RETURNING))
    index.set_offered_visit_types(0, 0, {EXAM, 9})
    index.set_offered_visit_types(1, 0, {EXAM, 9})
    for p in (0, 1):
        index.open_granules(p, 0, local(DAY, 9))

    def providers(**kwargs: object) -> list[int]:
        return [h.provider_id for h in index.search(query(**kwargs)).hits]

    assert providers(specialty="dermatology") == [1]
    assert providers(specialty="cardiology") == [0]
    assert providers(plan_id="plan-b") == [1]
    assert providers(language="en") == [0]
    assert providers(patient_kind=PatientKind.NEW) == [0]
    assert providers(visit_type_id=9, patient_kind=PatientKind.NEW) == []
    assert providers(visit_type_id=9, patient_kind=PatientKind.RETURNING) == [0, 1]
    assert providers(provider_ids=frozenset({1})) == [1]
    # Another organisation's providers never appear.
    assert index.search(SearchQuery(organization_id=2)).hits == ()


def test_visit_type_only_where_offered() -> None:
    index = make_index(providers=1)
    index.set_offered_visit_types(0, 1, set())
    index.open_granules(0, 0, local(DAY, 9), 3)
    index.open_granules(0, 1, local(DAY, 13), 3)
    assert [h.location_id for h in index.search(query(visit_type_id=EXAM)).hits] == [0]


def test_visit_type_withdrawn_at_a_location_is_no_longer_offered_there() -> None:
    index = make_index(providers=2)
    for p in (0, 1):
        index.open_granules(p, 0, local(DAY, 9), 3)
    index.set_offered_visit_types(0, 0, {ULTRASOUND_VISIT})  # provider 0 stops offering EXAM

    for near in (None, POINT):
        radius = None if near is None else 5.0
        page = index.search(query(visit_type_id=EXAM, near=near, radius=radius))
        assert {h.provider_id for h in page.hits} == {1}


def test_provider_without_schedule_or_removed_is_absent() -> None:
    index = make_index(providers=3)  # provider 2 never gets a granule
    index.open_granules(0, 0, local(DAY, 9))
    index.open_granules(1, 0, local(DAY, 9))
    index.remove_provider(1)

    for near in (None, POINT):
        radius = None if near is None else 5.0
        assert [h.provider_id for h in index.search(query(near=near, radius=radius)).hits] == [0]
        page = index.search(query(near=near, radius=radius, visit_type_id=EXAM))
        assert page.hits == ()  # one granule is too short for a 45-minute visit


def test_opening_at_one_location_closes_the_same_time_elsewhere() -> None:
    index = make_index(providers=1)
    index.open_granules(0, 0, local(DAY, 9), 4)
    index.open_granules(0, 1, local(DAY, 9, 30), 4)  # template moved to location 1
    assert starts(index.search(query(limit=10)).hits) == [
        (0, 0, "09:00"),
        (0, 0, "09:15"),
        (0, 1, "09:30"),
        (0, 1, "09:45"),
        (0, 1, "10:00"),
        (0, 1, "10:15"),
    ]


def test_redelivered_event_is_skipped_and_position_advances() -> None:
    index = make_index(providers=1)
    index.open_granules(0, 0, local(DAY, 9), 2)
    assert index.apply(5, [SlotChange(0, 0, local(DAY, 9), 1, open=False)])
    assert index.apply(6, [SlotChange(0, 0, local(DAY, 9), 1, open=True)])
    # Event 5 again (at-least-once delivery) must not undo event 6.
    assert not index.apply(5, [SlotChange(0, 0, local(DAY, 9), 1, open=False)])
    assert index.position == 6
    assert len(index.search(query()).hits) == 2


def test_bulk_load_gives_the_same_answers_as_single_updates() -> None:
    one, bulk = make_index(providers=2), make_index(providers=2)
    rows = [(p, p, local(DAY, 8) + k * G) for p in (0, 1) for k in range(20) if k % 7]
    statuses = [k % 3 != 0 for k in range(len(rows))]
    for (p, loc, start), is_open in zip(rows, statuses, strict=True):
        if is_open:
            one.open_granules(p, loc, start)
    one.upsert_resource(ResourceEntry(3, 0, "us"))
    bulk.upsert_resource(ResourceEntry(3, 0, "us"))
    one.set_resource_busy(3, local(DAY, 9), 2, busy=True)

    loaded = bulk.bulk_load_granules(
        [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], statuses
    )
    # A reservation that is not on the grid covers every granule it touches.
    bulk.bulk_load_resource_busy([3], [local(DAY, 9, 5)], [local(DAY, 9, 20)])

    assert loaded == sum(statuses)
    for q in (query(limit=100), query(visit_type_id=ULTRASOUND_VISIT, limit=100)):
        assert bulk.search(q) == one.search(q)
    assert bulk.snapshot_stats().open_granules == one.snapshot_stats().open_granules


def test_roll_forward_drops_past_days_and_keeps_the_rest() -> None:
    index = make_index(providers=1)
    index.open_granules(0, 0, local(DAY, 9))
    tomorrow = date(2026, 3, 3)
    index.open_granules(0, 0, local(tomorrow, 9))
    index.roll_forward(BASE + 86_400)
    assert index.base_epoch_s == BASE + 86_400
    assert [h.start_utc for h in index.search(query()).hits] == [local(tomorrow, 9)]


def test_granules_beyond_the_horizon_grow_it() -> None:
    index = make_index(providers=1)
    later = date(2026, 5, 20)  # past the 30-day horizon
    index.open_granules(0, 0, local(later, 9))
    assert index.end_epoch_s > local(later, 9)
    assert [h.start_utc for h in index.search(query()).hits] == [local(later, 9)]


def test_off_grid_instants_are_rejected() -> None:
    index = make_index(providers=1)
    with pytest.raises(ValidationError) as error:
        index.open_granules(0, 0, local(DAY, 9, 5))
    assert error.value.violations[0].field == "start_utc"


def test_query_validation_names_fields() -> None:
    with pytest.raises(ValidationError) as error:
        SearchQuery(organization_id=ORG, radius=5.0, limit=0, sort=SortOrder.DISTANCE)
    fields = {v.field for v in error.value.violations}
    assert fields == {"radius", "limit", "sort"}


def test_snapshot_stats_counts_what_is_held() -> None:
    index = make_index(providers=2)
    index.open_granules(0, 0, local(DAY, 9), 4)
    index.open_granules(1, 1, local(DAY, 9), 2)
    index.upsert_resource(ResourceEntry(3, 0, "us"))
    index.set_resource_busy(3, local(DAY, 9), 3, busy=True)
    index.set_position(42)
    stats = index.snapshot_stats()
    assert (stats.providers, stats.locations, stats.resources) == (2, 3, 1)
    assert stats.open_granules == 6
    assert stats.busy_resource_granules == 3
    assert stats.days == 30
    assert stats.position == 42
    assert stats.memory_bytes > 0
