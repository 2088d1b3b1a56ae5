"""Booking as a hypothesis state machine: holds, bookings (with and without holds, someone
else's too), reschedules, cancellations, check-ins, lapsing holds and retried requests, all
through gRPC against one small clinic, with the database invariants and the outbox's account
of every granule checked by SQL after every step.

Hypothesis drives the machine synchronously, so it runs in a worker thread and hands each
coroutine to the test's event loop (where the gRPC channel and the pools live) with
`asyncio.run_coroutine_threadsafe`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

import grpc
import grpc.aio
from google.protobuf import empty_pb2
from google.protobuf.message import Message
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from booking_svc.holds import HoldStore
from common.auth import Principal, Role
from common.grpc_client import status_details
from medsched.booking.v1 import appointment_pb2, booking_service_pb2
from medsched.events.v1 import envelope_pb2
from tests.integration.booking.conftest import Booking
from tests.integration.booking.world import outbox_position

B = booking_service_pb2
A = appointment_pb2.Appointment
T = TypeVar("T")

PATIENTS = ("p-1", "p-2", "p-3")
DAYS_AHEAD = 2
MINUTES = (0, 15, 30, 45)  # visit starts 10:00-10:45 local
VISITS = ("follow_up", "exam", "ultrasound")
NEEDS = {
    "follow_up": ["PROVIDER:provider"],
    "exam": ["PROVIDER:provider", "ROOM:exam_room"],
    "ultrasound": ["EQUIPMENT:ultrasound", "PROVIDER:provider", "ROOM:exam_room"],
}
LENGTH = {"follow_up": 1, "exam": 2, "ultrasound": 2}
RACE = {"TAKEN", "HELD_BY_OTHER", "RESOURCE_UNAVAILABLE"}
LIVE = {"BOOKED", "PENDING_VERIFICATION"}
HOLD_KEY = "medsched:hold:"  # the hold record's Redis key (booking_svc.holds)
SERVICE = Principal(subject="svc-waitlist", role=Role.SERVICE)
GRANULE_STATUS = {
    "slots_materialized": "OPEN",
    "slots_blocked": "BLOCKED",
    "slots_held": "HELD",
    "slots_released": "OPEN",
    "slots_booked": "BOOKED",
    "slot_freed": "OPEN",
}


# Which earlier hold, appointment or request a rule acts on: an index drawn the same way
# whatever the state, so replaying an example draws the same data (insertion order, never the
# order of server-minted ids, picks the item).
PICK = st.integers(0, 2**12 - 1)


def choose(items: Sequence[T], pick: int) -> T:
    return items[pick % len(items)]


@dataclass
class Sent:
    """A keyed request, who sent it, and the appointment it produced (empty if refused)."""

    method: str
    request: Any
    principal: Principal
    appointment_id: str = ""


@dataclass
class HeldTime:
    patient_id: str
    provider: int
    minute: int
    visit: str
    tiny: bool  # placed by a service with a 1 ms ttl: lapsed by the next step


@dataclass(frozen=True)
class Granule:
    status: str
    appointment_id: str
    hold_id: str


def code_of(result: object) -> grpc.StatusCode:
    return result.code() if isinstance(result, grpc.aio.AioRpcError) else grpc.StatusCode.OK


def refusal_reasons(error: grpc.aio.AioRpcError) -> list[str]:
    status = status_details(error)
    assert status is not None
    for detail in status.details:
        refusal = appointment_pb2.BookingRefusal()
        if detail.Unpack(refusal):
            return [
                appointment_pb2.BookingRefusal.Reason.Name(v.reason) for v in refusal.violations
            ]
    raise AssertionError(f"no BookingRefusal in {error.code().name}: {error.details()}")


def check_refusal(error: grpc.aio.AioRpcError) -> list[str]:
    """The refusal's reasons, after checking the status code matches them (contract)."""
    reasons = refusal_reasons(error)
    assert reasons, "a refusal names at least one reason"
    expected = (
        grpc.StatusCode.ABORTED if set(reasons) <= RACE else grpc.StatusCode.FAILED_PRECONDITION
    )
    assert error.code() == expected, (reasons, error.code())
    return reasons


class BookingMachine(RuleBasedStateMachine):
    def __init__(self, booking: Booking, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.booking = booking
        self.loop = loop
        self.clinic = booking.clinic
        self.store = HoldStore(booking.redis)
        self.holds: dict[str, HeldTime] = {}
        self.appointments: dict[str, str] = {}  # id -> patient
        self.sent: list[Sent] = []
        self.events = EventReplay(after=0)
        self.visit_ids = {
            "follow_up": self.clinic.follow_up,
            "exam": self.clinic.exam,
            "ultrasound": self.clinic.ultrasound,
        }

    # ---- plumbing -----------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def call(self, method: str, request: Message, response: type[Any], who: Principal) -> Any:
        try:
            return self.run(self.booking.call(method, request, response, who))
        except grpc.aio.AioRpcError as error:
            return error

    def start(self, minute: int) -> datetime:
        return self.clinic.start(DAYS_AHEAD, 10, minute)

    def slot(self, provider: int, minute: int) -> str:
        return self.clinic.slot_id(self.clinic.providers[provider], self.start(minute))

    def staff(self) -> Principal:
        return self.booking.staff()

    def granules(self, provider: int, minute: int, visit: str) -> list[Granule | None]:
        starts = [self.start(minute) + timedelta(minutes=15 * k) for k in range(LENGTH[visit])]
        return self.run(self._granules(self.clinic.providers[provider], starts))

    async def _granules(self, provider: uuid.UUID, starts: list[datetime]) -> list[Granule | None]:
        async with self.booking.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT start_time, status, coalesce(appointment_id::text, ''),"
                " coalesce(hold_id::text, '') FROM availability.slots"
                " WHERE provider_id = %s AND start_time = ANY(%s)",
                (provider, starts),
            )
            found = {row[0]: Granule(row[1], row[2], row[3]) for row in await cursor.fetchall()}
        return [found.get(s) for s in starts]

    def live_hold_patient(self, hold_id: str) -> str | None:
        """The patient of a hold still alive in Redis (tiny-ttl holds count as lapsed)."""
        info = self.holds.get(hold_id)
        if info is None or info.tiny:
            return None
        record = self.run(self.store.get(uuid.UUID(hold_id)))
        return None if record is None else record.patient_id

    def blocking(
        self, before: list[Granule | None], patient: str, mine: str = ""
    ) -> tuple[bool, bool]:
        """(taken, held for another patient) for `patient` taking granules `before`; any hold
        of the patient's own is theirs to take, whichever hold id the request names."""
        taken = any(
            g is not None and g.status == "BOOKED" and g.appointment_id != mine for g in before
        )
        held = False
        for g in before:
            if g is None or g.status != "HELD":
                continue
            owner = self.live_hold_patient(g.hold_id)
            if owner is not None and owner != patient:
                held = True
        return taken, held

    def status_of(self, appointment_id: str) -> tuple[str, int]:
        async def read() -> tuple[str, int]:
            async with self.booking.pool.connection() as conn:
                cursor = await conn.execute(
                    "SELECT status, version FROM booking.appointments WHERE id = %s",
                    (appointment_id,),
                )
                row = await cursor.fetchone()
            assert row is not None
            return row[0], row[1]

        return self.run(read())

    # ---- setup --------------------------------------------------------------------------

    @initialize()
    def reset(self) -> None:
        """Every example starts from an empty book (rows and holds of earlier examples go)."""

        async def wipe() -> int:
            async with self.booking.pool.connection() as conn, conn.transaction():
                await conn.execute("DELETE FROM availability.resource_busy")
                await conn.execute("DELETE FROM booking.idempotency_keys")
                await conn.execute("DELETE FROM booking.reservations")
                await conn.execute("DELETE FROM booking.appointments")
                await conn.execute(
                    "UPDATE availability.slots SET status = 'OPEN', appointment_id = NULL,"
                    " hold_id = NULL, version = version + 1 WHERE status IN ('HELD', 'BOOKED')"
                )
            cursor = self.booking.redis.scan_iter(match=HOLD_KEY + "*")
            async for key in cursor:
                await self.store.forget(uuid.UUID(key.decode().removeprefix(HOLD_KEY)))
            return await outbox_position(self.booking.pool)

        self.events = EventReplay(after=self.run(wipe()))

    # ---- holds --------------------------------------------------------------------------

    @rule(
        patient=st.sampled_from(PATIENTS),
        provider=st.integers(0, 2),
        minute=st.sampled_from(MINUTES),
        visit=st.sampled_from(VISITS),
        who=st.sampled_from(["patient", "staff", "service-tiny"]),
    )
    def hold(self, patient: str, provider: int, minute: int, visit: str, who: str) -> None:
        before = self.granules(provider, minute, visit)
        request = B.HoldSlotRequest(
            slot_id=self.slot(provider, minute),
            visit_type_id=str(self.visit_ids[visit]),
            patient_id=patient,
        )
        principal = self.booking.patient(patient)
        if who == "staff":
            principal = self.staff()
        elif who == "service-tiny":
            principal = SERVICE
            request.ttl.FromTimedelta(timedelta(milliseconds=1))
        # The same patient's own live hold of exactly this time and visit is extended.
        extended = ""
        if before and all(g is not None and g.status == "HELD" for g in before):
            first = before[0]
            assert first is not None
            info = self.holds.get(first.hold_id)
            if (
                info is not None
                and not info.tiny
                and self.live_hold_patient(first.hold_id) == patient
                and (info.provider, info.minute, info.visit) == (provider, minute, visit)
                and all(g is not None and g.hold_id == first.hold_id for g in before)
            ):
                extended = first.hold_id
        taken, held = self.blocking(before, patient)
        result = self.call("HoldSlot", request, appointment_pb2.Hold, principal)
        if isinstance(result, grpc.aio.AioRpcError):
            reasons = check_refusal(result)
            assert ("TAKEN" in reasons) == taken, (reasons, before)
            assert ("HELD_BY_OTHER" in reasons) == held, (reasons, before)
            assert not extended, "re-holding one's own hold must extend it"
            if visit == "follow_up" and all(g is not None and g.status == "OPEN" for g in before):
                raise AssertionError(f"an open follow-up start was refused: {reasons}")
            return
        assert not taken, "a hold was granted over booked time"
        assert not held, "a hold was granted over someone else's hold"
        assert result.patient_id == patient
        assert len(result.slot_ids) == LENGTH[visit]
        assert result.slot_ids[0] == self.slot(provider, minute)
        if extended:
            assert result.hold_id == extended
        self.holds[result.hold_id] = HeldTime(
            patient, provider, minute, visit, who == "service-tiny"
        )
        after = self.granules(provider, minute, visit)
        assert all(
            g is not None and g.status == "HELD" and g.hold_id == result.hold_id for g in after
        )

    @rule(pick=PICK, by_other=st.booleans())
    def release(self, pick: int, by_other: bool) -> None:
        if not self.holds:
            return
        hold_id = choose(list(self.holds), pick)
        info = self.holds[hold_id]
        owner = self.live_hold_patient(hold_id)
        caller = info.patient_id
        if by_other:
            caller = next(p for p in PATIENTS if p != info.patient_id)
        result = self.call(
            "ReleaseHold",
            B.ReleaseHoldRequest(hold_id=hold_id),
            empty_pb2.Empty,
            self.booking.patient(caller),
        )
        if by_other and owner is not None:
            assert code_of(result) == grpc.StatusCode.NOT_FOUND
            return
        assert code_of(result) == grpc.StatusCode.OK, result
        assert self.run(self.store.get(uuid.UUID(hold_id))) is None
        assert self.run(self._held_by(hold_id)) == 0

    async def _held_by(self, hold_id: str) -> int:
        async with self.booking.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT count(*) FROM availability.slots WHERE status = 'HELD' AND hold_id = %s",
                (hold_id,),
            )
            row = await cursor.fetchone()
        assert row is not None
        return int(row[0])

    @rule(pick=PICK)
    def lapse_and_sweep(self, pick: int) -> None:
        """Some holds lapse in Redis (as their PX expiry would do); the sweeper frees them."""
        if not self.holds:
            return
        held = list(self.holds)
        chosen = {held[(pick >> shift) % len(held)] for shift in (0, 4, 8)[: pick % 4]}

        async def lapse_then_sweep() -> int:
            for hold_id in chosen:
                await self.booking.redis.delete(HOLD_KEY + hold_id)
            await asyncio.sleep(0.005)  # tiny-ttl holds lapse too
            return await self.booking.service.sweep_holds()

        self.run(lapse_then_sweep())

        async def held_without_record() -> list[str]:
            async with self.booking.pool.connection() as conn:
                cursor = await conn.execute(
                    "SELECT DISTINCT hold_id::text FROM availability.slots WHERE status = 'HELD'"
                )
                held = [row[0] for row in await cursor.fetchall()]
            alive = await self.store.alive(uuid.UUID(h) for h in held)
            return [h for h in held if uuid.UUID(h) not in alive]

        assert self.run(held_without_record()) == [], "the sweep left lapsed holds HELD"

    # ---- bookings -----------------------------------------------------------------------

    @rule(
        patient=st.sampled_from(PATIENTS),
        provider=st.integers(0, 2),
        minute=st.sampled_from(MINUTES),
        visit=st.sampled_from(VISITS),
        hold_choice=st.sampled_from(["none", "own", "any"]),
        by_staff=st.booleans(),
        pick=PICK,
    )
    def book(
        self,
        patient: str,
        provider: int,
        minute: int,
        visit: str,
        hold_choice: str,
        by_staff: bool,
        pick: int,
    ) -> None:
        hold_id = ""
        candidates = [
            h
            for h, info in self.holds.items()
            if hold_choice == "any" or info.patient_id == patient
        ]
        if hold_choice != "none" and candidates:
            hold_id = choose(candidates, pick)
        request = B.BookAppointmentRequest(
            slot_id=self.slot(provider, minute),
            visit_type_id=str(self.visit_ids[visit]),
            patient_id=patient,
            visit_reason="dizzy spells",
            idempotency_key=str(uuid.uuid4()),
            hold_id=hold_id,
        )
        principal = self.staff() if by_staff else self.booking.patient(patient)
        sent = Sent("BookAppointment", request, principal)
        self.sent.append(sent)
        before = self.granules(provider, minute, visit)
        taken, held = self.blocking(before, patient)
        result = self.call("BookAppointment", request, A, principal)
        if isinstance(result, grpc.aio.AioRpcError):
            reasons = check_refusal(result)
            assert ("TAKEN" in reasons) == taken, (reasons, before)
            assert ("HELD_BY_OTHER" in reasons) == held, (reasons, before)
            free = all(g is not None and g.status == "OPEN" for g in before)
            if visit == "follow_up" and free:
                raise AssertionError(f"an open follow-up start was refused: {reasons}")
            return
        assert not taken, ("booked over booked time", before)
        assert not held, ("booked over someone else's hold", before)
        assert result.status == A.BOOKED
        assert result.patient_id == patient
        assert result.slot_id == self.slot(provider, minute)
        sent.appointment_id = result.appointment_id
        self.appointments[result.appointment_id] = patient
        # A hold of this patient on any of the granules was consumed.
        for g in before:
            info = self.holds.get(g.hold_id) if g is not None and g.status == "HELD" else None
            if g is not None and info is not None and info.patient_id == patient:
                assert self.run(self.store.get(uuid.UUID(g.hold_id))) is None

    @rule(
        pick=PICK,
        provider=st.integers(0, 2),
        minute=st.sampled_from(MINUTES),
        etag=st.sampled_from(["current", "stale", "none"]),
        by_staff=st.booleans(),
    )
    def reschedule(self, pick: int, provider: int, minute: int, etag: str, by_staff: bool) -> None:
        if not self.appointments:
            return
        appointment_id = choose(list(self.appointments), pick)
        patient = self.appointments[appointment_id]
        status, version = self.status_of(appointment_id)
        visit = self._visit_of(appointment_id)
        request = B.RescheduleAppointmentRequest(
            appointment_id=appointment_id,
            slot_id=self.slot(provider, minute),
            idempotency_key=str(uuid.uuid4()),
            etag={"current": f'W/"{version}"', "stale": f'W/"{version + 7}"', "none": ""}[etag],
        )
        principal = self.staff() if by_staff else self.booking.patient(patient)
        sent = Sent("RescheduleAppointment", request, principal)
        self.sent.append(sent)
        before = self.granules(provider, minute, visit)
        taken, held = self.blocking(before, patient, mine=appointment_id)
        result = self.call("RescheduleAppointment", request, A, principal)
        if etag == "stale":
            assert code_of(result) == grpc.StatusCode.ABORTED
            assert "ETAG_MISMATCH" in _error_reasons(result)
            return
        if status not in LIVE:
            assert code_of(result) == grpc.StatusCode.FAILED_PRECONDITION, result
            assert "APPOINTMENT_STATUS" in _error_reasons(result)
            return
        if isinstance(result, grpc.aio.AioRpcError):
            reasons = check_refusal(result)
            assert ("TAKEN" in reasons) == taken, (reasons, before)
            assert ("HELD_BY_OTHER" in reasons) == held, (reasons, before)
            free = all(
                g is not None
                and (
                    g.status == "OPEN"
                    or (g.status == "BOOKED" and g.appointment_id == appointment_id)
                )
                for g in before
            )
            if visit == "follow_up" and free:
                raise AssertionError(f"an open follow-up start was refused: {reasons}")
            assert self.status_of(appointment_id) == (status, version), "a refusal changed it"
            return
        assert not taken
        assert not held
        assert result.appointment_id == appointment_id
        assert result.slot_id == self.slot(provider, minute)
        assert result.status == A.Status.Value(status)
        sent.appointment_id = appointment_id

    def _visit_of(self, appointment_id: str) -> str:
        async def read() -> uuid.UUID:
            async with self.booking.pool.connection() as conn:
                cursor = await conn.execute(
                    "SELECT visit_type_id FROM booking.appointments WHERE id = %s",
                    (appointment_id,),
                )
                row = await cursor.fetchone()
            assert row is not None
            return uuid.UUID(str(row[0]))

        visit_type = self.run(read())
        return next(name for name, vid in self.visit_ids.items() if vid == visit_type)

    @rule(pick=PICK, by_staff=st.booleans())
    def cancel(self, pick: int, by_staff: bool) -> None:
        if not self.appointments:
            return
        appointment_id = choose(list(self.appointments), pick)
        status, version = self.status_of(appointment_id)
        principal = (
            self.staff() if by_staff else self.booking.patient(self.appointments[appointment_id])
        )
        result = self.call(
            "CancelAppointment",
            B.CancelAppointmentRequest(
                appointment_id=appointment_id,
                cancellation_reason=appointment_pb2.PATIENT_REQUEST,
            ),
            A,
            principal,
        )
        if status == "CANCELLED":
            assert code_of(result) == grpc.StatusCode.OK, result
            assert result.etag == f'W/"{version}"', "cancelling twice changed it"
        elif status in LIVE:
            assert code_of(result) == grpc.StatusCode.OK, result
            assert result.status == A.CANCELLED
            assert len(result.reservations) == len(NEEDS[self._visit_of(appointment_id)]) - 1
        else:
            assert code_of(result) == grpc.StatusCode.FAILED_PRECONDITION, result

    @rule(pick=PICK)
    def check_in(self, pick: int) -> None:
        if not self.appointments:
            return
        appointment_id = choose(list(self.appointments), pick)
        status, _ = self.status_of(appointment_id)
        result = self.call(
            "CheckInAppointment",
            B.CheckInAppointmentRequest(appointment_id=appointment_id),
            A,
            self.staff(),
        )
        if status in LIVE:
            assert code_of(result) == grpc.StatusCode.OK, result
            assert result.status == A.CHECKED_IN
        else:
            assert code_of(result) == grpc.StatusCode.FAILED_PRECONDITION, result

    # ---- retries --------------------------------------------------------------------------

    @rule(pick=PICK, change=st.booleans())
    def retry(self, pick: int, change: bool) -> None:
        if not self.sent:
            return
        sent = choose(self.sent, pick)
        request = type(sent.request)()
        request.CopyFrom(sent.request)
        if change and sent.method == "BookAppointment":
            request.visit_reason += " and nausea"
        elif change:
            request.etag = 'W/"123456"' if request.etag != 'W/"123456"' else ""
        result = self.call(sent.method, request, A, sent.principal)
        if sent.appointment_id:
            if change:
                assert code_of(result) == grpc.StatusCode.ALREADY_EXISTS, result
                assert "IDEMPOTENCY_KEY_REUSED" in _error_reasons(result)
            else:
                assert code_of(result) == grpc.StatusCode.OK, result
                assert result.appointment_id == sent.appointment_id
            return
        assert code_of(result) in (
            grpc.StatusCode.OK,
            grpc.StatusCode.ABORTED,
            grpc.StatusCode.FAILED_PRECONDITION,
        ), result
        if not isinstance(result, grpc.aio.AioRpcError):
            # A request refused earlier may go through now; its key is then taken.
            sent.request = request
            sent.appointment_id = result.appointment_id
            self.appointments.setdefault(result.appointment_id, result.patient_id)

    # ---- invariants -----------------------------------------------------------------------

    @invariant()
    def database_and_events_agree(self) -> None:
        self.run(check_invariants(self.booking, self.events, self.visit_ids))


def _error_reasons(result: object) -> list[str]:
    from google.rpc import error_details_pb2  # type: ignore[import-untyped, unused-ignore]

    assert isinstance(result, grpc.aio.AioRpcError), result
    status = status_details(result)
    assert status is not None
    found = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            found.append(info.reason)
        failure = error_details_pb2.PreconditionFailure()
        if detail.Unpack(failure):
            found.extend(v.type for v in failure.violations)
    return found


async def check_invariants(
    booking: Booking, events: EventReplay, visit_ids: dict[str, uuid.UUID]
) -> None:
    """Everything the database and the outbox must agree on, whatever happened before."""
    names = {str(v): k for k, v in visit_ids.items()}
    async with booking.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM booking.reservations a JOIN booking.reservations b"
            " ON a.resource_id = b.resource_id AND a.id < b.id AND a.during && b.during"
            " WHERE a.released_at IS NULL AND b.released_at IS NULL"
        )
        assert await cursor.fetchone() == (0,), "two live reservations of one resource overlap"
        cursor = await conn.execute(
            "SELECT s.provider_id, s.start_time, s.status, a.status FROM availability.slots s"
            " LEFT JOIN booking.appointments a ON a.id = s.appointment_id"
            " WHERE (s.status = 'BOOKED' AND (a.id IS NULL OR a.status = 'CANCELLED'"
            "        OR s.hold_id IS NOT NULL OR a.provider_id <> s.provider_id"
            "        OR a.location_id <> s.location_id"
            "        OR s.start_time < a.start_time OR s.end_time > a.end_time))"
            "    OR (s.status = 'HELD' AND (s.hold_id IS NULL OR s.appointment_id IS NOT NULL))"
            "    OR (s.status = 'OPEN' AND (s.hold_id IS NOT NULL OR s.appointment_id IS NOT NULL))"
        )
        bad = await cursor.fetchall()
        assert bad == [], f"granules whose owner is wrong: {bad}"
        cursor = await conn.execute(
            "SELECT a.id, a.status, a.visit_type_id::text,"
            " (SELECT count(*) FROM availability.slots s WHERE s.provider_id = a.provider_id"
            "    AND s.start_time >= a.start_time AND s.start_time < a.end_time"
            "    AND s.status = 'BOOKED' AND s.appointment_id = a.id),"
            " round(extract(epoch FROM a.end_time - a.start_time) / 60 / a.granule_minutes),"
            " array(SELECT r.resource_type || ':' || r.kind FROM booking.reservations r"
            "       WHERE r.appointment_id = a.id AND r.released_at IS NULL ORDER BY 1),"
            " (SELECT count(*) FROM booking.reservations r"
            "    WHERE r.appointment_id = a.id AND r.released_at IS NULL"
            "      AND (r.during <> tstzrange(a.start_time, a.end_time)"
            "           OR (r.resource_type = 'PROVIDER') <> (r.resource_id = a.provider_id)"
            "           OR (r.resource_type <> 'PROVIDER' AND NOT EXISTS ("
            "               SELECT 1 FROM availability.resources x"
            "               WHERE x.id = r.resource_id AND x.location_id = a.location_id))))"
            " FROM booking.appointments a"
        )
        appointments = await cursor.fetchall()
        cursor = await conn.execute(
            "SELECT resource_id, appointment_id, during FROM availability.resource_busy"
            " EXCEPT SELECT resource_id, appointment_id, during FROM booking.reservations"
            " WHERE released_at IS NULL AND resource_type <> 'PROVIDER'"
        )
        extra_busy = await cursor.fetchall()
        cursor = await conn.execute(
            "SELECT resource_id, appointment_id, during FROM booking.reservations"
            " WHERE released_at IS NULL AND resource_type <> 'PROVIDER'"
            " EXCEPT SELECT resource_id, appointment_id, during FROM availability.resource_busy"
        )
        missing_busy = await cursor.fetchall()
        cursor = await conn.execute(
            "SELECT provider_id, start_time, status, version, coalesce(appointment_id::text, ''),"
            " coalesce(hold_id::text, '') FROM availability.slots WHERE provider_id = ANY(%s)",
            (booking.clinic.providers,),
        )
        slots = {booking.clinic.slot_id(row[0], row[1]): row[2:] for row in await cursor.fetchall()}
        cursor = await conn.execute(
            "SELECT id::text, status, provider_id::text, start_time, end_time"
            " FROM booking.appointments"
        )
        rows = {row[0]: row[1:] for row in await cursor.fetchall()}
    assert extra_busy == [], "resource_busy has rows no live reservation has"
    assert missing_busy == [], "a live room or equipment reservation is missing in resource_busy"
    for appointment_id, status, visit_type, booked, length, kinds, misplaced in appointments:
        if status == "CANCELLED":
            assert booked == 0, f"cancelled {appointment_id} still holds granules"
            assert kinds == [], f"cancelled {appointment_id} still holds reservations"
            continue
        assert booked == length, f"{appointment_id} ({status}) owns {booked}/{length} granules"
        assert sorted(kinds) == NEEDS[names[visit_type]], (appointment_id, kinds)
        assert misplaced == 0, f"{appointment_id} has reservations off its time or place"
    await events.catch_up(booking)
    for slot, (version, status, owner) in events.latest.items():
        row_status, row_version, row_appointment, row_hold = slots[slot]
        assert (row_version, row_status) == (version, status), (slot, slots[slot], version, status)
        if status == "HELD":
            assert row_hold == owner
        if status == "BOOKED":
            assert row_appointment == owner
    assert set(events.placed) == set(rows), "an appointment without its AppointmentBooked event"
    for appointment_id, (status, placement) in events.placed.items():
        row_status, provider, start, end = rows[appointment_id]
        assert status == row_status, (appointment_id, status, row_status)
        assert placement.provider_id == provider
        assert placement.start_time.ToDatetime(tzinfo=start.tzinfo) == start
        assert placement.end_time.ToDatetime(tzinfo=end.tzinfo) == end
        assert len(placement.slot_ids) == round((end - start) / timedelta(minutes=15))


@dataclass
class EventReplay:
    """The outbox replayed: each granule's newest (version, status, owner), each appointment's
    status and placement. Reads only the rows written since the last catch-up."""

    after: int
    latest: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    placed: dict[str, list[Any]] = field(default_factory=dict)

    async def catch_up(self, booking: Booking) -> None:
        async with booking.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT id, payload FROM booking.outbox WHERE id > %s ORDER BY id", (self.after,)
            )
            rows = await cursor.fetchall()
        for row_id, payload in rows:
            self.after = row_id
            self.apply(envelope_pb2.EventEnvelope.FromString(bytes(payload)))

    def apply(self, envelope: envelope_pb2.EventEnvelope) -> None:
        which = envelope.WhichOneof("payload")
        assert which is not None
        payload = getattr(envelope, which)
        if which in GRANULE_STATUS:
            owner = payload.hold_id if which == "slots_held" else ""
            if which == "slots_booked":
                owner = payload.appointment_id
            for g in payload.granules:
                previous = self.latest.get(g.slot_id)
                assert previous is None or g.version > previous[0], (
                    f"{which} of {g.slot_id} went back from version {previous} to {g.version}"
                )
                self.latest[g.slot_id] = (g.version, GRANULE_STATUS[which], owner)
        elif which == "appointment_booked":
            self.placed[payload.appointment_id] = [A.Status.Name(payload.status), payload.placement]
        elif which == "appointment_rescheduled":
            state = self.placed[payload.appointment_id]
            assert payload.previous_placement == state[1], "previous placement is not the last"
            state[1] = payload.placement
        elif which == "appointment_cancelled":
            state = self.placed[payload.appointment_id]
            assert payload.placement == state[1], "cancelled placement is not the last"
            state[0] = "CANCELLED"
        elif which == "appointment_status_changed":
            state = self.placed[payload.appointment_id]
            assert A.Status.Name(payload.previous_status) == state[0]
            state[0] = A.Status.Name(payload.status)


async def test_booking_state_machine(booking: Booking) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(
        run_state_machine_as_test,
        cast(type[RuleBasedStateMachine], lambda: BookingMachine(booking, loop)),
        settings=settings(
            max_examples=25,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
