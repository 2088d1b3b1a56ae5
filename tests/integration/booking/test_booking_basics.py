"""Booking through gRPC against real PostgreSQL, Redis and the eligibility service: holds,
bookings with rooms, refusals with every reason, idempotency, reschedule, cancel, workflow."""

from __future__ import annotations

import uuid

import grpc
import grpc.aio
import pytest
from google.protobuf import empty_pb2

from common.auth import Principal
from common.grpc_client import status_details
from medsched.booking.v1 import appointment_pb2, booking_service_pb2
from medsched.common.v1 import types_pb2
from tests.integration.booking.conftest import Booking
from tests.integration.booking.world import ACTIVE_MEMBER, INACTIVE_MEMBER, PLAN

B = booking_service_pb2
A = appointment_pb2.Appointment


def refusal_of(error: grpc.aio.AioRpcError) -> appointment_pb2.BookingRefusal:
    status = status_details(error)
    assert status is not None
    for detail in status.details:
        refusal = appointment_pb2.BookingRefusal()
        if detail.Unpack(refusal):
            return refusal
    raise AssertionError("no BookingRefusal detail")


def reasons(error: grpc.aio.AioRpcError) -> list[str]:
    return [
        appointment_pb2.BookingRefusal.Reason.Name(v.reason) for v in refusal_of(error).violations
    ]


def book_request(
    booking: Booking,
    *,
    provider: int = 0,
    days: int = 2,
    hour: int = 10,
    minute: int = 0,
    visit_type: uuid.UUID | None = None,
    patient: str = "p-1",
    key: str | None = None,
    member: tuple[str, str, str, str] | None = None,
) -> B.BookAppointmentRequest:
    clinic = booking.clinic
    request = B.BookAppointmentRequest(
        slot_id=clinic.slot_id(clinic.providers[provider], clinic.start(days, hour, minute)),
        visit_type_id=str(visit_type or clinic.follow_up),
        patient_id=patient,
        visit_reason="chest pain when climbing stairs",
        idempotency_key=key or str(uuid.uuid4()),
    )
    if member is not None:
        request.insurance_plan_id = PLAN
        request.insurance_member_id = member[0]
        request.patient_demographics.name.family_name = member[1]
        request.patient_demographics.name.given_name = member[2]
        request.patient_demographics.birth_date = member[3]
    return request


async def book(
    booking: Booking, request: B.BookAppointmentRequest, principal: Principal | None = None
) -> A:
    made: A = await booking.call(
        "BookAppointment", request, A, principal or booking.patient(request.patient_id)
    )
    return made


async def test_book_self_pay_then_get_and_list(booking: Booking) -> None:
    request = book_request(booking, visit_type=booking.clinic.exam)
    made = await book(booking, request)
    assert made.status == A.BOOKED
    assert made.visit_reason == "chest pain when climbing stairs"
    assert len(made.reservations) == 1
    assert made.reservations[0].kind == "exam_room"
    assert len(made.confirmation_code) == 6
    got = await booking.call(
        "GetAppointment",
        B.GetAppointmentRequest(appointment_id=made.appointment_id),
        A,
        booking.patient("p-1"),
    )
    assert got == made
    # PHI is ciphertext at rest.
    async with booking.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT visit_reason_enc FROM booking.appointments WHERE id = %s",
            (made.appointment_id,),
        )
        row = await cursor.fetchone()
    assert row is not None
    assert b"chest pain" not in bytes(row[0])
    listed = await booking.call(
        "ListPatientAppointments",
        B.ListPatientAppointmentsRequest(patient_id="p-1"),
        B.ListPatientAppointmentsResponse,
        booking.patient("p-1"),
    )
    assert [a.appointment_id for a in listed.appointments] == [made.appointment_id]


async def test_same_key_same_request_returns_same_appointment(booking: Booking) -> None:
    request = book_request(booking)
    first = await book(booking, request)
    again = await book(booking, request)
    assert again.appointment_id == first.appointment_id
    changed = B.BookAppointmentRequest()
    changed.CopyFrom(request)
    changed.visit_reason = "something else"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await book(booking, changed)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_taken_start_is_refused_with_aborted(booking: Booking) -> None:
    await book(booking, book_request(booking, patient="p-1"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await book(booking, book_request(booking, patient="p-2"))
    assert caught.value.code() == grpc.StatusCode.ABORTED
    assert reasons(caught.value) == ["TAKEN"]


async def test_every_reason_at_once(booking: Booking) -> None:
    clinic = booking.clinic
    # Provider 2 does not accept the plan, the payer does not know member X1 (it answers in
    # about 10 ms, well within the time a refusal waits for it), and 07:00 is outside hours.
    request = book_request(booking, provider=2, hour=7, visit_type=clinic.new_patient)
    request.insurance_plan_id = "otherplan"
    request.insurance_member_id = "X1"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await book(booking, request)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reasons(caught.value) == ["PLAN_NOT_ACCEPTED", "ELIGIBILITY_NOT_FOUND", "NOT_OFFERED"]


async def test_eligibility_active_and_inactive(booking: Booking) -> None:
    made = await book(booking, book_request(booking, member=ACTIVE_MEMBER))
    assert made.status == A.BOOKED
    assert made.eligibility.check_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await book(booking, book_request(booking, hour=11, member=INACTIVE_MEMBER))
    assert reasons(caught.value) == ["ELIGIBILITY_INACTIVE"]
    async with booking.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM booking.appointments WHERE start_time = %s",
            (booking.clinic.start(2, 11),),
        )
        row = await cursor.fetchone()
    assert row == (0,)


async def test_hold_blocks_others_then_owner_books(booking: Booking) -> None:
    clinic = booking.clinic
    start = clinic.start(3, 9)
    hold = await booking.call(
        "HoldSlot",
        B.HoldSlotRequest(
            slot_id=clinic.slot_id(clinic.providers[0], start),
            visit_type_id=str(clinic.exam),
            patient_id="p-1",
        ),
        appointment_pb2.Hold,
        booking.patient("p-1"),
    )
    assert len(hold.slot_ids) == 2
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await book(booking, book_request(booking, days=3, hour=9, patient="p-2"))
    assert reasons(caught.value) == ["HELD_BY_OTHER"]
    request = book_request(booking, days=3, hour=9, visit_type=clinic.exam)
    request.hold_id = hold.hold_id
    made = await book(booking, request)
    assert made.status == A.BOOKED
    await booking.call(
        "ReleaseHold",
        B.ReleaseHoldRequest(hold_id=hold.hold_id),
        empty_pb2.Empty,
        booking.patient("p-1"),
    )


async def test_reschedule_and_cancel_free_the_time(booking: Booking) -> None:
    clinic = booking.clinic
    made = await book(booking, book_request(booking, visit_type=clinic.exam))
    moved = await booking.call(
        "RescheduleAppointment",
        B.RescheduleAppointmentRequest(
            appointment_id=made.appointment_id,
            slot_id=clinic.slot_id(clinic.providers[0], clinic.start(2, 10, 15)),
            idempotency_key=str(uuid.uuid4()),
            etag=made.etag,
        ),
        A,
        booking.patient("p-1"),
    )
    assert moved.appointment_id == made.appointment_id
    assert moved.start_time.ToSeconds() == made.start_time.ToSeconds() + 900
    # The old 10:00 granule is free again: another patient can take it.
    other = await book(booking, book_request(booking, patient="p-2"))
    assert other.status == A.BOOKED
    cancelled = await booking.call(
        "CancelAppointment",
        B.CancelAppointmentRequest(
            appointment_id=moved.appointment_id,
            cancellation_reason=appointment_pb2.PATIENT_REQUEST,
        ),
        A,
        booking.patient("p-1"),
    )
    assert cancelled.status == A.CANCELLED
    async with booking.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM booking.reservations WHERE appointment_id = %s"
            " AND released_at IS NULL",
            (made.appointment_id,),
        )
        assert await cursor.fetchone() == (0,)


async def test_other_patient_sees_nothing(booking: Booking) -> None:
    made = await book(booking, book_request(booking))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await booking.call(
            "GetAppointment",
            B.GetAppointmentRequest(appointment_id=made.appointment_id),
            A,
            booking.patient("p-2"),
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "chest" not in (caught.value.details() or "")


async def test_workflow_check_in_complete(booking: Booking) -> None:
    made = await book(booking, book_request(booking))
    staff = booking.staff()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await booking.call(
            "CheckInAppointment",
            B.CheckInAppointmentRequest(appointment_id=made.appointment_id),
            A,
            booking.patient("p-1"),
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    checked_in = await booking.call(
        "CheckInAppointment",
        B.CheckInAppointmentRequest(appointment_id=made.appointment_id),
        A,
        staff,
    )
    assert checked_in.status == A.CHECKED_IN
    done = await booking.call(
        "CompleteAppointment",
        B.CompleteAppointmentRequest(appointment_id=made.appointment_id),
        A,
        staff,
    )
    assert done.status == A.COMPLETED
    assert done.booked_by == types_pb2.PATIENT
