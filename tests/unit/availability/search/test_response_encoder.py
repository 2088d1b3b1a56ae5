"""The gRPC response encoder writes what the protobuf API would, byte for byte."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

import availability_svc.search_server as search_server
from availability_svc.domain import PatientKind
from availability_svc.geo import DistanceUnit
from availability_svc.search_server import ResponseEncoder, response_from_result
from availability_svc.search_service import (
    Catalog,
    LocationInfo,
    Offer,
    ProviderInfo,
    SearchResult,
    VisitTypeInfo,
    format_slot_id,
    local_iso,
)
from medsched.availability.v1 import availability_service_pb2 as pb
from medsched.common.v1 import types_pb2

ORG = "0b0e9f3c-3c8e-4f43-9d0e-5a8f0c7b2a10"
PROVIDERS = {
    f"7f000000-0000-4000-8000-00000000000{n}": ProviderInfo(
        id=f"7f000000-0000-4000-8000-00000000000{n}",
        organization_id=ORG,
        display_name=f"Dr. Número {n}",  # non-ASCII on purpose: lengths are in bytes
        specialties=("cardiology", "internal_medicine")[: n % 2 + 1],
        languages=("en", "es") if n % 3 else (),
    )
    for n in range(4)
}
LOCATIONS = {
    "5a000000-0000-4000-8000-000000000001": LocationInfo(
        id="5a000000-0000-4000-8000-000000000001",
        organization_id=ORG,
        display_name="Lakeview Clinic",
        latitude=41.94,
        longitude=-87.65,
        time_zone="America/Chicago",
    ),
    "5a000000-0000-4000-8000-000000000002": LocationInfo(
        id="5a000000-0000-4000-8000-000000000002",
        organization_id=ORG,
        display_name="Harbor",
        latitude=0.0,  # a default value, left out of the message
        longitude=-70.25,
        time_zone="America/New_York",
    ),
}
ECHO = VisitTypeInfo(
    id="9c000000-0000-4000-8000-000000000001",
    organization_id=ORG,
    display_name="Echo",
    duration_granules=2,
    patient_kind=PatientKind.ANY,
    minimum_notice_s=0,
    maximum_days_ahead=0,
    active=True,
)
CATALOG = Catalog(providers=PROVIDERS, locations=LOCATIONS, visit_types={ECHO.id: ECHO})
DISTANCES = {
    "5a000000-0000-4000-8000-000000000001": 0.0,
    "5a000000-0000-4000-8000-000000000002": 12.3456,
}
START = int(datetime(2026, 3, 7, 15, 0, tzinfo=UTC).timestamp())  # around a DST change


def expected_response(result: SearchResult) -> pb.SearchAvailabilityResponse:
    """The response built field by field through the protobuf API."""
    response = pb.SearchAvailabilityResponse(next_page_token=result.next_page_token)
    for offer in result.offers:
        provider = result.catalog.providers[offer.provider_id]
        location = result.catalog.locations[offer.location_id]
        slot = response.slots.add(
            slot_id=format_slot_id(offer.provider_id, offer.start_utc),
            local_start_time=local_iso(location.time_zone, offer.start_utc),
            local_end_time=local_iso(location.time_zone, offer.end_utc),
            time_zone=location.time_zone,
        )
        slot.provider.CopyFrom(
            pb.ProviderSummary(
                provider_id=provider.id,
                display_name=provider.display_name,
                specialties=provider.specialties,
                languages=provider.languages,
            )
        )
        slot.location.CopyFrom(
            pb.LocationSummary(
                location_id=location.id,
                display_name=location.display_name,
                coordinates=types_pb2.GeoPoint(
                    latitude=location.latitude, longitude=location.longitude
                ),
            )
        )
        if offer.distance is not None:
            slot.location.distance.value = round(offer.distance, 2)
            slot.location.distance.unit = (
                types_pb2.MILES if result.unit is DistanceUnit.MI else types_pb2.KILOMETERS
            )
        slot.start_time.seconds = offer.start_utc
        slot.end_time.seconds = offer.end_utc
        if result.visit_type is not None:
            slot.visit_type.visit_type_id = result.visit_type.id
            slot.visit_type.display_name = result.visit_type.display_name
            slot.visit_type.duration_minutes = (offer.end_utc - offer.start_utc) // 60
    if result.index_time is not None:
        response.index_time.FromDatetime(result.index_time)
    return response


def random_result(
    rng: random.Random, catalog: Catalog = CATALOG, *, with_distance: bool
) -> SearchResult:
    visit_type = ECHO if rng.random() < 0.5 else None
    length = 1800 if visit_type is not None else 900
    offers = []
    for _ in range(rng.randint(0, 25)):
        location_id = rng.choice(sorted(catalog.locations))
        start = START + rng.randrange(-96, 4 * 96) * 900
        offers.append(
            Offer(
                provider_id=rng.choice(sorted(catalog.providers)),
                location_id=location_id,
                start_utc=start,
                end_utc=start + length,
                # Results at one location share one distance, as backends give them; 0.0 is
                # a default value, left out of the message.
                distance=DISTANCES[location_id] if with_distance else None,
                sort_km=0.0,
                visit_type_id=None if visit_type is None else visit_type.id,
            )
        )
    return SearchResult(
        offers=tuple(offers),
        catalog=catalog,
        visit_type=visit_type,
        unit=rng.choice(list(DistanceUnit)),
        next_page_token=rng.choice(("", "MXxhYmN8MHgwcDArMHwxN3x4fHk")),
        index_time=rng.choice((None, datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC))),
    )


@pytest.mark.parametrize("seed", range(40))
def test_encoded_bytes_equal_the_protobuf_serialization(seed: int) -> None:
    rng = random.Random(seed)
    encoder = ResponseEncoder()
    for with_distance in (False, True, False):  # the caches are reused across searches
        result = random_result(rng, with_distance=with_distance)
        assert encoder.encode(result) == expected_response(result).SerializeToString()


def test_response_from_result_is_the_message_of_those_bytes() -> None:
    result = random_result(random.Random(7), with_distance=True)
    assert response_from_result(result) == expected_response(result)
    assert response_from_result(result).slots or not result.offers


def test_a_reloaded_catalog_changes_what_results_say() -> None:
    encoder = ResponseEncoder()
    provider_id, location_id = sorted(PROVIDERS)[1], sorted(LOCATIONS)[0]
    result = SearchResult(
        offers=(Offer(provider_id, location_id, START, START + 900, 2.5, 0.0, None),),
        catalog=CATALOG,
        visit_type=None,
        unit=DistanceUnit.KM,
        next_page_token="",
        index_time=None,
    )
    first = result.offers[0]
    before = pb.SearchAvailabilityResponse.FromString(encoder.encode(result))
    renamed = {
        **PROVIDERS,
        first.provider_id: PROVIDERS[first.provider_id].__class__(
            id=first.provider_id,
            organization_id=ORG,
            display_name="Dr. Renamed",
            specialties=("pediatrics",),
            languages=("fr",),
        ),
    }
    moved = {
        **LOCATIONS,
        first.location_id: LOCATIONS[first.location_id].__class__(
            id=first.location_id,
            organization_id=ORG,
            display_name="New Site",
            latitude=1.5,
            longitude=2.5,
            time_zone="Europe/Paris",
        ),
    }
    reloaded = SearchResult(
        offers=result.offers,
        catalog=Catalog(providers=renamed, locations=moved, visit_types=CATALOG.visit_types),
        visit_type=result.visit_type,
        unit=result.unit,
        next_page_token=result.next_page_token,
        index_time=result.index_time,
    )
    after = pb.SearchAvailabilityResponse.FromString(encoder.encode(reloaded))
    assert before.slots[0].provider.display_name != "Dr. Renamed"
    assert after.slots[0].provider.display_name == "Dr. Renamed"
    assert list(after.slots[0].provider.specialties) == ["pediatrics"]
    assert after.slots[0].location.display_name == "New Site"
    assert after.slots[0].time_zone == "Europe/Paris"
    assert encoder.encode(reloaded) == expected_response(reloaded).SerializeToString()


def test_time_parts_stay_right_when_their_cache_is_emptied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(search_server, "_MAX_CACHED_TIMES", 5)
    encoder = ResponseEncoder()
    rng = random.Random(11)
    for _ in range(30):
        result = random_result(rng, with_distance=True)
        assert encoder.encode(result) == expected_response(result).SerializeToString()
