"""Admin records -> the pure core's values: windows, week intervals, part-day spans, overrides."""

from __future__ import annotations

from datetime import date, datetime, time

import pytest

from availability_svc import domain
from availability_svc.admin_model import (
    ExceptionKind,
    ExceptionRecord,
    OverrideKind,
    OverrideRecord,
    TemplateRecord,
    TemplateWindow,
    exceptions_for_materialization,
    format_minute,
    overrides_for_materialization,
    parse_minute,
    templates_for_materialization,
)


def template(week_interval: int = 1, end: date | None = None) -> TemplateRecord:
    return TemplateRecord(
        id="t-1",
        organization_id="o-1",
        provider_id="p-1",
        location_id="l-1",
        effective_start_date=date(2026, 3, 4),  # a Wednesday
        effective_end_date=end,
        week_interval=week_interval,
        windows=(
            TemplateWindow(1, 8 * 60, 12 * 60),
            TemplateWindow(6, 9 * 60, 24 * 60, ("v-sat",)),
        ),
        visit_type_ids=("v-1",),
    )


def test_every_week_template_becomes_one_domain_template_per_window() -> None:
    result = templates_for_materialization([template()], date(2026, 3, 1), date(2026, 5, 31))
    assert [(t.weekday, t.start_time, t.end_time, t.visit_type_ids) for t in result] == [
        (0, time(8), time(12), frozenset({"v-1"})),
        (5, time(9), time(0), frozenset({"v-sat"})),  # 24:00 is the domain's end-of-day 00:00
    ]
    assert {(t.effective_from, t.effective_to) for t in result} == {(date(2026, 3, 4), None)}


def test_every_other_week_counts_weeks_from_the_start_week() -> None:
    result = templates_for_materialization(
        [template(week_interval=2)], date(2026, 3, 1), date(2026, 3, 31)
    )
    mondays = sorted(t.effective_from for t in result if t.weekday == 0)
    saturdays = sorted(t.effective_from for t in result if t.weekday == 5)
    # Week of 2026-03-02 is week 0 (the start week); Monday 03-02 is before the start date.
    assert mondays == [date(2026, 3, 16), date(2026, 3, 30)]
    assert saturdays == [date(2026, 3, 7), date(2026, 3, 21)]


def test_ended_templates_are_left_out() -> None:
    ended = template(end=date(2026, 3, 10))
    assert templates_for_materialization([ended], date(2026, 4, 1), date(2026, 4, 30)) == []


def test_part_day_exception_becomes_one_window_per_date() -> None:
    exc = ExceptionRecord(
        "e-1", "o-1", "p-1", "l-1", ExceptionKind.CONFERENCE,
        date(2026, 3, 2), date(2026, 3, 4), 13 * 60, 24 * 60, "",
    )  # fmt: skip
    result = exceptions_for_materialization([exc], date(2026, 3, 3), date(2026, 3, 31))
    assert [(e.start_local, e.end_local, e.location_id) for e in result] == [
        (datetime(2026, 3, 3, 13), datetime(2026, 3, 4, 0), "l-1"),
        (datetime(2026, 3, 4, 13), datetime(2026, 3, 5, 0), "l-1"),
    ]


def test_whole_day_exception_is_clipped_to_the_run() -> None:
    exc = ExceptionRecord(
        "e-1", "o-1", "p-1", None, ExceptionKind.OTHER,
        date(2026, 2, 20), date(2026, 3, 2), None, None, "",
    )  # fmt: skip
    (result,) = exceptions_for_materialization([exc], date(2026, 3, 1), date(2026, 3, 31))
    assert (result.start_local, result.end_local, result.location_id) == (
        datetime(2026, 3, 1),
        datetime(2026, 3, 3),
        None,
    )


def test_leave_early_blocks_the_rest_of_the_day_at_its_location_and_add_hours_adds() -> None:
    leave = OverrideRecord(
        "o-1", "org", "p-1", "l-1", date(2026, 3, 2), OverrideKind.LEAVE_EARLY,
        15 * 60, 24 * 60, (), "",
    )  # fmt: skip
    add = OverrideRecord(
        "o-2", "org", "p-1", "l-2", date(2026, 3, 2), OverrideKind.ADD_HOURS,
        18 * 60, 19 * 60, ("v-1",), "",
    )  # fmt: skip
    removals, additions = overrides_for_materialization(
        [leave, add], date(2026, 3, 1), date(2026, 3, 31)
    )
    assert [(r.start_local, r.end_local, r.location_id) for r in removals] == [
        (datetime(2026, 3, 2, 15), datetime(2026, 3, 3), "l-1")
    ]
    assert [(a.kind, a.start_time, a.end_time, a.location_id) for a in additions] == [
        (domain.OverrideKind.ADD_SLOTS, time(18), time(19), "l-2")
    ]


@pytest.mark.parametrize(
    ("text", "end", "minute"), [("00:00", False, 0), ("08:15", False, 495), ("24:00", True, 1440)]
)
def test_clock_times_parse_to_minutes_and_back(text: str, end: bool, minute: int) -> None:
    assert parse_minute(text, allow_end_of_day=end) == minute
    assert format_minute(minute) == text


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("8:00", "must be HH:MM"),
        ("08:60", "must be a time of day between 00:00 and 24:00"),
        ("24:00", "must be before 24:00"),
        ("ab:cd", "must be HH:MM"),
    ],
)
def test_malformed_clock_times_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_minute(text, allow_end_of_day=False)
