"""Pure rules of the admin use cases: NPI check digits, template overlaps, page tokens."""

from __future__ import annotations

import random
from datetime import date

import pytest

from availability_svc.admin_model import TemplateRecord, TemplateWindow
from availability_svc.admin_service import _decode_token, _encode_token, _first_overlap, _npi_valid
from availability_svc.seed import _npi
from common.errors import InvalidArgument


def test_npi_check_digit_accepts_real_numbers_and_what_seed_generates() -> None:
    assert _npi_valid("1234567893")  # the CMS example NPI
    assert not _npi_valid("1234567890")
    assert not _npi_valid("123456789")
    rng = random.Random(11)
    assert all(_npi_valid(_npi(rng)) for _ in range(500))


def template(
    template_id: str,
    start: date,
    end: date | None,
    window: tuple[int, int, int],
    week_interval: int = 1,
) -> TemplateRecord:
    return TemplateRecord(
        id=template_id,
        organization_id="o",
        provider_id="p",
        location_id="l",
        effective_start_date=start,
        effective_end_date=end,
        week_interval=week_interval,
        windows=(TemplateWindow(*window),),
        visit_type_ids=("v",),
    )


def test_overlap_needs_the_same_weekday_overlapping_minutes_and_a_shared_date() -> None:
    monday_morning = template("a", date(2026, 3, 2), None, (1, 480, 720))
    assert _first_overlap(template("b", date(2026, 3, 2), None, (1, 660, 780)), [monday_morning])
    assert not _first_overlap(
        template("c", date(2026, 3, 2), None, (1, 720, 780)), [monday_morning]
    )
    assert not _first_overlap(
        template("d", date(2026, 3, 2), None, (2, 480, 720)), [monday_morning]
    )
    ended = template("e", date(2026, 3, 2), date(2026, 3, 8), (1, 480, 720))
    assert not _first_overlap(template("f", date(2026, 3, 9), None, (1, 480, 720)), [ended])


def test_alternating_weeks_do_not_overlap_but_same_phase_weeks_do() -> None:
    odd = template("odd", date(2026, 3, 2), None, (1, 480, 720), week_interval=2)
    even = template("even", date(2026, 3, 9), None, (1, 480, 720), week_interval=2)
    same_phase = template("same", date(2026, 3, 16), None, (1, 480, 720), week_interval=2)
    assert _first_overlap(even, [odd]) is None
    overlap = _first_overlap(same_phase, [odd])
    assert overlap is not None
    assert overlap[0].id == "odd"


def test_page_tokens_round_trip_and_belong_to_their_query() -> None:
    token = _encode_token("locations", ["Midtown", "id-1"], ["org-1", "False"])
    assert _decode_token(token, "locations", ["org-1", "False"]) == ("Midtown", "id-1")
    assert _decode_token("", "locations", []) is None
    with pytest.raises(InvalidArgument) as info:
        _decode_token(token, "locations", ["org-2", "False"])
    assert info.value.violations[0].field == "page_token"
