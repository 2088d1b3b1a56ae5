"""Materialization of templates, exceptions and overrides, and the diff against stored granules."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from availability_svc.domain import (
    ExceptionKind,
    GranuleStatus,
    Location,
    Override,
    OverrideKind,
    ScheduleException,
    Template,
    ValidationError,
    validate_templates,
)
from availability_svc.materialize import (
    DateScope,
    DayGrids,
    ExistingGranule,
    Granule,
    apply_diff,
    diff_granules,
    materialize_provider,
    offered_visit_types,
)

NY = ZoneInfo("America/New_York")
LOCATIONS = {
    "loc-a": Location("loc-a", "org", "Clinic A", 40.7, -74.0, "America/New_York"),
    "loc-b": Location("loc-b", "org", "Clinic B", 40.8, -73.9, "America/New_York"),
    "loc-la": Location("loc-la", "org", "Clinic LA", 34.0, -118.2, "America/Los_Angeles"),
    "loc-lh": Location("loc-lh", "org", "Lord Howe", -31.5, 159.1, "Australia/Lord_Howe"),
    "loc-ld": Location("loc-ld", "org", "London", 51.5, -0.1, "Europe/London"),
}
SPRING_FORWARD = date(2026, 3, 8)  # Sunday: 02:00 EST jumps to 03:00 EDT
FALL_BACK = date(2026, 11, 1)  # Sunday: 02:00 EDT falls back to 01:00 EST
MONDAY = date(2026, 3, 2)


def template(
    day: date,
    start: time,
    end: time,
    location: str = "loc-a",
    tid: str = "t1",
    effective_from: date = date(2026, 1, 1),
    effective_to: date | None = None,
) -> Template:
    return Template(
        id=tid,
        provider_id="p1",
        location_id=location,
        weekday=day.weekday(),
        start_time=start,
        end_time=end,
        effective_from=effective_from,
        effective_to=effective_to,
        visit_type_ids=frozenset({"vt-1"}),
    )


def run(
    templates: list[Template],
    start: date,
    end: date | None = None,
    exceptions: tuple[ScheduleException, ...] = (),
    overrides: tuple[Override, ...] = (),
) -> list[Granule]:
    return materialize_provider(
        "p1", templates, exceptions, overrides, LOCATIONS, start, end or start
    )


def local_starts(granules: list[Granule]) -> list[str]:
    """Local wall-clock start of each granule with its UTC offset, e.g. '01:45-05:00'."""
    out = []
    for g in granules:
        moment = g.start_utc.astimezone(LOCATIONS[g.location_id].zone)
        offset = moment.utcoffset()
        assert offset is not None
        out.append(f"{moment:%H:%M}{int(offset.total_seconds() // 3600):+03d}")
    return out


def test_spring_forward_skips_the_missing_hour() -> None:
    granules = run([template(SPRING_FORWARD, time(0), time(5))], SPRING_FORWARD)

    labels = local_starts(granules)
    assert not [label for label in labels if label.startswith("02:")]
    assert labels[:8] == [f"{h:02d}:{m:02d}-05" for h in (0, 1) for m in (0, 15, 30, 45)]
    assert labels[8:] == [f"{h:02d}:{m:02d}-04" for h in (3, 4) for m in (0, 15, 30, 45)]
    # 00:00-05:00 on the wall is four real hours: 16 granules, each 15 minutes long.
    assert len(granules) == 16
    assert all(g.end_utc - g.start_utc == timedelta(minutes=15) for g in granules)


def test_fall_back_materializes_the_repeated_hour_once_at_its_first_occurrence() -> None:
    granules = run([template(FALL_BACK, time(0), time(3))], FALL_BACK)

    labels = local_starts(granules)
    assert labels == (
        [f"00:{m:02d}-04" for m in (0, 15, 30, 45)]
        + [f"01:{m:02d}-04" for m in (0, 15, 30, 45)]
        + [f"02:{m:02d}-05" for m in (0, 15, 30, 45)]
    )
    utc = [g.start_utc for g in granules]
    assert len(set(utc)) == len(utc)
    # The second pass through 01:00-02:00 (06:00-07:00 UTC) has no granules.
    gap = datetime(2026, 11, 1, 6, tzinfo=UTC)
    assert not [t for t in utc if gap <= t < gap + timedelta(hours=1)]


def test_half_hour_fall_back_is_handled_by_the_same_rule() -> None:
    # Lord Howe Island: on 2026-04-05 02:00 (+11:00) the clock goes back to 01:30 (+10:30).
    day = date(2026, 4, 5)
    granules = run([template(day, time(1), time(3), "loc-lh")], day)
    utc = [g.start_utc.strftime("%H:%M") for g in granules]
    assert utc == ["14:00", "14:15", "14:30", "14:45", "15:30", "15:45", "16:00", "16:15"]


def test_working_hours_stay_local_across_the_change() -> None:
    saturday, monday = date(2026, 3, 7), date(2026, 3, 9)
    granules = run(
        [template(saturday, time(8), time(17)), template(monday, time(8), time(17), tid="t2")],
        saturday,
        monday,
    )
    firsts = sorted({g.start_utc for g in granules if g.start_utc.minute == 0})
    assert firsts[0] == datetime(2026, 3, 7, 13, tzinfo=UTC)  # 08:00 EST
    assert datetime(2026, 3, 9, 12, tzinfo=UTC) in firsts  # 08:00 EDT
    assert len(granules) == 2 * 36


def test_effective_dates_bound_a_template() -> None:
    weekly = template(
        MONDAY, time(9), time(10), effective_from=date(2026, 3, 9), effective_to=date(2026, 3, 16)
    )
    granules = run([weekly], MONDAY, date(2026, 3, 31))
    days = sorted({g.start_utc.astimezone(NY).date() for g in granules})
    assert days == [date(2026, 3, 9), date(2026, 3, 16)]


def test_whole_day_pto_removes_the_day() -> None:
    pto = ScheduleException.whole_days("e1", "p1", ExceptionKind.PTO, MONDAY, MONDAY)
    granules = run(
        [template(MONDAY, time(8), time(12))],
        MONDAY,
        MONDAY + timedelta(days=7),
        exceptions=(pto,),
    )
    assert {g.start_utc.astimezone(NY).date() for g in granules} == {date(2026, 3, 9)}


def test_partial_admin_block_removes_every_granule_it_touches() -> None:
    block = ScheduleException(
        "e2",
        "p1",
        ExceptionKind.ADMIN_BLOCK,
        datetime.combine(MONDAY, time(10, 10)),
        datetime.combine(MONDAY, time(10, 20)),
    )
    granules = run([template(MONDAY, time(9), time(11))], MONDAY, exceptions=(block,))
    labels = [label[:5] for label in local_starts(granules)]
    assert "10:00" not in labels
    assert "10:15" not in labels
    assert len(labels) == 6


def test_exception_for_another_location_leaves_this_one_alone() -> None:
    block = ScheduleException(
        "e3",
        "p1",
        ExceptionKind.CONFERENCE,
        datetime.combine(MONDAY, time(0)),
        datetime.combine(MONDAY, time(23)),
        location_id="loc-b",
    )
    assert len(run([template(MONDAY, time(9), time(10))], MONDAY, exceptions=(block,))) == 4


def test_leave_early_removes_the_rest_of_the_day() -> None:
    leave = Override("o1", "p1", MONDAY, OverrideKind.LEAVE_EARLY, time(15))
    granules = run([template(MONDAY, time(13), time(17))], MONDAY, overrides=(leave,))
    assert [label[:5] for label in local_starts(granules)][-1] == "14:45"
    assert len(granules) == 8


def test_added_slots_extend_the_day_at_their_location() -> None:
    add = Override(
        "o2",
        "p1",
        MONDAY,
        OverrideKind.ADD_SLOTS,
        time(18),
        time(19),
        "loc-b",
        frozenset({"vt-1"}),
    )
    granules = run([template(MONDAY, time(13), time(17))], MONDAY, overrides=(add,))
    added = [
        label[:5]
        for g, label in zip(granules, local_starts(granules), strict=True)
        if g.location_id == "loc-b"
    ]
    assert added == ["18:00", "18:15", "18:30", "18:45"]
    assert len(granules) == 16 + 4

    # Leaving early also cuts added slots: a provider marked away is never offered.
    early = Override("o3", "p1", MONDAY, OverrideKind.LEAVE_EARLY, time(18, 30))
    cut = run([template(MONDAY, time(13), time(17))], MONDAY, overrides=(add, early))
    assert [label[:5] for label in local_starts(cut)][-2:] == ["18:00", "18:15"]


def test_added_slots_on_a_pto_day_stay_removed() -> None:
    pto = ScheduleException.whole_days("e1", "p1", ExceptionKind.PTO, MONDAY, MONDAY)
    add = Override(
        "o2",
        "p1",
        MONDAY,
        OverrideKind.ADD_SLOTS,
        time(18),
        time(19),
        "loc-a",
        frozenset({"vt-1"}),
    )
    assert run([], MONDAY, exceptions=(pto,), overrides=(add,)) == []


def test_multi_location_day() -> None:
    granules = run(
        [
            template(MONDAY, time(8), time(12), "loc-a", "t1"),
            template(MONDAY, time(13), time(17), "loc-b", "t2"),
        ],
        MONDAY,
    )
    morning = [g for g in granules if g.location_id == "loc-a"]
    afternoon = [g for g in granules if g.location_id == "loc-b"]
    assert len(morning) == len(afternoon) == 16
    assert max(g.end_utc for g in morning) <= min(g.start_utc for g in afternoon)


def test_overlapping_templates_at_two_locations_are_rejected() -> None:
    templates = [
        template(MONDAY, time(8), time(12), "loc-a", "t1"),
        template(MONDAY, time(11), time(15), "loc-b", "t2"),
    ]
    with pytest.raises(ValidationError) as static:
        validate_templates(templates)
    assert static.value.violations[0].field == "templates[1]"
    with pytest.raises(ValidationError) as materialized:
        run(templates, MONDAY)
    assert "t1" in str(materialized.value)
    assert "t2" in str(materialized.value)


def test_same_instant_in_two_time_zones_is_caught_when_materializing() -> None:
    # 12:00-13:00 in New York is 09:00-10:00 in Los Angeles: the wall clocks differ.
    templates = [
        template(MONDAY, time(12), time(13), "loc-a", "t1"),
        template(MONDAY, time(9), time(10), "loc-la", "t2"),
    ]
    validate_templates(templates)
    with pytest.raises(ValidationError):
        run(templates, MONDAY)


def test_overlapping_templates_at_one_location_are_merged() -> None:
    granules = run(
        [
            template(MONDAY, time(8), time(10), "loc-a", "t1"),
            template(MONDAY, time(9), time(11), "loc-a", "t2"),
        ],
        MONDAY,
    )
    assert len(granules) == 12


def test_template_ending_at_midnight_includes_the_last_granule() -> None:
    granules = run([template(MONDAY, time(23), time(0))], MONDAY)
    assert local_starts(granules)[-1] == "23:45-05"


def test_off_grid_template_time_names_the_field() -> None:
    with pytest.raises(ValidationError) as error:
        run([template(MONDAY, time(9, 10), time(10))], MONDAY)
    assert error.value.violations[0].field == "templates[0].start_time"


def test_day_grids_are_shared_between_providers() -> None:
    grids = DayGrids()
    first = materialize_provider(
        "p1", [template(MONDAY, time(9), time(10))], (), (), LOCATIONS, MONDAY, MONDAY, grids=grids
    )
    assert grids.starts("America/New_York", MONDAY, 15)[36] == first[0].start_utc


def test_offered_visit_types_unions_templates_and_added_slots() -> None:
    add = Override(
        "o2",
        "p1",
        MONDAY,
        OverrideKind.ADD_SLOTS,
        time(18),
        time(19),
        "loc-b",
        frozenset({"vt-9"}),
    )
    offered = offered_visit_types(
        [template(MONDAY, time(8), time(9)), template(MONDAY, time(9), time(10), tid="t2")],
        [add],
    )
    assert offered == {("p1", "loc-a"): frozenset({"vt-1"}), ("p1", "loc-b"): frozenset({"vt-9"})}


@settings(max_examples=150, deadline=None)
@given(
    location=st.sampled_from(["loc-a", "loc-la", "loc-lh", "loc-ld"]),
    first=st.dates(min_value=date(2026, 3, 1), max_value=date(2026, 11, 5)),
    days=st.integers(min_value=0, max_value=9),
    weekday=st.integers(min_value=0, max_value=6),
    start_slot=st.integers(min_value=0, max_value=95),
    slots=st.integers(min_value=1, max_value=96),
)
def test_granules_are_exactly_the_existing_local_template_times(
    location: str, first: date, days: int, weekday: int, start_slot: int, slots: int
) -> None:
    end_slot = min(96, start_slot + slots)
    start = time(start_slot // 4, start_slot % 4 * 15)
    end = time(0) if end_slot == 96 else time(end_slot // 4, end_slot % 4 * 15)
    tpl = Template(
        "t1", "p1", location, weekday, start, end, date(2026, 1, 1), None, frozenset({"v"})
    )
    last = first + timedelta(days=days)
    granules = run([tpl], first, last)

    zone = LOCATIONS[location].zone
    expected = set()
    day = first
    while day <= last:
        if day.weekday() == weekday:
            for slot in range(start_slot, end_slot):
                wall = datetime.combine(day, time(slot // 4, slot % 4 * 15))
                instant = wall.replace(tzinfo=zone).astimezone(UTC)
                if instant.astimezone(zone).replace(tzinfo=None) == wall:  # exists
                    expected.add(instant)
        day += timedelta(days=1)
    assert [g.start_utc for g in granules] == sorted(expected)


# ---- diff -----------------------------------------------------------------------------------

T0 = datetime(2026, 3, 2, 14, tzinfo=UTC)


def at(k: int) -> datetime:
    return T0 + timedelta(minutes=15 * k)


def desired(k: int, location: str = "loc-a") -> Granule:
    return Granule("p1", location, at(k), at(k + 1))


def stored(k: int, status: GranuleStatus, location: str = "loc-a") -> ExistingGranule:
    return ExistingGranule("p1", location, at(k), status)


def test_diff_inserts_blocks_reopens_relocates_and_reports_conflicts() -> None:
    want = [desired(0), desired(1), desired(2, "loc-b"), desired(3), desired(6, "loc-b")]
    have = [
        stored(1, GranuleStatus.BLOCKED),  # wanted again -> reopen
        stored(2, GranuleStatus.OPEN),  # wanted at loc-b -> relocate
        stored(3, GranuleStatus.BOOKED),  # wanted and booked -> nothing
        stored(4, GranuleStatus.OPEN),  # no longer wanted -> block
        stored(5, GranuleStatus.HELD),  # no longer wanted, held -> conflict
        stored(6, GranuleStatus.BOOKED),  # wanted elsewhere, booked here -> conflict
        stored(7, GranuleStatus.BLOCKED),  # not wanted, already blocked -> nothing
    ]
    diff = diff_granules(want, have)

    assert diff.insert == (desired(0),)
    assert diff.reopen == (have[0],)
    assert [(r.existing, r.location_id) for r in diff.relocate] == [(have[1], "loc-b")]
    assert diff.block == (have[3],)
    assert [(c.existing, c.desired_location_id) for c in diff.conflicts] == [
        (have[4], None),
        (have[5], "loc-b"),
    ]

    after = apply_diff(have, diff)
    again = diff_granules(want, after)
    assert not again.has_changes
    assert again.conflicts == diff.conflicts
    assert {g.start_utc: g.status for g in after if g.status in ("HELD", "BOOKED")} == {
        at(3): GranuleStatus.BOOKED,
        at(5): GranuleStatus.HELD,
        at(6): GranuleStatus.BOOKED,
    }


def test_diff_leaves_granules_outside_the_scope_alone() -> None:
    # 2026-03-03 02:00 UTC is still March 2 in New York.
    late_evening = ExistingGranule(
        "p1", "loc-a", datetime(2026, 3, 3, 2, tzinfo=UTC), GranuleStatus.OPEN
    )
    next_day = ExistingGranule(
        "p1", "loc-a", datetime(2026, 3, 3, 15, tzinfo=UTC), GranuleStatus.OPEN
    )
    scope = DateScope(MONDAY, MONDAY, {k: v.timezone for k, v in LOCATIONS.items()})
    diff = diff_granules([], [late_evening, next_day], scope)
    assert diff.block == (late_evening,)


statuses = st.sampled_from(list(GranuleStatus))
slots = st.integers(min_value=0, max_value=11)
places = st.sampled_from(["loc-a", "loc-b"])


@settings(max_examples=300, deadline=None)
@given(
    want=st.dictionaries(slots, places, max_size=12),
    have=st.dictionaries(slots, st.tuples(places, statuses), max_size=12),
    later=st.dictionaries(slots, places, max_size=12),
)
def test_diff_is_idempotent_and_never_touches_held_or_booked(
    want: dict[int, str], have: dict[int, tuple[str, GranuleStatus]], later: dict[int, str]
) -> None:
    desired_set = [desired(k, loc) for k, loc in want.items()]
    existing = [stored(k, status, loc) for k, (loc, status) in have.items()]

    diff = diff_granules(desired_set, existing)
    after = apply_diff(existing, diff)

    assert not diff_granules(desired_set, after).has_changes
    before_taken = {g for g in existing if g.status in ("HELD", "BOOKED")}
    assert before_taken <= set(after)
    open_after = {(g.start_utc, g.location_id) for g in after if g.status is GranuleStatus.OPEN}
    wanted_free = {
        (at(k), loc)
        for k, loc in want.items()
        if have.get(k, ("", GranuleStatus.OPEN))[1] not in ("HELD", "BOOKED")
    }
    assert open_after == wanted_free

    # A second schedule change converges just as well from the new state.
    second = [desired(k, loc) for k, loc in later.items()]
    settled = apply_diff(after, diff_granules(second, after))
    assert not diff_granules(second, settled).has_changes
