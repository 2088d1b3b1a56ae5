"""The gRPC `BookingService`: requests to commands (every bad field reported at once), answers
to messages. A refused start time travels as a `BookingRefusal` detail beside the ErrorInfo;
other domain errors are mapped once by the server bootstrap.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import grpc.aio
from google.protobuf import empty_pb2

from booking_svc.checks import slot_id
from booking_svc.domain import (
    BookCommand,
    HoldCommand,
    Move,
    RescheduleCommand,
    Status,
    Target,
    check_free_text,
    check_idempotency_key,
    check_insurance,
    check_patient_id,
    check_person_name,
    parse_uuid,
)
from booking_svc.holds import HoldRecord
from booking_svc.service import BookingService
from common.auth import Principal
from common.crypto import BlindIndex
from common.errors import Unauthenticated, ViolationCollector
from common.grpc_server import current_deadline, current_principal
from common.slot_ids import parse_slot_id
from medsched.booking.v1 import appointment_pb2, booking_service_pb2, booking_service_pb2_grpc
from medsched.common.v1 import types_pb2

Context = grpc.aio.ServicerContext[Any, Any]
T = TypeVar("T")
B = booking_service_pb2
_MAX_PAGE = 100
_DEFAULT_PAGE = 20


class BookingServicer(booking_service_pb2_grpc.BookingServiceServicer):
    def __init__(self, service: Callable[[], BookingService], blind_index: BlindIndex) -> None:
        self._service = service
        self._blind = blind_index

    # ---- holds ------------------------------------------------------------------------

    async def HoldSlot(self, request: B.HoldSlotRequest, context: Context) -> appointment_pb2.Hold:  # noqa: N802
        errors = ViolationCollector()
        target = _target(request, errors)
        visit_type = parse_uuid(request.visit_type_id, "visit_type_id", errors)
        patient = check_patient_id(request.patient_id, "patient_id", errors)
        ttl = request.ttl.ToTimedelta() if request.HasField("ttl") else timedelta(0)
        errors.check(ttl >= timedelta(0), "ttl", "must not be negative")
        errors.raise_if_any()
        assert target is not None
        assert visit_type is not None
        command = HoldCommand(target=target, visit_type_id=visit_type, patient_id=patient, ttl=ttl)
        record = await self._service().hold(command, _principal())
        return hold_message(record)

    async def ReleaseHold(self, request: B.ReleaseHoldRequest, context: Context) -> empty_pb2.Empty:  # noqa: N802
        errors = ViolationCollector()
        hold_id = parse_uuid(request.hold_id, "hold_id", errors)
        errors.raise_if_any()
        assert hold_id is not None
        await self._service().release_hold(hold_id, _principal())
        return empty_pb2.Empty()

    # ---- booking ------------------------------------------------------------------------

    async def BookAppointment(  # noqa: N802
        self, request: B.BookAppointmentRequest, context: Context
    ) -> appointment_pb2.Appointment:
        errors = ViolationCollector()
        target = _target(request, errors)
        visit_type = parse_uuid(request.visit_type_id, "visit_type_id", errors)
        patient = check_patient_id(request.patient_id, "patient_id", errors)
        check_free_text(request.visit_reason, "visit_reason", errors)
        plan, payer, member = check_insurance(
            request.insurance_plan_id,
            request.insurance_payer_id,
            request.insurance_member_id,
            errors,
        )
        key = check_idempotency_key(request.idempotency_key, "idempotency_key", errors)
        _check_demographics(request.patient_demographics, "patient_demographics", errors)
        _check_demographics(request.subscriber_demographics, "subscriber_demographics", errors)
        resources = _resource_ids(request.resource_ids, errors)
        hold_id = parse_uuid(request.hold_id, "hold_id", errors, required=False)
        errors.raise_if_any()
        assert target is not None
        assert visit_type is not None
        command = BookCommand(
            target=target,
            visit_type_id=visit_type,
            patient_id=patient,
            idempotency_key=key,
            request_digest=self._digest(request),
            visit_reason=request.visit_reason,
            insurance_plan_id=plan,
            insurance_payer_id=payer,
            insurance_member_id=member,
            demographics=request.patient_demographics.SerializeToString(deterministic=True)
            if request.HasField("patient_demographics")
            else b"",
            subscriber_demographics=request.subscriber_demographics.SerializeToString(
                deterministic=True
            )
            if request.HasField("subscriber_demographics")
            else b"",
            resource_ids=resources,
            hold_id=hold_id,
        )
        return await self._service().book(command, _principal(), deadline=current_deadline())

    def _digest(self, request: Any) -> bytes:
        # A keyed hash of the whole request: recognises a changed retry without keeping PHI.
        encoded = base64.b64encode(request.SerializeToString(deterministic=True)).decode()
        return self._blind.digest(encoded or "-", purpose="booking.request")

    async def GetAppointment(  # noqa: N802
        self, request: B.GetAppointmentRequest, context: Context
    ) -> appointment_pb2.Appointment:
        appointment = _appointment_id(request.appointment_id)
        return await self._service().get(appointment, _principal())

    async def RescheduleAppointment(  # noqa: N802
        self, request: B.RescheduleAppointmentRequest, context: Context
    ) -> appointment_pb2.Appointment:
        errors = ViolationCollector()
        appointment = parse_uuid(request.appointment_id, "appointment_id", errors)
        target = _target(request, errors)
        key = check_idempotency_key(request.idempotency_key, "idempotency_key", errors)
        resources = _resource_ids(request.resource_ids, errors)
        hold_id = parse_uuid(request.hold_id, "hold_id", errors, required=False)
        errors.raise_if_any()
        assert appointment is not None
        assert target is not None
        command = RescheduleCommand(
            appointment_id=appointment,
            target=target,
            idempotency_key=key,
            request_digest=self._digest(request),
            etag=request.etag,
            resource_ids=resources,
            hold_id=hold_id,
        )
        return await self._service().reschedule(command, _principal())

    async def CancelAppointment(  # noqa: N802
        self, request: B.CancelAppointmentRequest, context: Context
    ) -> appointment_pb2.Appointment:
        errors = ViolationCollector()
        appointment = parse_uuid(request.appointment_id, "appointment_id", errors)
        reason = request.cancellation_reason
        errors.check(
            reason != appointment_pb2.CANCELLATION_REASON_UNSPECIFIED
            and reason in appointment_pb2.CancellationReason.values(),
            "cancellation_reason",
            "is required (e.g. PATIENT_REQUEST)",
        )
        check_free_text(request.cancellation_note, "cancellation_note", errors)
        errors.raise_if_any()
        assert appointment is not None
        return await self._service().cancel(
            appointment, reason, request.cancellation_note, request.etag, _principal()
        )

    async def CheckInAppointment(  # noqa: N802
        self, request: B.CheckInAppointmentRequest, context: Context
    ) -> appointment_pb2.Appointment:
        return await self._move(context, request.appointment_id, Move.CHECK_IN, request.etag)

    async def CompleteAppointment(  # noqa: N802
        self, request: B.CompleteAppointmentRequest, context: Context
    ) -> appointment_pb2.Appointment:
        return await self._move(context, request.appointment_id, Move.COMPLETE, request.etag)

    async def MarkNoShow(  # noqa: N802
        self, request: B.MarkNoShowRequest, context: Context
    ) -> appointment_pb2.Appointment:
        return await self._move(context, request.appointment_id, Move.NO_SHOW, request.etag)

    async def _move(
        self, context: Context, appointment_id: str, move: Move, etag: str
    ) -> appointment_pb2.Appointment:
        appointment = _appointment_id(appointment_id)
        return await self._service().move(appointment, move, etag, _principal())

    # ---- lists --------------------------------------------------------------------------

    async def ListProviderDay(  # noqa: N802
        self, request: B.ListProviderDayRequest, context: Context
    ) -> B.ListProviderDayResponse:
        errors = ViolationCollector()
        org = parse_uuid(request.organization_id, "organization_id", errors)
        provider = parse_uuid(request.provider_id, "provider_id", errors)
        day = _date(request.date, "date", errors)
        errors.raise_if_any()
        assert org is not None
        assert provider is not None
        assert day is not None
        found = await self._service().list_provider_day(
            org, provider, day, request.include_cancelled, _principal()
        )
        return B.ListProviderDayResponse(appointments=found)

    async def ListResourceDay(  # noqa: N802
        self, request: B.ListResourceDayRequest, context: Context
    ) -> B.ListResourceDayResponse:
        errors = ViolationCollector()
        org = parse_uuid(request.organization_id, "organization_id", errors)
        resource = parse_uuid(request.resource_id, "resource_id", errors)
        day = _date(request.date, "date", errors)
        errors.raise_if_any()
        assert org is not None
        assert resource is not None
        assert day is not None
        found = await self._service().list_resource_day(
            org, resource, day, request.include_cancelled, _principal()
        )
        return B.ListResourceDayResponse(appointments=found)

    async def ListPatientAppointments(  # noqa: N802
        self, request: B.ListPatientAppointmentsRequest, context: Context
    ) -> B.ListPatientAppointmentsResponse:
        errors = ViolationCollector()
        patient = check_patient_id(request.patient_id, "patient_id", errors)
        size = request.page_size or _DEFAULT_PAGE
        errors.check(1 <= size <= _MAX_PAGE, "page_size", f"must be 1 to {_MAX_PAGE}")
        org = parse_uuid(request.organization_id, "organization_id", errors, required=False)
        statuses = []
        for i, value in enumerate(request.statuses):
            name = (
                appointment_pb2.Appointment.Status.Name(value)
                if value in appointment_pb2.Appointment.Status.values()
                else ""
            )
            if not name or value == appointment_pb2.Appointment.STATUS_UNSPECIFIED:
                errors.add(f"statuses[{i}]", "is not an appointment status")
            else:
                statuses.append(Status(name))
        start = (
            request.start_time.ToDatetime(tzinfo=UTC) if request.HasField("start_time") else None
        )
        end = request.end_time.ToDatetime(tzinfo=UTC) if request.HasField("end_time") else None
        if start is not None and end is not None:
            errors.check(end > start, "end_time", "must be after start_time")
        errors.raise_if_any()
        found, token = await self._service().list_patient(
            patient,
            page_size=size,
            page_token=request.page_token,
            start=start,
            end=end,
            statuses=statuses,
            organization_id=org,
            principal=_principal(),
        )
        return B.ListPatientAppointmentsResponse(appointments=found, next_page_token=token)


# ---- request parsing ---------------------------------------------------------------------


def _target(request: Any, errors: ViolationCollector) -> Target | None:
    which = request.WhichOneof("target")
    if which == "slot_id":
        try:
            slot_provider, start = parse_slot_id(request.slot_id)
        except ValueError:
            errors.add("slot_id", "is not a slot id (<provider id>_<YYYYMMDDTHHMMZ>)")
            return None
        return Target(provider_id=uuid.UUID(slot_provider), start=start)
    if which == "slot_start":
        slot = request.slot_start
        provider = parse_uuid(slot.provider_id, "slot_start.provider_id", errors)
        location = parse_uuid(slot.location_id, "slot_start.location_id", errors)
        if not slot.HasField("start_time"):
            errors.add("slot_start.start_time", "is required")
            return None
        if provider is None or location is None:
            return None
        return Target(
            provider_id=provider,
            location_id=location,
            start=slot.start_time.ToDatetime(tzinfo=UTC),
        )
    errors.add("slot_id", "is required (or slot_start)")
    return None


def _resource_ids(values: Sequence[str], errors: ViolationCollector) -> tuple[uuid.UUID, ...]:
    found = []
    for i, value in enumerate(values):
        parsed = parse_uuid(value, f"resource_ids[{i}]", errors)
        if parsed is not None:
            found.append(parsed)
    if len(set(found)) != len(found):
        errors.add("resource_ids", "must not repeat a resource")
    return tuple(found)


def _check_demographics(
    value: types_pb2.PatientDemographics, path: str, errors: ViolationCollector
) -> None:
    if value.birth_date:
        _date(value.birth_date, f"{path}.birth_date", errors)
    for name in ("family_name", "given_name"):
        check_person_name(getattr(value.name, name), f"{path}.name.{name}", errors)


def _date(text: str, path: str, errors: ViolationCollector) -> date | None:
    if not text:
        errors.add(path, "is required (YYYY-MM-DD)")
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        errors.add(path, "must be a date, YYYY-MM-DD")
        return None


def _appointment_id(value: str) -> uuid.UUID:
    errors = ViolationCollector()
    parsed = parse_uuid(value, "appointment_id", errors)
    errors.raise_if_any()
    assert parsed is not None
    return parsed


def _principal() -> Principal:
    principal = current_principal()
    if principal is None:
        raise Unauthenticated("this method needs an authenticated caller")
    return principal


# ---- answers -----------------------------------------------------------------------------


def hold_message(record: HoldRecord) -> appointment_pb2.Hold:
    provider = uuid.UUID(record.provider_id)
    message = appointment_pb2.Hold(
        hold_id=str(record.hold_id),
        organization_id=record.organization_id,
        patient_id=record.patient_id,
        provider_id=record.provider_id,
        location_id=record.location_id,
        visit_type_id=record.visit_type_id,
        slot_ids=[slot_id(provider, datetime.fromtimestamp(s, UTC)) for s in record.starts],
    )
    message.start_time.FromSeconds(record.starts[0])
    message.end_time.FromSeconds(record.end)
    message.expire_time.FromDatetime(record.expire_time)
    return message
