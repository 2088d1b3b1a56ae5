"""Booking flows beyond the basics, through gRPC against real PostgreSQL, Redis and the
eligibility service: chosen rooms and equipment, contention for the last room, reschedules
and their events, the status workflow's edges, holds, PENDING_VERIFICATION, schedule
conflicts, the lists, validation, and PHI kept out of logs and events."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import empty_pb2
from google.rpc import error_details_pb2  # type: ignore[import-untyped, unused-ignore]

from booking_svc.holds import HoldStore
from booking_svc.service import BookingConfig
from common.auth import Principal, Role
from common.grpc_client import status_details
from deploy.certs import DevPki
from medsched.booking.v1 import appointment_pb2, booking_service_pb2
from medsched.common.v1 import types_pb2
from medsched.eligibility.v1 import eligibility_pb2
from medsched.events.v1 import envelope_pb2, slot_events_pb2
from tests.integration.booking.conftest import Booking, running_booking
from tests.integration.booking.test_booking_basics import book, book_request, reasons
from tests.integration.booking.world import (
    ACTIVE_MEMBER,
    INACTIVE_MEMBER,
    PAYER_ID,
    ZONE,
    outbox_events,
    outbox_position,
)

B = booking_service_pb2
A = appointment_pb2.Appointment
SERVICE = Principal(subject="svc-waitlist", role=Role.SERVICE)


# ---- helpers --------------------------------------------------------------------------------


def error_reasons(error: grpc.aio.AioRpcError) -> list[str]:
    """ErrorInfo reasons and PreconditionFailure types of an error's status."""
    status = status_details(error)
    assert status is not None
    found: list[str] = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            found.append(info.reason)
        failure = error_details_pb2.PreconditionFailure()
        if detail.Unpack(failure):
            found.extend(v.type for v in failure.violations)
    return found


def bad_fields(error: grpc.aio.AioRpcError) -> set[str]:
    status = status_details(error)
    assert status is not None
    fields: set[str] = set()
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields.update(v.field for v in bad.field_violations)
    return fields


async def refused(coro: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await coro
    return caught.value


async def rows(booking: Booking, query: str, *args: object) -> list[tuple[Any, ...]]:
    async with booking.pool.connection() as conn:
        cursor = await conn.execute(query, args)
        return list(await cursor.fetchall())


async def granules(booking: Booking, provider: uuid.UUID, *starts: datetime) -> list[str]:
    found = await rows(
        booking,
        "SELECT status FROM availability.slots WHERE provider_id = %s AND start_time = ANY(%s)"
        " ORDER BY start_time",
        provider,
        list(starts),
    )
    return [r[0] for r in found]


def events_of(envelopes: list[envelope_pb2.EventEnvelope], kind: str) -> list[Any]:
    return [getattr(e, kind) for e in envelopes if e.WhichOneof("payload") == kind]


def hold_request(
    booking: Booking,
    *,
    provider: int = 0,
    days: int = 3,
    hour: int = 9,
    minute: int = 0,
    visit_type: uuid.UUID | None = None,
    patient: str = "p-1",
) -> B.HoldSlotRequest:
    clinic = booking.clinic
    return B.HoldSlotRequest(
        slot_id=clinic.slot_id(clinic.providers[provider], clinic.start(days, hour, minute)),
        visit_type_id=str(visit_type or clinic.exam),
        patient_id=patient,
    )


async def hold(
    booking: Booking, request: B.HoldSlotRequest, principal: Principal | None = None
) -> appointment_pb2.Hold:
    made: appointment_pb2.Hold = await booking.call(
        "HoldSlot", request, appointment_pb2.Hold, principal or booking.patient(request.patient_id)
    )
    return made


async def cancel(booking: Booking, appointment_id: str, principal: Principal, etag: str = "") -> A:
    done: A = await booking.call(
        "CancelAppointment",
        B.CancelAppointmentRequest(
            appointment_id=appointment_id,
            cancellation_reason=appointment_pb2.PATIENT_REQUEST,
            etag=etag,
        ),
        A,
        principal,
    )
    return done


async def reschedule(booking: Booking, made: A, slot: str, principal: Principal | None = None) -> A:
    moved: A = await booking.call(
        "RescheduleAppointment",
        B.RescheduleAppointmentRequest(
            appointment_id=made.appointment_id,
            slot_id=slot,
            idempotency_key=str(uuid.uuid4()),
            etag=made.etag,
        ),
        A,
        principal or booking.patient(made.patient_id),
    )
    return moved


async def move_into_past(booking: Booking, appointment_id: str) -> None:
    """Shift an appointment's recorded time to yesterday (its start has passed)."""
    async with booking.pool.connection() as conn:
        await conn.execute(
            "UPDATE booking.appointments SET start_time = start_time - interval '3 days',"
            " end_time = end_time - interval '3 days' WHERE id = %s",
            (appointment_id,),
        )


# ---- rooms and equipment --------------------------------------------------------------------


async def test_explicit_resources_good_wrong_kind_other_site_and_busy(booking: Booking) -> None:
    clinic = booking.clinic
    room_a0, room_a1 = clinic.exam_rooms_a
    request = book_request(booking, visit_type=clinic.exam)
    request.resource_ids.append(str(room_a1))
    made = await book(booking, request)
    assert [r.resource_id for r in made.reservations] == [str(room_a1)]
    position = await outbox_position(booking.pool)
    for bad in (clinic.ultrasound_a, clinic.exam_room_b):
        wrong = book_request(booking, provider=1, hour=11, visit_type=clinic.exam, patient="p-2")
        wrong.resource_ids.append(str(bad))
        error = await refused(book(booking, wrong))
        assert error.code() == grpc.StatusCode.ABORTED
        assert reasons(error) == ["RESOURCE_UNAVAILABLE"]
        assert str(bad) in (error.details() or "")
    busy = book_request(booking, provider=1, visit_type=clinic.exam, patient="p-2")
    busy.resource_ids.append(str(room_a1))
    error = await refused(book(booking, busy))
    assert reasons(error) == ["RESOURCE_UNAVAILABLE"]
    # Nothing was kept from the refusals.
    assert await outbox_position(booking.pool) == position
    assert await rows(booking, "SELECT count(*) FROM booking.appointments") == [(1,)]
    # Without the choice, medsched picks the other room for the same time.
    other = await book(
        booking, book_request(booking, provider=1, visit_type=clinic.exam, patient="p-2")
    )
    assert [r.resource_id for r in other.reservations] == [str(room_a0)]
    # Naming two rooms for a visit that needs one is refused too.
    two = book_request(booking, hour=12, visit_type=clinic.exam)
    two.resource_ids.extend([str(room_a0), str(room_a1)])
    assert reasons(await refused(book(booking, two))) == ["RESOURCE_UNAVAILABLE"]


async def test_ultrasound_reserves_a_room_and_the_ultrasound(booking: Booking) -> None:
    clinic = booking.clinic
    made = await book(booking, book_request(booking, visit_type=clinic.ultrasound))
    kinds = {(r.kind, r.category) for r in made.reservations}
    assert kinds == {("exam_room", types_pb2.ROOM), ("ultrasound", types_pb2.EQUIPMENT)}
    assert all(
        r.start_time == made.start_time and r.end_time == made.end_time for r in made.reservations
    )
    # The only ultrasound is taken: provider 1 cannot do an ultrasound visit at 10:15.
    error = await refused(
        book(
            booking,
            book_request(
                booking, provider=1, minute=15, visit_type=clinic.ultrasound, patient="p-2"
            ),
        )
    )
    assert error.code() == grpc.StatusCode.ABORTED
    refusal = [v for v in _refusal(error).violations]
    assert [v.resource_kind for v in refusal] == ["ultrasound"]
    # An exam (room only) still fits: the second room is free.
    exam = await book(
        booking, book_request(booking, provider=1, minute=15, visit_type=clinic.exam, patient="p-2")
    )
    assert exam.status == A.BOOKED


def _refusal(error: grpc.aio.AioRpcError) -> appointment_pb2.BookingRefusal:
    status = status_details(error)
    assert status is not None
    for detail in status.details:
        refusal = appointment_pb2.BookingRefusal()
        if detail.Unpack(refusal):
            return refusal
    raise AssertionError("no BookingRefusal")


async def test_two_providers_contend_for_the_last_exam_room(booking: Booking) -> None:
    clinic = booking.clinic
    async with booking.pool.connection() as conn:
        await conn.execute(
            "UPDATE availability.resources SET active = false WHERE id = %s",
            (clinic.exam_rooms_a[0],),
        )
    results = await asyncio.gather(
        book(booking, book_request(booking, provider=0, visit_type=clinic.exam, patient="p-1")),
        book(booking, book_request(booking, provider=1, visit_type=clinic.exam, patient="p-2")),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, A)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1, results
    assert len(lost) == 1, results
    assert [r.resource_id for r in won[0].reservations] == [str(clinic.exam_rooms_a[1])]
    assert lost[0].code() == grpc.StatusCode.ABORTED
    assert reasons(lost[0]) == ["RESOURCE_UNAVAILABLE"]
    # The loser's provider time stays open.
    loser = 1 if won[0].provider_id == str(clinic.providers[0]) else 0
    assert await granules(booking, clinic.providers[loser], clinic.start(2, 10)) == ["OPEN"]


# ---- reschedule -----------------------------------------------------------------------------


async def test_reschedule_to_another_provider_frees_the_old_time(booking: Booking) -> None:
    clinic = booking.clinic
    made = await book(booking, book_request(booking, visit_type=clinic.exam))
    position = await outbox_position(booking.pool)
    new_start = clinic.start(2, 11)
    moved = await reschedule(booking, made, clinic.slot_id(clinic.providers[1], new_start))
    assert moved.appointment_id == made.appointment_id
    assert moved.provider_id == str(clinic.providers[1])
    assert moved.etag != made.etag
    assert len(moved.reservations) == 1
    old = clinic.start(2, 10), clinic.start(2, 10, 15)
    assert await granules(booking, clinic.providers[0], *old) == ["OPEN", "OPEN"]
    assert await granules(
        booking, clinic.providers[1], new_start, new_start + timedelta(minutes=15)
    ) == ["BOOKED", "BOOKED"]
    events = await outbox_events(booking.pool, position)
    [rescheduled] = events_of(events, "appointment_rescheduled")
    assert rescheduled.previous_placement.provider_id == str(clinic.providers[0])
    assert rescheduled.placement.provider_id == str(clinic.providers[1])
    assert rescheduled.rescheduled_by == types_pb2.PATIENT
    [freed] = events_of(events, "slot_freed")
    assert freed.cause == slot_events_pb2.SlotFreed.RESCHEDULE
    assert freed.provider_id == str(clinic.providers[0])
    assert [g.slot_id for g in freed.granules] == [
        clinic.slot_id(clinic.providers[0], s) for s in old
    ]
    assert len(freed.resources) == 1
    [booked] = events_of(events, "slots_booked")
    assert booked.provider_id == str(clinic.providers[1])
    assert len(booked.granules) == 2


async def test_reschedule_overlapping_keeps_the_shared_granule_booked(booking: Booking) -> None:
    clinic = booking.clinic
    provider = clinic.providers[0]
    made = await book(booking, book_request(booking, visit_type=clinic.exam))
    versions_before = dict(
        await rows(
            booking,
            "SELECT start_time, version FROM availability.slots WHERE provider_id = %s"
            " AND start_time = ANY(%s)",
            provider,
            [clinic.start(2, 10), clinic.start(2, 10, 15)],
        )
    )
    position = await outbox_position(booking.pool)
    moved = await reschedule(booking, made, clinic.slot_id(provider, clinic.start(2, 10, 15)))
    assert moved.start_time.ToDatetime(tzinfo=UTC) == clinic.start(2, 10, 15)
    starts = clinic.start(2, 10), clinic.start(2, 10, 15), clinic.start(2, 10, 30)
    assert await granules(booking, provider, *starts) == ["OPEN", "BOOKED", "BOOKED"]
    events = await outbox_events(booking.pool, position)
    [freed] = events_of(events, "slot_freed")
    assert [g.slot_id for g in freed.granules] == [clinic.slot_id(provider, starts[0])]
    [booked] = events_of(events, "slots_booked")
    assert [g.slot_id for g in booked.granules] == [clinic.slot_id(provider, s) for s in starts[1:]]
    shared = booked.granules[0]
    assert shared.version > versions_before[starts[1]]
    live = await rows(
        booking,
        "SELECT resource_type, lower(during) FROM booking.reservations"
        " WHERE appointment_id = %s AND released_at IS NULL ORDER BY 1",
        made.appointment_id,
    )
    assert live == [("PROVIDER", starts[1]), ("ROOM", starts[1])]


# ---- the status workflow's edges -----------------------------------------------------------


async def test_patient_cannot_cancel_after_the_start_but_staff_can(booking: Booking) -> None:
    made = await book(booking, book_request(booking))
    await move_into_past(booking, made.appointment_id)
    error = await refused(cancel(booking, made.appointment_id, booking.patient("p-1")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "APPOINTMENT_STATUS" in error_reasons(error)
    done = await cancel(booking, made.appointment_id, booking.staff())
    assert done.status == A.CANCELLED
    assert done.cancellation_reason == appointment_pb2.PATIENT_REQUEST


async def test_cancelling_twice_returns_it_unchanged(booking: Booking) -> None:
    made = await book(booking, book_request(booking))
    first = await cancel(booking, made.appointment_id, booking.staff())
    position = await outbox_position(booking.pool)
    again = await cancel(booking, made.appointment_id, booking.patient("p-1"), etag=made.etag)
    assert again == first
    assert await outbox_position(booking.pool) == position
    [cancelled] = events_of(await outbox_events(booking.pool), "appointment_cancelled")
    assert cancelled.cancelled_by == types_pb2.STAFF


async def test_stale_etag_is_aborted_with_etag_mismatch(booking: Booking) -> None:
    made = await book(booking, book_request(booking))
    checked_in: A = await booking.call(
        "CheckInAppointment",
        B.CheckInAppointmentRequest(appointment_id=made.appointment_id, etag=made.etag),
        A,
        booking.staff(),
    )
    assert checked_in.status == A.CHECKED_IN
    error = await refused(
        booking.call(
            "CompleteAppointment",
            B.CompleteAppointmentRequest(appointment_id=made.appointment_id, etag=made.etag),
            A,
            booking.staff(),
        )
    )
    assert error.code() == grpc.StatusCode.ABORTED
    assert error_reasons(error) == ["ETAG_MISMATCH"]
    error = await refused(cancel(booking, made.appointment_id, booking.staff(), etag='W/"99"'))
    assert error.code() == grpc.StatusCode.ABORTED
    assert error_reasons(error) == ["ETAG_MISMATCH"]


async def test_no_show_only_after_the_start_and_only_by_staff(booking: Booking) -> None:
    made = await book(booking, book_request(booking))
    request = B.MarkNoShowRequest(appointment_id=made.appointment_id)
    error = await refused(booking.call("MarkNoShow", request, A, booking.staff()))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "APPOINTMENT_STATUS" in error_reasons(error)
    await move_into_past(booking, made.appointment_id)
    for principal in (booking.patient("p-1"), SERVICE):
        error = await refused(booking.call("MarkNoShow", request, A, principal))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    marked: A = await booking.call("MarkNoShow", request, A, booking.staff())
    assert marked.status == A.NO_SHOW
    # Final: nothing moves it any more.
    error = await refused(cancel(booking, made.appointment_id, booking.staff()))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


# ---- holds ------------------------------------------------------------------------------------


async def test_holding_again_extends_the_same_hold(booking: Booking) -> None:
    first = await hold(booking, hold_request(booking))
    await asyncio.sleep(0.01)
    second = await hold(booking, hold_request(booking))
    assert second.hold_id == first.hold_id
    assert second.expire_time.ToDatetime() > first.expire_time.ToDatetime()
    record = await HoldStore(booking.redis).get(uuid.UUID(first.hold_id))
    assert record is not None
    assert record.expire_time == second.expire_time.ToDatetime(tzinfo=UTC)
    # Staff holding it for the same patient extends it too.
    third = await hold(booking, hold_request(booking), booking.staff())
    assert third.hold_id == first.hold_id


async def test_staff_cannot_hold_another_organisations_provider(booking: Booking) -> None:
    clinic = booking.clinic
    start = clinic.start(3, 9)
    for visit_type in (clinic.other_visit_type, clinic.follow_up):
        request = B.HoldSlotRequest(
            slot_id=clinic.slot_id(clinic.other_provider, start),
            visit_type_id=str(visit_type),
            patient_id="p-1",
        )
        error = await refused(hold(booking, request, booking.staff()))
        assert error.code() == grpc.StatusCode.NOT_FOUND
    assert await granules(booking, clinic.other_provider, start) == ["OPEN"]


async def test_another_patient_cannot_release_a_hold(booking: Booking) -> None:
    made = await hold(booking, hold_request(booking))
    release = B.ReleaseHoldRequest(hold_id=made.hold_id)
    error = await refused(
        booking.call("ReleaseHold", release, empty_pb2.Empty, booking.patient("p-2"))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    other_org = booking.staff(str(booking.clinic.other_organization_id))
    error = await refused(booking.call("ReleaseHold", release, empty_pb2.Empty, other_org))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    start = booking.clinic.start(3, 9)
    assert await granules(booking, booking.clinic.providers[0], start) == ["HELD"]
    await booking.call("ReleaseHold", release, empty_pb2.Empty, booking.patient("p-1"))
    assert await granules(booking, booking.clinic.providers[0], start) == ["OPEN"]
    # Releasing again (or a hold that lapsed) succeeds and changes nothing.
    await booking.call("ReleaseHold", release, empty_pb2.Empty, booking.patient("p-1"))


async def test_lapsed_hold_is_swept_with_slots_released_expired(booking: Booking) -> None:
    clinic = booking.clinic
    request = hold_request(booking, visit_type=clinic.follow_up)
    request.ttl.FromTimedelta(timedelta(milliseconds=50))
    made = await hold(booking, request, SERVICE)
    start = clinic.start(3, 9)
    assert await granules(booking, clinic.providers[0], start) == ["HELD"]
    store = HoldStore(booking.redis)
    deadline = time.monotonic() + 5
    while await store.get(uuid.UUID(made.hold_id)) is not None:
        assert time.monotonic() < deadline, "the hold record did not lapse"
        await asyncio.sleep(0.02)
    position = await outbox_position(booking.pool)
    assert await booking.service.sweep_holds() == 1
    assert await granules(booking, clinic.providers[0], start) == ["OPEN"]
    [released] = events_of(await outbox_events(booking.pool, position), "slots_released")
    assert released.hold_id == made.hold_id
    assert released.reason == slot_events_pb2.SlotsReleased.EXPIRED
    assert [g.slot_id for g in released.granules] == list(made.slot_ids)
    taken = await book(booking, book_request(booking, days=3, hour=9, patient="p-2"))
    assert taken.status == A.BOOKED


async def test_service_hold_ttl_is_capped(booking: Booking) -> None:
    request = hold_request(booking)
    request.ttl.FromTimedelta(timedelta(hours=2))
    error = await refused(hold(booking, request, SERVICE))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == {"ttl"}
    # A patient's requested ttl is ignored: 90 seconds.
    request.ttl.FromTimedelta(timedelta(minutes=10))
    made = await hold(booking, request)
    lasts = made.expire_time.ToDatetime(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(seconds=80) < lasts <= timedelta(seconds=91)


async def test_booking_part_of_an_own_hold_releases_the_rest(booking: Booking) -> None:
    clinic = booking.clinic
    held = await hold(booking, hold_request(booking, visit_type=clinic.exam))
    position = await outbox_position(booking.pool)
    made = await book(booking, book_request(booking, days=3, hour=9, minute=15))
    starts = clinic.start(3, 9), clinic.start(3, 9, 15)
    assert await granules(booking, clinic.providers[0], *starts) == ["OPEN", "BOOKED"]
    events = await outbox_envelopes_since(booking, position)
    [released] = events_of(events, "slots_released")
    assert released.hold_id == held.hold_id
    assert released.reason == slot_events_pb2.SlotsReleased.RELEASED
    assert [g.slot_id for g in released.granules] == [held.slot_ids[0]]
    [booked] = events_of(events, "appointment_booked")
    assert booked.hold_id == held.hold_id
    assert made.status == A.BOOKED
    assert await HoldStore(booking.redis).get(uuid.UUID(held.hold_id)) is None


async def outbox_envelopes_since(
    booking: Booking, position: int
) -> list[envelope_pb2.EventEnvelope]:
    return await outbox_events(booking.pool, position)


async def test_another_patients_hold_refuses_with_held_by_other(booking: Booking) -> None:
    held = await hold(booking, hold_request(booking, visit_type=booking.clinic.follow_up))
    request = book_request(booking, days=3, hour=9, patient="p-2")
    request.hold_id = held.hold_id  # someone else's hold id does not help
    error = await refused(book(booking, request))
    assert error.code() == grpc.StatusCode.ABORTED
    [violation] = _refusal(error).violations
    assert violation.reason == appointment_pb2.BookingRefusal.HELD_BY_OTHER
    assert violation.hold_expire_time == held.expire_time


# ---- eligibility: PENDING_VERIFICATION --------------------------------------------------------


async def _verified(booking: Booking, patient: str, member: str, days_ago: int) -> None:
    """An ACTIVE verification on record, as a fast payer would have left it."""
    assert booking.blind_index is not None
    # Keyed as the service keys it: the id as printed on a card, spacing and case aside.
    digest = booking.blind_index.digest(member.upper(), purpose="booking.member_id")
    async with booking.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO booking.verifications (patient_id, payer_id, member_digest, check_id,"
            " verified_at) VALUES (%s, %s, %s, 'chk-earlier', %s)",
            (patient, PAYER_ID, digest, datetime.now(UTC) - timedelta(days=days_ago)),
        )


async def test_slow_payer_books_pending_verification_only_on_a_recent_verification(
    booking: Booking, booking_pki: DevPki, unique: str
) -> None:
    # Fast payer first: an ACTIVE answer is recorded for the patient, payer and member.
    fast = await book(booking, book_request(booking, hour=9, member=ACTIVE_MEMBER))
    assert fast.status == A.BOOKED
    recorded = await rows(booking, "SELECT patient_id, payer_id FROM booking.verifications")
    assert recorded == [("p-1", PAYER_ID)]
    config = BookingConfig(budget_s=0.8, recheck_interval=timedelta(0))
    async with running_booking(
        booking.pool,
        booking.redis,
        booking.clinic,
        booking_pki,
        unique + "slow",
        payer_latency_s=1.5,
        config=config,
    ) as slow:
        # Without a recent verification (this patient has none): refused, nothing kept.
        position = await outbox_position(booking.pool)
        error = await refused(
            book(slow, book_request(slow, hour=11, patient="p-9", member=ACTIVE_MEMBER))
        )
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reasons(error) == ["ELIGIBILITY_UNVERIFIED"]
        assert await outbox_position(booking.pool) == position
        assert await granules(
            booking, booking.clinic.providers[0], booking.clinic.start(2, 11)
        ) == ["OPEN"]
        # With one (the slow harness keys member ids with its own index): PENDING.
        await _verified(slow, "p-1", ACTIVE_MEMBER[0], days_ago=3)
        position = await outbox_position(booking.pool)
        # The member id typed in lower case is the same member.
        typed = book_request(slow, hour=12, member=ACTIVE_MEMBER)
        typed.insurance_member_id = ACTIVE_MEMBER[0].lower()
        pending = await book(slow, typed)
        assert pending.status == A.PENDING_VERIFICATION
        assert pending.eligibility.status == eligibility_pb2.PENDING
        assert pending.eligibility.HasField("next_check_time")
        [booked] = events_of(await outbox_events(booking.pool, position), "appointment_booked")
        assert booked.status == A.PENDING_VERIFICATION
        # The payer answers ACTIVE a little later; the re-check confirms the booking.
        position = await outbox_position(booking.pool)
        deadline = time.monotonic() + 15
        while await slow.service.recheck_pending() == 0:
            assert time.monotonic() < deadline, "the re-check never confirmed the booking"
            await asyncio.sleep(0.3)
        got: A = await slow.call(
            "GetAppointment",
            B.GetAppointmentRequest(appointment_id=pending.appointment_id),
            A,
            slow.patient("p-1"),
        )
        assert got.status == A.BOOKED
        assert got.eligibility.status == eligibility_pb2.ACTIVE
        [changed] = events_of(
            await outbox_events(booking.pool, position), "appointment_status_changed"
        )
        assert changed.previous_status == A.PENDING_VERIFICATION
        assert changed.status == A.BOOKED
        assert changed.changed_by == types_pb2.SYSTEM


async def test_old_verification_does_not_count(
    booking: Booking, booking_pki: DevPki, unique: str
) -> None:
    async with running_booking(
        booking.pool,
        booking.redis,
        booking.clinic,
        booking_pki,
        unique + "slow",
        payer_latency_s=1.5,
        config=BookingConfig(budget_s=0.8),
    ) as slow:
        await _verified(slow, "p-1", ACTIVE_MEMBER[0], days_ago=31)
        error = await refused(book(slow, book_request(slow, member=ACTIVE_MEMBER)))
        assert reasons(error) == ["ELIGIBILITY_UNVERIFIED"]


async def test_inactive_answer_to_a_recheck_stays_pending_for_staff(
    booking: Booking, booking_pki: DevPki, unique: str
) -> None:
    async with running_booking(
        booking.pool,
        booking.redis,
        booking.clinic,
        booking_pki,
        unique + "slow",
        payer_latency_s=1.5,
        config=BookingConfig(budget_s=0.8, recheck_interval=timedelta(0)),
    ) as slow:
        await _verified(slow, "p-1", INACTIVE_MEMBER[0], days_ago=1)
        pending = await book(slow, book_request(slow, member=INACTIVE_MEMBER))
        assert pending.status == A.PENDING_VERIFICATION
        deadline = time.monotonic() + 15
        while True:
            await slow.service.recheck_pending()
            [(status, eligibility, next_check)] = await rows(
                booking,
                "SELECT status, eligibility_status, next_check_at FROM booking.appointments"
                " WHERE id = %s",
                pending.appointment_id,
            )
            if eligibility == "INACTIVE":
                break
            assert time.monotonic() < deadline, "the payer's INACTIVE answer never arrived"
            await asyncio.sleep(0.3)
        # Never cancelled automatically, never re-checked again: staff resolve it.
        assert status == "PENDING_VERIFICATION"
        assert next_check is None
        assert await slow.service.recheck_pending() == 0
        got: A = await slow.call(
            "GetAppointment",
            B.GetAppointmentRequest(appointment_id=pending.appointment_id),
            A,
            slow.staff(),
        )
        assert got.eligibility.status == eligibility_pb2.INACTIVE
        assert not got.eligibility.HasField("next_check_time")


# ---- schedule conflicts ---------------------------------------------------------------------


async def _conflict(booking: Booking, made: A) -> uuid.UUID:
    conflict, cause = uuid.uuid4(), uuid.uuid4()
    async with booking.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO availability.schedule_conflicts (id, organization_id, provider_id,"
            " location_id, appointment_id, start_time, end_time, cause, cause_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, 'EXCEPTION', %s)",
            (
                conflict,
                made.organization_id,
                made.provider_id,
                made.location_id,
                made.appointment_id,
                made.start_time.ToDatetime(tzinfo=UTC),
                made.end_time.ToDatetime(tzinfo=UTC),
                cause,
            ),
        )
    return conflict


async def test_cancel_with_open_conflict_blocks_the_time_and_resolves_it(booking: Booking) -> None:
    clinic = booking.clinic
    made = await book(booking, book_request(booking, visit_type=clinic.exam))
    conflict = await _conflict(booking, made)
    position = await outbox_position(booking.pool)
    await cancel(booking, made.appointment_id, booking.staff())
    starts = clinic.start(2, 10), clinic.start(2, 10, 15)
    assert await granules(booking, clinic.providers[0], *starts) == ["BLOCKED", "BLOCKED"]
    assert await rows(
        booking, "SELECT state FROM availability.schedule_conflicts WHERE id = %s", conflict
    ) == [("RESOLVED",)]
    events = await outbox_events(booking.pool, position)
    assert events_of(events, "slot_freed") == []
    [blocked] = events_of(events, "slots_blocked")
    assert len(blocked.granules) == 2
    assert blocked.cause_id
    [resolved] = events_of(events, "schedule_conflict_resolved")
    assert resolved.conflict_id == str(conflict)
    assert resolved.appointment_id == made.appointment_id
    # Nothing reserves the room any more.
    assert await rows(
        booking,
        "SELECT count(*) FROM availability.resource_busy WHERE appointment_id = %s",
        made.appointment_id,
    ) == [(0,)]


async def test_reschedule_away_from_a_conflict_blocks_the_old_time(booking: Booking) -> None:
    clinic = booking.clinic
    made = await book(booking, book_request(booking))
    conflict = await _conflict(booking, made)
    await reschedule(booking, made, clinic.slot_id(clinic.providers[0], clinic.start(2, 14)))
    assert await granules(booking, clinic.providers[0], clinic.start(2, 10)) == ["BLOCKED"]
    assert await rows(
        booking, "SELECT state FROM availability.schedule_conflicts WHERE id = %s", conflict
    ) == [("RESOLVED",)]


# ---- lists ----------------------------------------------------------------------------------


async def test_provider_and_resource_days(booking: Booking) -> None:
    clinic = booking.clinic
    exam = await book(booking, book_request(booking, hour=14, visit_type=clinic.exam))
    early = await book(booking, book_request(booking, hour=9, patient="p-2"))
    gone = await book(booking, book_request(booking, hour=11, patient="p-3"))
    await cancel(booking, gone.appointment_id, booking.staff())
    await book(booking, book_request(booking, days=3, hour=9))  # another day
    day = (datetime.now(ZONE).date() + timedelta(days=2)).isoformat()
    staff = booking.staff()
    listed: B.ListProviderDayResponse = await booking.call(
        "ListProviderDay",
        B.ListProviderDayRequest(
            organization_id=str(clinic.organization_id),
            provider_id=str(clinic.providers[0]),
            date=day,
        ),
        B.ListProviderDayResponse,
        staff,
    )
    assert [a.appointment_id for a in listed.appointments] == [
        early.appointment_id,
        exam.appointment_id,
    ]
    with_cancelled: B.ListProviderDayResponse = await booking.call(
        "ListProviderDay",
        B.ListProviderDayRequest(
            organization_id=str(clinic.organization_id),
            provider_id=str(clinic.providers[0]),
            date=day,
            include_cancelled=True,
        ),
        B.ListProviderDayResponse,
        staff,
    )
    assert len(with_cancelled.appointments) == 3
    room = exam.reservations[0].resource_id
    by_room: B.ListResourceDayResponse = await booking.call(
        "ListResourceDay",
        B.ListResourceDayRequest(
            organization_id=str(clinic.organization_id), resource_id=room, date=day
        ),
        B.ListResourceDayResponse,
        staff,
    )
    assert [a.appointment_id for a in by_room.appointments] == [exam.appointment_id]
    other = booking.staff(str(clinic.other_organization_id))
    for method, request, response in (
        (
            "ListProviderDay",
            B.ListProviderDayRequest(
                organization_id=str(clinic.organization_id),
                provider_id=str(clinic.providers[0]),
                date=day,
            ),
            B.ListProviderDayResponse,
        ),
        (
            "ListResourceDay",
            B.ListResourceDayRequest(
                organization_id=str(clinic.organization_id), resource_id=room, date=day
            ),
            B.ListResourceDayResponse,
        ),
    ):
        for principal in (other, booking.patient("p-1")):
            error = await refused(booking.call(method, request, response, principal))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    missing = await refused(
        booking.call(
            "ListResourceDay",
            B.ListResourceDayRequest(
                organization_id=str(clinic.organization_id),
                resource_id=str(uuid.uuid4()),
                date=day,
            ),
            B.ListResourceDayResponse,
            staff,
        )
    )
    assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_patient_appointments_pages_and_filters(booking: Booking) -> None:
    made = [await book(booking, book_request(booking, hour=h)) for h in (9, 10, 11, 12, 13)]
    await cancel(booking, made[2].appointment_id, booking.patient("p-1"))
    await book(booking, book_request(booking, hour=9, provider=1, patient="p-2"))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page: B.ListPatientAppointmentsResponse = await booking.call(
            "ListPatientAppointments",
            B.ListPatientAppointmentsRequest(patient_id="p-1", page_size=2, page_token=token),
            B.ListPatientAppointmentsResponse,
            booking.patient("p-1"),
        )
        pages += 1
        assert len(page.appointments) <= 2
        seen.extend(a.appointment_id for a in page.appointments)
        token = page.next_page_token
        if not token:
            break
    expected = [m.appointment_id for i, m in enumerate(made) if i != 2]
    assert seen == expected
    assert pages == 2
    only_cancelled: B.ListPatientAppointmentsResponse = await booking.call(
        "ListPatientAppointments",
        B.ListPatientAppointmentsRequest(patient_id="p-1", statuses=[A.CANCELLED]),
        B.ListPatientAppointmentsResponse,
        booking.staff(),
    )
    assert [a.appointment_id for a in only_cancelled.appointments] == [made[2].appointment_id]
    # Who may list whom.
    error = await refused(
        booking.call(
            "ListPatientAppointments",
            B.ListPatientAppointmentsRequest(patient_id="p-1"),
            B.ListPatientAppointmentsResponse,
            booking.patient("p-2"),
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    other_org = booking.staff(str(booking.clinic.other_organization_id))
    nothing: B.ListPatientAppointmentsResponse = await booking.call(
        "ListPatientAppointments",
        B.ListPatientAppointmentsRequest(patient_id="p-1"),
        B.ListPatientAppointmentsResponse,
        other_org,
    )
    assert list(nothing.appointments) == []
    error = await refused(
        booking.call(
            "ListPatientAppointments",
            B.ListPatientAppointmentsRequest(
                patient_id="p-1", organization_id=str(booking.clinic.organization_id)
            ),
            B.ListPatientAppointmentsResponse,
            other_org,
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    error = await refused(
        booking.call(
            "ListPatientAppointments",
            B.ListPatientAppointmentsRequest(patient_id="p-1", page_token="not a token!"),
            B.ListPatientAppointmentsResponse,
            booking.patient("p-1"),
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == {"page_token"}


# ---- validation -------------------------------------------------------------------------------


async def test_every_bad_field_is_named_at_once_and_nothing_changes(booking: Booking) -> None:
    position = await outbox_position(booking.pool)
    request = B.BookAppointmentRequest(
        slot_id="not-a-slot",
        visit_type_id="nope",
        patient_id="bad patient id!",
        visit_reason="x" * 501,
        insurance_member_id="M1",
        idempotency_key="short",
        resource_ids=[
            "zzz",
            str(booking.clinic.exam_rooms_a[0]),
            str(booking.clinic.exam_rooms_a[0]),
        ],
        hold_id="not-a-uuid",
    )
    request.patient_demographics.birth_date = "15/01/1980"
    request.subscriber_demographics.name.family_name = "SMITH~"
    error = await refused(book(booking, request, booking.staff()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(error) == {
        "slot_id",
        "visit_type_id",
        "patient_id",
        "visit_reason",
        "insurance_member_id",
        "idempotency_key",
        "resource_ids[0]",
        "resource_ids",
        "hold_id",
        "patient_demographics.birth_date",
        "subscriber_demographics.name.family_name",
    }
    hold_error = await refused(
        hold(
            booking,
            B.HoldSlotRequest(
                slot_start=appointment_pb2.SlotStart(provider_id="x", location_id="y"),
                patient_id="",
            ),
            booking.staff(),
        )
    )
    assert bad_fields(hold_error) == {
        "slot_start.provider_id",
        "slot_start.location_id",
        "slot_start.start_time",
        "visit_type_id",
        "patient_id",
    }
    cancel_error = await refused(
        booking.call(
            "CancelAppointment",
            B.CancelAppointmentRequest(appointment_id="x", cancellation_note="n" * 501),
            A,
            booking.staff(),
        )
    )
    assert bad_fields(cancel_error) == {
        "appointment_id",
        "cancellation_reason",
        "cancellation_note",
    }
    reschedule_error = await refused(
        booking.call(
            "RescheduleAppointment",
            B.RescheduleAppointmentRequest(appointment_id="x", idempotency_key="k"),
            A,
            booking.staff(),
        )
    )
    assert bad_fields(reschedule_error) == {"appointment_id", "slot_id", "idempotency_key"}
    assert await outbox_position(booking.pool) == position
    assert await rows(booking, "SELECT count(*) FROM booking.appointments") == [(0,)]


# ---- PHI --------------------------------------------------------------------------------------


async def test_phi_stays_out_of_logs_and_events(
    booking: Booking, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    reason = "embarrassing rash on the left elbow"
    note = "moving to Ohio next week"
    request = book_request(booking, member=ACTIVE_MEMBER)
    request.visit_reason = reason
    made = await book(booking, request)
    assert made.visit_reason == reason
    moved = await reschedule(
        booking,
        made,
        booking.clinic.slot_id(booking.clinic.providers[0], booking.clinic.start(2, 15)),
    )
    await booking.call(
        "CancelAppointment",
        B.CancelAppointmentRequest(
            appointment_id=moved.appointment_id,
            cancellation_reason=appointment_pb2.OTHER_REASON,
            cancellation_note=note,
        ),
        A,
        booking.patient("p-1"),
    )
    # A refusal with the same PHI (the start is in the past) and an inactive member.
    refused_request = book_request(booking, days=-1, member=INACTIVE_MEMBER)
    refused_request.visit_reason = reason
    error = await refused(book(booking, refused_request))
    member_ids = [ACTIVE_MEMBER[0], INACTIVE_MEMBER[0]]
    names = [ACTIVE_MEMBER[1], ACTIVE_MEMBER[2], INACTIVE_MEMBER[1], INACTIVE_MEMBER[2]]
    births = [ACTIVE_MEMBER[3], INACTIVE_MEMBER[3]]
    secrets = [reason, note, *member_ids, *names, *births]
    logged = caplog.text
    assert logged, "nothing was logged: the test would prove nothing"
    for secret in secrets:
        assert secret not in logged, f"PHI in logs: {secret}"
        assert secret not in (error.details() or "")
    payloads = await rows(booking, "SELECT payload FROM booking.outbox")
    assert len(payloads) >= 4
    for (payload,) in payloads:
        blob = bytes(payload)
        for secret in secrets:
            assert secret.encode() not in blob, f"PHI in an event: {secret}"


async def test_a_room_left_by_a_reschedule_no_longer_shows_the_appointment(
    booking: Booking,
) -> None:
    clinic = booking.clinic
    room_a0, room_a1 = clinic.exam_rooms_a
    request = book_request(booking, visit_type=clinic.exam)
    request.resource_ids.append(str(room_a0))
    made = await book(booking, request)
    # Same time, another provider and room: the released reservation has the same span.
    moved: A = await booking.call(
        "RescheduleAppointment",
        B.RescheduleAppointmentRequest(
            appointment_id=made.appointment_id,
            slot_id=clinic.slot_id(clinic.providers[1], clinic.start(2, 10)),
            resource_ids=[str(room_a1)],
            idempotency_key=str(uuid.uuid4()),
        ),
        A,
        booking.staff(),
    )
    assert [r.resource_id for r in moved.reservations] == [str(room_a1)]
    day = (datetime.now(ZONE).date() + timedelta(days=2)).isoformat()

    async def on(room: uuid.UUID, include_cancelled: bool = False) -> list[str]:
        listed: B.ListResourceDayResponse = await booking.call(
            "ListResourceDay",
            B.ListResourceDayRequest(
                organization_id=str(clinic.organization_id),
                resource_id=str(room),
                date=day,
                include_cancelled=include_cancelled,
            ),
            B.ListResourceDayResponse,
            booking.staff(),
        )
        return [a.appointment_id for a in listed.appointments]

    assert await on(room_a0) == []
    assert await on(room_a1) == [made.appointment_id]
    done = await cancel(booking, made.appointment_id, booking.staff())
    assert [r.resource_id for r in done.reservations] == [str(room_a1)]
    assert await on(room_a0, include_cancelled=True) == []
    assert await on(room_a1, include_cancelled=True) == [made.appointment_id]
    assert await on(room_a1) == []


async def test_own_hold_is_taken_over_whatever_hold_id_is_named(booking: Booking) -> None:
    held = await hold(booking, hold_request(booking, visit_type=booking.clinic.follow_up))
    request = book_request(booking, days=3, hour=9)
    request.hold_id = str(uuid.uuid4())  # stale or mistyped: still the patient's own time
    made = await book(booking, request)
    assert made.status == A.BOOKED
    assert await HoldStore(booking.redis).get(uuid.UUID(held.hold_id)) is None


async def test_not_found_names_the_resource(booking: Booking) -> None:
    made = await book(booking, book_request(booking))
    error = await refused(
        booking.call(
            "GetAppointment",
            B.GetAppointmentRequest(appointment_id=made.appointment_id),
            A,
            booking.patient("p-2"),
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    status = status_details(error)
    assert status is not None
    infos = []
    for detail in status.details:
        info = error_details_pb2.ResourceInfo()
        if detail.Unpack(info):
            infos.append((info.resource_type, info.resource_name))
    assert infos == [("medsched.booking.v1.Appointment", made.appointment_id)]
