"""gRPC servicer of `AvailabilityService`: request -> `SearchParams` -> search -> response."""

from __future__ import annotations

from typing import Any

import grpc.aio

from availability_svc.domain import PatientKind
from availability_svc.geo import DistanceUnit
from availability_svc.search_service import (
    LocationInfo,
    ProviderInfo,
    SearchParams,
    SearchResult,
    SearchService,
    SlotResult,
)
from common.grpc_server import Registration
from medsched.availability.v1 import availability_service_pb2 as pb
from medsched.availability.v1 import availability_service_pb2_grpc as pb_grpc
from medsched.common.v1 import types_pb2

__all__ = [
    "SEARCH_SERVICE",
    "AvailabilitySearchServicer",
    "params_from_request",
    "response_from_result",
    "search_registration",
]

SEARCH_SERVICE: str = pb.DESCRIPTOR.services_by_name["AvailabilityService"].full_name

_SORTS = {
    pb.SearchAvailabilityRequest.SORT_UNSPECIFIED: "",
    pb.SearchAvailabilityRequest.SOONEST: "SOONEST",
    pb.SearchAvailabilityRequest.DISTANCE: "DISTANCE",
}
_PATIENT_KINDS = {
    types_pb2.PATIENT_KIND_UNSPECIFIED: PatientKind.ANY,
    types_pb2.NEW_PATIENT: PatientKind.NEW,
    types_pb2.RETURNING_PATIENT: PatientKind.RETURNING,
}
_UNITS = {DistanceUnit.MI: types_pb2.MILES, DistanceUnit.KM: types_pb2.KILOMETERS}


class AvailabilitySearchServicer(pb_grpc.AvailabilityServiceServicer):
    """Translates protobuf to the search use case and back; no search logic here."""

    def __init__(self, service: SearchService) -> None:
        self._service = service
        self._summaries = _Summaries()

    async def SearchAvailability(  # noqa: N802 (the gRPC method name)
        self,
        request: pb.SearchAvailabilityRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.SearchAvailabilityResponse:
        result = await self._service.search(params_from_request(request))
        return response_from_result(result, self._summaries)


def params_from_request(request: pb.SearchAvailabilityRequest) -> SearchParams:
    """The request's fields as given; unknown enum numbers become invalid values to report."""
    return SearchParams(
        organization_id=request.organization_id,
        specialty=request.specialty,
        location=request.location,
        radius=request.radius,
        insurance=request.insurance,
        from_date=request.from_date,
        to_date=request.to_date,
        limit=request.limit,
        page_token=request.page_token,
        provider_ids=tuple(request.provider_ids),
        location_ids=tuple(request.location_ids),
        language=request.language,
        visit_type_id=request.visit_type_id,
        earliest_start_time=request.earliest_start_time,
        latest_start_time=request.latest_start_time,
        patient_kind=_PATIENT_KINDS.get(request.patient_kind, PatientKind.ANY),
        sort=_SORTS.get(request.sort, f"#{int(request.sort)}"),
    )


def response_from_result(
    result: SearchResult, summaries: _Summaries | None = None
) -> pb.SearchAvailabilityResponse:
    summaries = summaries or _Summaries()
    response = pb.SearchAvailabilityResponse(next_page_token=result.next_page_token)
    for slot in result.slots:
        _add_slot(response, slot, summaries)
    if result.index_time is not None:
        response.index_time.FromDatetime(result.index_time)
    return response


def _add_slot(
    response: pb.SearchAvailabilityResponse, result: SlotResult, summaries: _Summaries
) -> None:
    # Adding in place and copying cached summaries costs a third of building each result
    # from keyword arguments, which matters at thousands of results a second.
    offer = result.offer
    slot = response.slots.add(
        slot_id=result.slot_id,
        local_start_time=result.local_start,
        local_end_time=result.local_end,
        time_zone=result.location.time_zone,
    )
    slot.provider.CopyFrom(summaries.provider(result.provider))
    slot.location.CopyFrom(summaries.location(result.location))
    if offer.distance is not None:
        slot.location.distance.value = round(offer.distance, 2)
        slot.location.distance.unit = _UNITS[result.unit]
    slot.start_time.seconds = offer.start_utc
    slot.end_time.seconds = offer.end_utc
    if result.visit_type is not None:
        visit_type = result.visit_type
        slot.visit_type.visit_type_id = visit_type.id
        slot.visit_type.display_name = visit_type.display_name
        slot.visit_type.duration_minutes = (offer.end_utc - offer.start_utc) // 60


class _Summaries:
    """Result summaries of providers and locations, built once per catalog entry.

    Keyed by id and checked by identity: a reloaded catalog holds new entry objects, so a
    changed name gets a new summary; an entry object cannot be reused for another id while
    the cache holds it. Bounded by the number of providers and locations.
    """

    def __init__(self) -> None:
        self._providers: dict[str, tuple[ProviderInfo, pb.ProviderSummary]] = {}
        self._locations: dict[str, tuple[LocationInfo, pb.LocationSummary]] = {}

    def provider(self, info: ProviderInfo) -> pb.ProviderSummary:
        cached = self._providers.get(info.id)
        if cached is not None and cached[0] is info:
            return cached[1]
        summary = pb.ProviderSummary(
            provider_id=info.id,
            display_name=info.display_name,
            specialties=info.specialties,
            languages=info.languages,
        )
        self._providers[info.id] = (info, summary)
        return summary

    def location(self, info: LocationInfo) -> pb.LocationSummary:
        cached = self._locations.get(info.id)
        if cached is not None and cached[0] is info:
            return cached[1]
        summary = pb.LocationSummary(
            location_id=info.id,
            display_name=info.display_name,
            coordinates=types_pb2.GeoPoint(latitude=info.latitude, longitude=info.longitude),
        )
        self._locations[info.id] = (info, summary)
        return summary


def search_registration(service: SearchService) -> Registration:
    """The servicer for `common.grpc_server`; searching needs no signed-in caller."""
    return Registration.of(
        pb_grpc.add_AvailabilityServiceServicer_to_server,
        AvailabilitySearchServicer(service),
        SEARCH_SERVICE,
        public_methods=("SearchAvailability",),
    )
