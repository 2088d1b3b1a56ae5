"""Request validation, page tokens and slot ids of the search use case (no servers)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, time

import pytest

from availability_svc.domain import PatientKind
from availability_svc.geo import DistanceUnit
from availability_svc.index import GeoPoint, SortOrder
from availability_svc.search_service import (
    AvailabilityQuery,
    Catalog,
    Offer,
    OfferPage,
    OrganizationInfo,
    SearchParams,
    SearchService,
    VisitTypeInfo,
    decode_page_token,
    encode_page_token,
    format_slot_id,
    parse_query,
    parse_slot_id,
)
from common.errors import DependencyUnavailable, InvalidArgument, NotFound

ORG = "0b7a6f64-3c59-4a70-9c0e-2f6d1d7e7a01"
OTHER_ORG = "7c1b2d6e-55a4-4f0b-8d36-91f0c2e4b902"
VISIT = "5d0c3c2a-8a51-4c6f-9a34-0c8b1f3e2a03"
PROVIDER = "3f6e2a10-7b9d-4c55-a1e2-b0c9d8e7f604"
LOCATION = "9a8b7c6d-5e4f-4321-8765-43210fedcb05"
# 2026-03-05 20:30 in New York is already 2026-03-06 in UTC.
NOW = datetime(2026, 3, 6, 1, 30, tzinfo=UTC)

CATALOG = Catalog(
    organizations={
        ORG: OrganizationInfo(ORG, "America/New_York", 15, 90, active=True),
        OTHER_ORG: OrganizationInfo(OTHER_ORG, "Europe/London", 15, 90, active=False),
    },
    visit_types={
        VISIT: VisitTypeInfo(
            VISIT,
            ORG,
            "Echo",
            duration_granules=2,
            patient_kind=PatientKind.ANY,
            minimum_notice_s=7200,
            maximum_days_ahead=30,
            active=True,
        )
    },
)


def violations(error: InvalidArgument) -> dict[str, str]:
    return {v.field: v.description for v in error.violations}


def test_defaults_search_two_weeks_from_today_in_the_organizations_zone() -> None:
    query = parse_query(SearchParams(), CATALOG, NOW)
    assert query.organization_id == ORG  # the only active organisation
    assert (query.date_from, query.date_to) == (date(2026, 3, 5), date(2026, 3, 18))
    assert query.not_before_utc == int(NOW.timestamp())
    assert (query.limit, query.sort, query.near, query.radius) == (
        20,
        SortOrder.SOONEST,
        None,
        None,
    )


def test_every_field_is_mapped() -> None:
    query = parse_query(
        SearchParams(
            organization_id=ORG.upper(),
            specialty=" cardiology ",
            location="40.7, -74.0",
            radius="15KM",
            insurance="bcbs_ppo",
            from_date="2026-03-09",
            to_date="2026-03-20",
            limit=50,
            provider_ids=(PROVIDER,),
            location_ids=(LOCATION,),
            language="es",
            earliest_start_time="08:30",
            latest_start_time="24:00",
            patient_kind=PatientKind.NEW,
            sort="DISTANCE",
        ),
        CATALOG,
        NOW,
    )
    assert query == AvailabilityQuery(
        organization_id=ORG,
        date_from=date(2026, 3, 9),
        date_to=date(2026, 3, 20),
        not_before_utc=int(NOW.timestamp()),
        specialty="cardiology",
        provider_ids=frozenset({PROVIDER}),
        location_ids=frozenset({LOCATION}),
        near=GeoPoint(40.7, -74.0),
        radius=15.0,
        unit=DistanceUnit.KM,
        plan_id="bcbs_ppo",
        language="es",
        time_from=time(8, 30),
        time_to=None,
        patient_kind=PatientKind.NEW,
        sort=SortOrder.DISTANCE,
        limit=50,
    )


def test_a_location_without_radius_searches_25_miles() -> None:
    query = parse_query(SearchParams(location="40.7,-74.0"), CATALOG, NOW)
    assert (query.radius, query.unit) == (25.0, DistanceUnit.MI)


def test_a_visit_type_brings_its_booking_window() -> None:
    query = parse_query(
        SearchParams(visit_type_id=VISIT, from_date="2026-03-20", to_date="2026-04-30"),
        CATALOG,
        NOW,
    )
    assert query.not_before_utc == int(NOW.timestamp()) + 7200  # two hours' notice
    assert query.date_to == date(2026, 4, 4)  # 30 days after today (New York)


@pytest.mark.parametrize(
    ("params", "field", "says"),
    [
        (SearchParams(location="-91,10"), "location", "latitude must be between -90 and 90"),
        (SearchParams(location="10,181"), "location", "longitude must be between -180 and 180"),
        (SearchParams(location="10"), "location", "must be lat,lon"),
        (SearchParams(location="1e3,2"), "location", "must be lat,lon"),
        (SearchParams(location="1,2", radius="5 furlongs"), "radius", "followed by mi or km"),
        # Case-insensitive, but only for ASCII: the Kelvin sign (U+212A) is not a k.
        (SearchParams(location="1,2", radius="10\u212am"), "radius", "followed by mi or km"),
        (SearchParams(location="1,2", radius="403km"), "radius", "at most 250 miles"),
        (SearchParams(radius="5mi"), "radius", "needs location"),
        (SearchParams(from_date="2026-02-30"), "from", "must be a date YYYY-MM-DD"),
        (SearchParams(to_date="tomorrow"), "to", "must be a date YYYY-MM-DD"),
        (SearchParams(from_date="2026-03-09", to_date="2026-03-08"), "to", "not be before"),
        (SearchParams(from_date="2026-03-09", to_date="2026-06-08"), "to", "at most 90 days"),
        (SearchParams(limit=101), "limit", "between 1 and 100"),
        (SearchParams(earliest_start_time="7:00"), "earliest_start_time", "HH:MM"),
        (SearchParams(earliest_start_time="24:00"), "earliest_start_time", "23:59"),
        (SearchParams(latest_start_time="24:01"), "latest_start_time", "24:00"),
        (
            SearchParams(earliest_start_time="10:00", latest_start_time="10:00"),
            "latest_start_time",
            "after earliest_start_time",
        ),
        (SearchParams(sort="NEAREST"), "sort", "SOONEST or DISTANCE"),
        (SearchParams(sort="DISTANCE"), "sort", "DISTANCE needs location"),
        (SearchParams(location_ids=(LOCATION, "x")), "location_ids[1]", "not a valid id"),
        (SearchParams(organization_id="acme"), "organization_id", "not a valid id"),
        (SearchParams(visit_type_id="echo"), "visit_type_id", "not a valid id"),
        (SearchParams(page_token="@@@"), "page_token", "not a page token"),
    ],
)
def test_a_bad_field_is_named_with_the_reason(params: SearchParams, field: str, says: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        parse_query(params, CATALOG, NOW)
    assert says in violations(refused.value)[field]


def test_all_bad_fields_are_reported_together() -> None:
    with pytest.raises(InvalidArgument) as refused:
        parse_query(SearchParams(location="x", limit=-1, sort="UP"), CATALOG, NOW)
    assert set(violations(refused.value)) == {"location", "limit", "sort"}


@pytest.mark.parametrize(
    "params",
    [
        SearchParams(organization_id=OTHER_ORG),  # inactive
        SearchParams(organization_id="00000000-0000-4000-8000-000000000000"),
        SearchParams(visit_type_id="00000000-0000-4000-8000-000000000000"),
    ],
)
def test_unknown_or_inactive_organization_or_visit_type_is_not_found(params: SearchParams) -> None:
    with pytest.raises(NotFound):
        parse_query(params, CATALOG, NOW)


def test_several_organizations_need_an_organization_id() -> None:
    org = CATALOG.organizations[OTHER_ORG]
    both = dataclasses.replace(
        CATALOG,
        organizations={**CATALOG.organizations, OTHER_ORG: dataclasses.replace(org, active=True)},
    )
    with pytest.raises(InvalidArgument) as refused:
        parse_query(SearchParams(), both, NOW)
    assert "organization_id" in violations(refused.value)


def test_a_page_token_continues_after_its_key_for_the_same_filters_only() -> None:
    query = parse_query(SearchParams(specialty="cardiology"), CATALOG, NOW)
    key = (0.0, 1_772_900_000, PROVIDER, LOCATION)
    token = encode_page_token(query, key)
    assert decode_page_token(token, query) == key
    later = parse_query(
        SearchParams(specialty="cardiology", page_token=token, limit=5), CATALOG, NOW
    )
    assert later.after == key
    with pytest.raises(InvalidArgument) as refused:
        parse_query(SearchParams(specialty="dermatology", page_token=token), CATALOG, NOW)
    assert "different filters" in violations(refused.value)["page_token"]


def test_a_tampered_page_token_is_refused() -> None:
    query = parse_query(SearchParams(), CATALOG, NOW)
    token = encode_page_token(query, (0.0, 1, PROVIDER, LOCATION))
    with pytest.raises(InvalidArgument):
        decode_page_token(token[:-3], query)


def test_slot_ids_round_trip() -> None:
    start = datetime(2026, 3, 9, 14, 45, tzinfo=UTC)
    slot_id = format_slot_id(PROVIDER, int(start.timestamp()))
    assert slot_id == f"{PROVIDER}_20260309T1445Z"
    assert parse_slot_id(slot_id) == (PROVIDER, start)
    with pytest.raises(ValueError, match="slot id"):
        parse_slot_id("nobody_20260309T1445Z")


class _Backend:
    def __init__(self, page: OfferPage) -> None:
        self.page = page
        self.queries: list[AvailabilityQuery] = []

    async def search(self, query: AvailabilityQuery) -> OfferPage:
        self.queries.append(query)
        return self.page


async def test_an_offer_whose_provider_the_catalog_lacks_is_unavailable_not_wrong() -> None:
    offer = Offer(PROVIDER, LOCATION, 1_772_900_000, 1_772_900_900, None, 0.0, None)
    service = SearchService(_Backend(OfferPage((offer,), False)), lambda: CATALOG, lambda: NOW)
    with pytest.raises(DependencyUnavailable):
        await service.search(SearchParams())


def test_a_booking_window_ending_before_the_dates_asked_for_leaves_an_empty_range() -> None:
    query = parse_query(
        SearchParams(visit_type_id=VISIT, from_date="2026-05-01", to_date="2026-05-10"),
        CATALOG,
        NOW,
    )
    assert query.date_to < query.date_from  # every backend answers it with no offers
