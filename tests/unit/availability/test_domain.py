"""Validation of availability domain values: every error names the field and the reason."""

from __future__ import annotations

from datetime import date, datetime, time

import pytest

from availability_svc.domain import (
    ExceptionKind,
    Location,
    Override,
    OverrideKind,
    PatientKind,
    ResourceNeed,
    ScheduleException,
    Template,
    ValidationError,
    VisitType,
    validate_granule_minutes,
)


def fields(error: pytest.ExceptionInfo[ValidationError]) -> dict[str, str]:
    return {v.field: v.reason for v in error.value.violations}


def test_location_reports_every_bad_field_at_once() -> None:
    with pytest.raises(ValidationError) as error:
        Location("loc-1", "org-1", " ", 91.0, -200.0, "Mars/Olympus_Mons")
    assert set(fields(error)) == {"name", "latitude", "longitude", "timezone"}
    assert "IANA" in fields(error)["timezone"]


def test_valid_location_exposes_its_zone() -> None:
    location = Location("loc-1", "org-1", "Main", 40.7, -74.0, "America/New_York")
    assert location.zone.key == "America/New_York"


def test_template_must_end_after_it_starts_and_offer_something() -> None:
    with pytest.raises(ValidationError) as error:
        Template(
            "t1",
            "p1",
            "loc-1",
            7,
            time(12),
            time(9),
            date(2026, 3, 1),
            date(2026, 2, 1),
            frozenset(),
        )
    assert set(fields(error)) == {"weekday", "end_time", "effective_to", "visit_type_ids"}


def test_template_may_end_at_midnight() -> None:
    tpl = Template(
        "t1", "p1", "loc-1", 0, time(18), time(0), date(2026, 3, 1), None, frozenset({"v"})
    )
    assert tpl.active_on(date(2026, 3, 2))
    assert not tpl.active_on(date(2026, 3, 3))


def test_visit_type_limits() -> None:
    with pytest.raises(ValidationError) as error:
        VisitType(
            "v1",
            "org-1",
            "Echo",
            "cardiology",
            0,
            (ResourceNeed("ultrasound"), ResourceNeed("ultrasound", 2)),
            PatientKind.NEW,
        )
    assert set(fields(error)) == {"duration_granules", "resource_needs"}
    with pytest.raises(ValidationError) as need:
        ResourceNeed("ultrasound", 0)
    assert set(fields(need)) == {"count"}


def test_exception_times_are_local_and_ordered() -> None:
    with pytest.raises(ValidationError) as error:
        ScheduleException(
            "e1",
            "p1",
            ExceptionKind.ADMIN_BLOCK,
            datetime(2026, 3, 2, 11),
            datetime(2026, 3, 2, 10),
        )
    assert set(fields(error)) == {"end_local"}
    whole = ScheduleException.whole_days(
        "e2", "p1", ExceptionKind.PTO, date(2026, 3, 2), date(2026, 3, 3)
    )
    assert (whole.start_local, whole.end_local) == (datetime(2026, 3, 2), datetime(2026, 3, 4))


def test_add_slots_needs_an_end_and_a_location() -> None:
    with pytest.raises(ValidationError) as error:
        Override("o1", "p1", date(2026, 3, 2), OverrideKind.ADD_SLOTS, time(9))
    assert set(fields(error)) == {"end_time", "location_id", "visit_type_ids"}
    with pytest.raises(ValidationError) as leave:
        Override("o2", "p1", date(2026, 3, 2), OverrideKind.LEAVE_EARLY, time(15), time(16))
    assert set(fields(leave)) == {"end_time"}


@pytest.mark.parametrize("minutes", [0, 7, -15, 1441])
def test_granule_size_must_divide_a_day(minutes: int) -> None:
    with pytest.raises(ValidationError) as error:
        validate_granule_minutes(minutes)
    assert set(fields(error)) == {"granule_minutes"}
