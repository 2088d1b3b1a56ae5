"""gRPC servicer of `AvailabilityService`: request -> `SearchParams` -> search -> response.

The response is written as protobuf wire bytes by `ResponseEncoder` rather than built
field by field: a page of 20 results set through the protobuf API cost about a sixth of a
search's server CPU. The encoder writes exactly what `SerializeToString` writes for the same
message (fields in number order, defaults left out), from parts built once: each provider's
and location's summary once per catalog entry, each start's times once per zone and
instant. `search_registration` serves those bytes as they are; `SearchAvailability` (the
servicer method, for in-process callers) parses them back into a message.
"""

from __future__ import annotations

import struct
from datetime import datetime
from typing import Any

import grpc
import grpc.aio
from google.protobuf import timestamp_pb2

from availability_svc.domain import PatientKind
from availability_svc.geo import DistanceUnit
from availability_svc.search_service import (
    Catalog,
    SearchParams,
    SearchResult,
    SearchService,
    VisitTypeInfo,
    local_iso,
)
from common.grpc_server import Registration
from common.slot_ids import slot_time
from medsched.availability.v1 import availability_service_pb2 as pb
from medsched.availability.v1 import availability_service_pb2_grpc as pb_grpc
from medsched.common.v1 import types_pb2

__all__ = [
    "SEARCH_SERVICE",
    "AvailabilitySearchServicer",
    "ResponseEncoder",
    "params_from_request",
    "response_from_result",
    "search_registration",
]

SEARCH_SERVICE: str = pb.DESCRIPTOR.services_by_name["AvailabilityService"].full_name
_METHOD = "SearchAvailability"

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

# Wire-format tags (field number << 3 | wire type) of the fields the encoder writes.
_RESPONSE_SLOTS = b"\x0a"  # SearchAvailabilityResponse.slots = 1
_RESPONSE_TOKEN = b"\x12"  # .next_page_token = 2
_RESPONSE_INDEX_TIME = b"\x1a"  # .index_time = 3
_SLOT_ID = b"\x0a"  # AvailableSlot.slot_id = 1
_SLOT_PROVIDER = b"\x12"  # .provider = 2
_SLOT_LOCATION = b"\x1a"  # .location = 3
_SLOT_START = b"\x22"  # .start_time = 4
_SLOT_END = b"\x2a"  # .end_time = 5
_SLOT_LOCAL_START = b"\x32"  # .local_start_time = 6
_SLOT_LOCAL_END = b"\x3a"  # .local_end_time = 7
_SLOT_TIME_ZONE = b"\x42"  # .time_zone = 8
_SLOT_VISIT_TYPE = b"\x4a"  # .visit_type = 9
_LOCATION_DISTANCE = b"\x22"  # LocationSummary.distance = 4
_DISTANCE_VALUE = b"\x09"  # Distance.value = 1 (double)
_DISTANCE_UNIT = b"\x10"  # Distance.unit = 2 (enum)
_TIMESTAMP_SECONDS = b"\x08"  # Timestamp.seconds = 1
_DOUBLE = struct.Struct("<d")
# Cached start/end time parts: bounded, cleared when full (they rebuild in microseconds).
_MAX_CACHED_TIMES = 1 << 16

# A location's encoded parts: see `ResponseEncoder._location`.
_LocationParts = tuple[bytes, dict[tuple[int, int], bytes], bytes, bytes]


class AvailabilitySearchServicer(pb_grpc.AvailabilityServiceServicer):
    """Translates protobuf to the search use case and back; no search logic here."""

    def __init__(self, service: SearchService) -> None:
        self._service = service
        self._encoder = ResponseEncoder()

    async def SearchAvailability(  # noqa: N802 (the gRPC method name)
        self,
        request: pb.SearchAvailabilityRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> pb.SearchAvailabilityResponse:
        return pb.SearchAvailabilityResponse.FromString(await self.search_encoded(request, context))

    async def search_encoded(
        self,
        request: pb.SearchAvailabilityRequest,
        context: grpc.aio.ServicerContext[Any, Any] | None = None,
    ) -> bytes:
        """The serialized `SearchAvailabilityResponse` (what the server sends)."""
        result = await self._service.search(params_from_request(request))
        return self._encoder.encode(result)


def params_from_request(request: pb.SearchAvailabilityRequest) -> SearchParams:
    """The request's fields as given; unknown enum numbers become invalid values to report."""
    sort = _SORTS.get(request.sort)
    if sort is None:
        sort = f"#{int(request.sort)}"
    # Id lists are rarely given: an empty one is not copied.
    provider_ids, location_ids = request.provider_ids, request.location_ids
    # The first fields by position: CPython compiles a call with more than 15 keyword
    # arguments to building and unpacking a dict of them (about 0.3 us more here).
    return SearchParams(
        request.organization_id,
        request.specialty,
        request.location,
        request.radius,
        insurance=request.insurance,
        from_date=request.from_date,
        to_date=request.to_date,
        limit=request.limit,
        page_token=request.page_token,
        provider_ids=tuple(provider_ids) if provider_ids else (),
        location_ids=tuple(location_ids) if location_ids else (),
        language=request.language,
        visit_type_id=request.visit_type_id,
        earliest_start_time=request.earliest_start_time,
        latest_start_time=request.latest_start_time,
        patient_kind=_PATIENT_KINDS.get(request.patient_kind, PatientKind.ANY),
        sort=sort,
    )


def response_from_result(
    result: SearchResult, encoder: ResponseEncoder | None = None
) -> pb.SearchAvailabilityResponse:
    """The response message for `result` (parsed from what the encoder writes)."""
    return pb.SearchAvailabilityResponse.FromString((encoder or ResponseEncoder()).encode(result))


# ---- wire format ---------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    """Base-128 varint of a non-negative int (negative ints are not written here)."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = 1 << 14
_VARINTS = [_varint(n) for n in range(_SMALL_VARINTS)]
"""Varints of 0 .. 16383 (lengths of slot ids and slots), looked up instead of computed."""


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (string or message)."""
    return tag + _varint(len(payload)) + payload


def _head(tag: bytes, length: int) -> bytes:
    """The tag and length of a length-delimited field, without its payload."""
    return tag + _varint(length)


def _string(tag: bytes, text: str) -> bytes:
    """A string field, left out when empty as proto3 serialization does."""
    return _field(tag, text.encode()) if text else b""


def _timestamp(tag: bytes, seconds: int) -> bytes:
    """A `Timestamp` field with whole seconds (always present, like a set submessage)."""
    if seconds == 0:
        return tag + b"\x00"
    if seconds < 0:
        message = timestamp_pb2.Timestamp(seconds=seconds).SerializeToString()
        return _field(tag, message)
    return _field(tag, _TIMESTAMP_SECONDS + _varint(seconds))


class ResponseEncoder:
    """Writes `SearchAvailabilityResponse` wire bytes for a `SearchResult`.

    Provider and location summaries are serialized once per catalog version (the projection
    swaps in a new `Catalog` object whenever reference data changes, and these parts are
    then rebuilt as results need them); the time fields of a result once per (zone, start,
    end), the time part of slot ids once per start. The output is byte for byte what
    `SerializeToString` gives for the same message, which the tests check against messages
    built through the protobuf API.
    """

    def __init__(self) -> None:
        self._catalog: Catalog | None = None
        # provider id -> (slot id prefix "<provider id>_", the slot's `provider` field)
        self._providers: dict[str, tuple[bytes, bytes]] = {}
        # location id -> (`location` field without a distance, zone's time parts, the
        # `location` field's head when a distance follows, the same for a zero distance)
        self._locations: dict[str, _LocationParts] = {}
        # zone -> (start, end) -> slot fields 4-8; start -> slot id time part
        self._times: dict[str, dict[tuple[int, int], bytes]] = {}
        self._time_count = 0
        self._stamps: dict[int, bytes] = {}
        self._index_time: tuple[datetime | None, bytes] = (None, b"")

    def encode(self, result: SearchResult) -> bytes:
        if result.catalog is not self._catalog:
            self._catalog = result.catalog
            self._providers = {}
            self._locations = {}
        providers, locations, stamps = self._providers, self._locations, self._stamps
        varints = _VARINTS
        # The `Distance` message's last field, the unit, the same for every result.
        unit_tail = _DISTANCE_UNIT + _varint(_UNITS[result.unit])
        pack_double = _DOUBLE.pack
        visit_type = result.visit_type
        visit_fields: dict[int, bytes] = {}
        located: dict[str, tuple[float, bytes]] = {}
        parts: list[bytes] = []
        for provider_id, location_id, start, end, distance, _, _ in result.offers:
            provider = providers.get(provider_id)
            if provider is None:
                provider = self._provider(provider_id)
            prefix, provider_field = provider
            location = locations.get(location_id)
            if location is None:
                location = self._location(location_id)
            location_field, zone_times, distance_head, zero_head = location
            if distance is not None:
                # Every result at a location has the same distance from the search point.
                known = located.get(location_id)
                if known is not None and known[0] == distance:
                    location_field = known[1]
                else:
                    value = round(distance, 2)  # what clients see: 2 decimal places
                    if value != 0.0:
                        location_field = distance_head + pack_double(value) + unit_tail
                    else:
                        location_field = zero_head + unit_tail  # proto3 leaves 0.0 out
                    located[location_id] = (distance, location_field)
            time_fields = zone_times.get((start, end))
            if time_fields is None:
                time_fields = self._time_fields(location_id, start, end)
            stamp = stamps.get(start)
            if stamp is None:
                stamp = stamps[start] = slot_time(start).encode()
                if len(stamps) > _MAX_CACHED_TIMES:
                    stamps.clear()
            slot_id_length = len(prefix) + len(stamp)
            slot_id_head = (
                varints[slot_id_length]
                if slot_id_length < _SMALL_VARINTS
                else _varint(slot_id_length)
            )
            slot_length = (
                1
                + len(slot_id_head)
                + slot_id_length
                + len(provider_field)
                + len(location_field)
                + len(time_fields)
            )
            if visit_type is None:
                visit_field = b""
            else:
                minutes = (end - start) // 60
                visit_field = visit_fields.get(minutes, b"")
                if not visit_field:
                    visit_field = visit_fields[minutes] = _visit_type_field(visit_type, minutes)
                slot_length += len(visit_field)
            parts += (
                _RESPONSE_SLOTS,
                varints[slot_length] if slot_length < _SMALL_VARINTS else _varint(slot_length),
                _SLOT_ID,
                slot_id_head,
                prefix,
                stamp,
                provider_field,
                location_field,
                time_fields,
                visit_field,
            )
        if result.next_page_token:
            parts.append(_string(_RESPONSE_TOKEN, result.next_page_token))
        if result.index_time is not None:
            parts.append(self._index_time_field(result.index_time))
        return b"".join(parts)

    def _provider(self, provider_id: str) -> tuple[bytes, bytes]:
        """Build the parts of a provider of the current catalog."""
        assert self._catalog is not None
        info = self._catalog.providers[provider_id]
        summary = pb.ProviderSummary(
            provider_id=info.id,
            display_name=info.display_name,
            specialties=info.specialties,
            languages=info.languages,
        )
        parts = (f"{info.id}_".encode(), _field(_SLOT_PROVIDER, summary.SerializeToString()))
        self._providers[provider_id] = parts
        return parts

    def _location(self, location_id: str) -> _LocationParts:
        """Build the parts of a location of the current catalog."""
        assert self._catalog is not None
        info = self._catalog.locations[location_id]
        summary = pb.LocationSummary(
            location_id=info.id,
            display_name=info.display_name,
            coordinates=types_pb2.GeoPoint(latitude=info.latitude, longitude=info.longitude),
        ).SerializeToString()
        zone_times = self._times.get(info.time_zone)
        if zone_times is None:
            zone_times = self._times[info.time_zone] = {}
        # With a distance, the summary ends with field 4 (its last), so the distance goes
        # after it: `Distance` is a double (tag + 8 bytes) then the unit (tag + 1 byte).
        distance_length = len(_DISTANCE_VALUE) + _DOUBLE.size + len(_DISTANCE_UNIT) + 1
        zero_length = len(_DISTANCE_UNIT) + 1
        parts = (
            _field(_SLOT_LOCATION, summary),
            zone_times,
            _head(_SLOT_LOCATION, len(summary) + 2 + distance_length)
            + summary
            + _head(_LOCATION_DISTANCE, distance_length)
            + _DISTANCE_VALUE,
            _head(_SLOT_LOCATION, len(summary) + 2 + zero_length)
            + summary
            + _head(_LOCATION_DISTANCE, zero_length),
        )
        self._locations[location_id] = parts
        return parts

    def _time_fields(self, location_id: str, start: int, end: int) -> bytes:
        """Fields 4 to 8 of a slot: start and end (UTC and local) and the zone."""
        assert self._catalog is not None
        time_zone = self._catalog.locations[location_id].time_zone
        fields = b"".join(
            (
                _timestamp(_SLOT_START, start),
                _timestamp(_SLOT_END, end),
                _string(_SLOT_LOCAL_START, local_iso(time_zone, start)),
                _string(_SLOT_LOCAL_END, local_iso(time_zone, end)),
                _string(_SLOT_TIME_ZONE, time_zone),
            )
        )
        self._time_count += 1
        if self._time_count > _MAX_CACHED_TIMES:
            for zone_times in self._times.values():
                zone_times.clear()  # the locations hold these dicts: empty them in place
            self._time_count = 1
        self._times[time_zone][(start, end)] = fields
        return fields

    def _index_time_field(self, index_time: datetime) -> bytes:
        cached_time, field = self._index_time
        if cached_time != index_time:
            stamp = timestamp_pb2.Timestamp()
            stamp.FromDatetime(index_time)
            field = _field(_RESPONSE_INDEX_TIME, stamp.SerializeToString())
            self._index_time = (index_time, field)
        return field


def _visit_type_field(visit_type: VisitTypeInfo, minutes: int) -> bytes:
    summary = pb.VisitTypeSummary(
        visit_type_id=visit_type.id,
        display_name=visit_type.display_name,
        duration_minutes=minutes,
    )
    return _field(_SLOT_VISIT_TYPE, summary.SerializeToString())


def _pass_bytes(response: bytes | pb.SearchAvailabilityResponse) -> bytes:
    """The response serializer: encoded bytes go out as they are."""
    if isinstance(response, bytes):
        return response
    return response.SerializeToString()


class _Captured:
    """Stands in for the server while generated code registers a servicer: keeps the
    method handlers it would have added."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers also arrive below, by method name

    def add_registered_method_handlers(
        self, service_name: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.handlers.update(handlers)


def search_registration(service: SearchService) -> Registration:
    """The servicer for `common.grpc_server`; searching needs no signed-in caller.

    Registered as the generated `add_AvailabilityServiceServicer_to_server` does, except
    that `SearchAvailability` answers with the encoder's bytes (no message built and
    serialized again); any other method of the service keeps its generated handler.
    """
    servicer = AvailabilitySearchServicer(service)
    captured = _Captured()
    pb_grpc.add_AvailabilityServiceServicer_to_server(servicer, captured)  # type: ignore[arg-type]
    handlers = dict(captured.handlers)
    handlers[_METHOD] = grpc.unary_unary_rpc_method_handler(
        servicer.search_encoded,
        request_deserializer=pb.SearchAvailabilityRequest.FromString,
        response_serializer=_pass_bytes,
    )

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SEARCH_SERVICE, handlers),)
        )
        # Not in grpc-stubs yet; generated code calls it too.
        server.add_registered_method_handlers(SEARCH_SERVICE, handlers)  # type: ignore[attr-defined, unused-ignore]

    return Registration(
        service_name=SEARCH_SERVICE, register=register, public_methods=frozenset({_METHOD})
    )
