"""Protobuf shapes of booking's rows: appointments for callers, placements and slot spans for
events. Pure conversions; PHI is decrypted only in `appointment_message`, for callers the
service has already authorized.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from booking_svc import store
from booking_svc.checks import Checked, slot_id
from booking_svc.domain import Status, etag_of
from common.auth import Role
from common.crypto import FieldCipher, field_context
from medsched.booking.v1 import appointment_pb2
from medsched.common.v1 import types_pb2
from medsched.eligibility.v1 import eligibility_pb2
from medsched.events.v1 import appointment_events_pb2, slot_events_pb2

ACTOR = {
    Role.PATIENT: types_pb2.PATIENT,
    Role.STAFF: types_pb2.STAFF,
    Role.ADMIN: types_pb2.ADMIN,
    Role.SERVICE: types_pb2.SYSTEM,
}
STATUS_PB = {
    Status.BOOKED: appointment_pb2.Appointment.BOOKED,
    Status.PENDING_VERIFICATION: appointment_pb2.Appointment.PENDING_VERIFICATION,
    Status.CHECKED_IN: appointment_pb2.Appointment.CHECKED_IN,
    Status.COMPLETED: appointment_pb2.Appointment.COMPLETED,
    Status.NO_SHOW: appointment_pb2.Appointment.NO_SHOW,
    Status.CANCELLED: appointment_pb2.Appointment.CANCELLED,
}


def appointment_message(
    row: store.AppointmentRow,
    reservations: Sequence[store.ReservationRow],
    cipher: FieldCipher,
) -> appointment_pb2.Appointment:
    """The `Appointment` of a row, its PHI decrypted (for an authorized caller only)."""

    def dec(column: str, blob: bytes | None) -> bytes:
        if not blob:
            return b""
        return cipher.decrypt(blob, context=field_context(f"booking.appointments.{column}", row.id))

    message = appointment_pb2.Appointment(
        appointment_id=str(row.id),
        organization_id=str(row.organization_id),
        patient_id=row.patient_id,
        provider_id=str(row.provider_id),
        location_id=str(row.location_id),
        visit_type_id=str(row.visit_type_id),
        slot_id=slot_id(row.provider_id, row.start_time),
        local_start_time=row.start_time.astimezone(ZoneInfo(row.time_zone)).isoformat(),
        time_zone=row.time_zone,
        status=STATUS_PB[Status(row.status)],
        visit_reason=dec("visit_reason", row.visit_reason_enc).decode(),
        insurance_plan_id=row.insurance_plan_id,
        insurance_payer_id=row.insurance_payer_id,
        insurance_member_id=dec("member_id", row.member_id_enc).decode(),
        cancellation_note=dec("cancellation_note", row.cancellation_note_enc).decode(),
        confirmation_code=row.confirmation_code,
        booked_by=types_pb2.ActorRole.Value(row.booked_by),
        etag=etag_of(row.version),
    )
    message.start_time.FromDatetime(row.start_time)
    message.end_time.FromDatetime(row.end_time)
    message.create_time.FromDatetime(row.created_at)
    message.update_time.FromDatetime(row.updated_at)
    if row.cancellation_reason:
        message.cancellation_reason = appointment_pb2.CancellationReason.Value(
            row.cancellation_reason
        )
    demographics = dec("demographics", row.demographics_enc)
    if demographics:
        message.patient_demographics.ParseFromString(demographics)
    if row.eligibility_check_id or row.eligibility_status:
        summary = message.eligibility
        summary.check_id = row.eligibility_check_id
        if row.eligibility_status:
            summary.status = eligibility_pb2.EligibilityStatus.Value(row.eligibility_status)
        if row.eligibility_verified_at is not None:
            summary.verify_time.FromDatetime(row.eligibility_verified_at)
        if row.next_check_at is not None:
            summary.next_check_time.FromDatetime(row.next_check_at)
    for r in reservations:
        if r.resource_type == "PROVIDER":
            continue
        item = message.reservations.add(
            resource_id=str(r.resource_id),
            category=types_pb2.ResourceCategory.Value(r.resource_type),
            kind=r.kind,
        )
        item.start_time.FromDatetime(r.start)
        item.end_time.FromDatetime(r.end)
    return message


def placement_granules(
    provider_id: uuid.UUID, granules: Sequence[tuple[datetime, datetime, int]]
) -> list[slot_events_pb2.Granule]:
    out = []
    for start, end, version in granules:
        g = slot_events_pb2.Granule(slot_id=slot_id(provider_id, start), version=version)
        g.start_time.FromDatetime(start)
        g.end_time.FromDatetime(end)
        out.append(g)
    return out


def spans(rows: Sequence[store.ReservationRow]) -> list[slot_events_pb2.ResourceSpan]:
    spans = []
    # One order everywhere (category, kind, id), so a placement reads the same in every event.
    for r in sorted(rows, key=lambda r: (r.resource_type, r.kind, str(r.resource_id))):
        if r.resource_type == "PROVIDER":
            continue
        span = slot_events_pb2.ResourceSpan(resource_id=str(r.resource_id))
        span.start_time.FromDatetime(r.start)
        span.end_time.FromDatetime(r.end)
        spans.append(span)
    return spans


def placement_of_check(
    checked: Checked,
    granules: Sequence[tuple[datetime, datetime, int]],
    reserved: Sequence[store.ReservationRow],
) -> appointment_events_pb2.AppointmentPlacement:
    placement = appointment_events_pb2.AppointmentPlacement(
        provider_id=str(checked.provider_id),
        location_id=str(checked.location_id),
        time_zone=checked.time_zone,
        slot_ids=[slot_id(checked.provider_id, g[0]) for g in granules],
        resources=spans(reserved),
    )
    placement.start_time.FromDatetime(checked.start)
    placement.end_time.FromDatetime(checked.end)
    return placement


def placement_of_row(
    row: store.AppointmentRow,
    granules: Sequence[tuple[datetime, datetime]],
    released: Sequence[store.ReservationRow],
) -> appointment_events_pb2.AppointmentPlacement:
    placement = appointment_events_pb2.AppointmentPlacement(
        provider_id=str(row.provider_id),
        location_id=str(row.location_id),
        time_zone=row.time_zone,
        slot_ids=[slot_id(row.provider_id, g[0]) for g in granules],
        resources=spans(released),
    )
    placement.start_time.FromDatetime(row.start_time)
    placement.end_time.FromDatetime(row.end_time)
    return placement


def freed_event(
    row: store.AppointmentRow,
    granules: Sequence[tuple[datetime, datetime, int]],
    released: Sequence[store.ReservationRow],
    cause: slot_events_pb2.SlotFreed.Cause.ValueType,
) -> slot_events_pb2.SlotFreed:
    freed = slot_events_pb2.SlotFreed(
        provider_id=str(row.provider_id),
        location_id=str(row.location_id),
        granules=placement_granules(row.provider_id, granules),
        resources=spans(released),
        cause=cause,
        appointment_id=str(row.id),
        visit_type_id=str(row.visit_type_id),
    )
    if granules:
        freed.start_time.FromDatetime(granules[0][0])
        freed.end_time.FromDatetime(granules[-1][1])
    return freed
