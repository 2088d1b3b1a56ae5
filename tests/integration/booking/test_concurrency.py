"""Many clients booking the same few start times at once, through the real gRPC server.

Every start time ends with exactly one appointment; every other attempt is refused as a lost
race (ABORTED with a `BookingRefusal` of TAKEN or RESOURCE_UNAVAILABLE), never with an error;
and the tables agree with each other afterwards (`check_booking_invariants`): no two live
reservations of one provider, room or piece of equipment overlap, the BOOKED granules are
exactly the live appointments' granules, and nothing points at a missing or cancelled
appointment.

The start times put providers 0 and 1 (both at site A, which has two exam rooms and one
ultrasound) at the same instants with visit types that need rooms, so concurrent bookings of
*different* providers compete for the same rooms; the demand at any instant fits the rooms,
so each start time can be booked, but only by taking the room the other did not.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc
import grpc.aio
import pytest

from booking_svc.main import BOOKING_SERVICE
from common.auth import PRINCIPAL_METADATA_KEY, Principal, PrincipalSigner, Role
from common.db import Pool
from common.grpc_client import channel, status_details
from medsched.booking.v1 import appointment_pb2, booking_service_pb2
from tests.integration.booking.conftest import Booking
from tests.integration.booking.world import ACTIVE_MEMBER, PLAN, Clinic

B = booking_service_pb2
A = appointment_pb2.Appointment
Refusal = appointment_pb2.BookingRefusal
BookCall = grpc.aio.UnaryUnaryMultiCallable[B.BookAppointmentRequest, A]

# A lost race: another request got the time (or the room) first.
RACE_REASONS = frozenset({"TAKEN", "RESOURCE_UNAVAILABLE"})


@dataclass(frozen=True)
class Start:
    """One bookable start time: a provider, a local start and the visit type booked there."""

    provider: int
    days: int
    hour: int
    minute: int
    visit_type: uuid.UUID


def contended_starts(
    clinic: Clinic, count: int, *, providers: Sequence[int] = (0, 1, 2)
) -> list[Start]:
    """`count` start times that can all be booked together, half an hour apart per provider.

    At each instant provider 0 takes an ultrasound visit (exam room + ultrasound) or an exam
    (exam room) and provider 1 an exam or a one-granule follow-up: site A's two exam rooms
    are claimed by both at once. Provider 2 (site B, one exam room) alternates exams and
    follow-ups.
    """
    found: list[Start] = []
    for days in itertools.count(2):
        for block in range(18):  # 08:00 to 16:30 local, every half hour
            hour, minute = 8 + block // 2, 30 * (block % 2)
            for provider in providers:
                if provider == 0:
                    visit = clinic.ultrasound if block % 2 == 0 else clinic.exam
                elif provider == 1:
                    visit = clinic.exam if block % 3 else clinic.follow_up
                else:
                    visit = clinic.exam if block % 2 == 0 else clinic.follow_up
                found.append(Start(provider, days, hour, minute, visit))
                if len(found) == count:
                    return found
    raise AssertionError("unreachable")


@dataclass
class Outcomes:
    """What the clients saw: appointments by start index, refusals, anything else."""

    booked: dict[int, list[A]] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)

    def record(self, index: int, result: A | grpc.aio.AioRpcError) -> None:
        if isinstance(result, A):
            self.booked.setdefault(index, []).append(result)
            return
        reasons = refusal_reasons(result)
        if result.code() == grpc.StatusCode.ABORTED and reasons and set(reasons) <= RACE_REASONS:
            self.refused["+".join(reasons)] += 1
        else:
            self.unexpected.append(f"{result.code().name} {reasons} {result.details()}")


def refusal_reasons(error: grpc.aio.AioRpcError) -> list[str]:
    status = status_details(error)
    for detail in status.details if status is not None else ():
        refusal = Refusal()
        if detail.Unpack(refusal):
            return [Refusal.Reason.Name(v.reason) for v in refusal.violations]
    return []


def book_call(ch: grpc.aio.Channel) -> BookCall:
    return ch.unary_unary(
        f"/{BOOKING_SERVICE}/BookAppointment",
        request_serializer=B.BookAppointmentRequest.SerializeToString,
        response_deserializer=A.FromString,
    )


def patient(patient_id: str) -> Principal:
    return Principal(subject=f"user-{patient_id}", role=Role.PATIENT, patient_id=patient_id)


def book_request(
    clinic: Clinic,
    start: Start,
    patient_id: str,
    *,
    key: str | None = None,
    plan: bool = False,
) -> B.BookAppointmentRequest:
    request = B.BookAppointmentRequest(
        slot_id=clinic.slot_id(
            clinic.providers[start.provider], clinic.start(start.days, start.hour, start.minute)
        ),
        visit_type_id=str(start.visit_type),
        patient_id=patient_id,
        visit_reason="follow-up of blood pressure",
        idempotency_key=key or str(uuid.uuid4()),
    )
    if plan:
        request.insurance_plan_id = PLAN
        request.insurance_member_id = ACTIVE_MEMBER[0]
        request.patient_demographics.name.family_name = ACTIVE_MEMBER[1]
        request.patient_demographics.name.given_name = ACTIVE_MEMBER[2]
        request.patient_demographics.birth_date = ACTIVE_MEMBER[3]
    return request


async def call_book(
    call: BookCall, signer: PrincipalSigner, request: B.BookAppointmentRequest, timeout_s: float
) -> A | grpc.aio.AioRpcError:
    credential = signer.sign(patient(request.patient_id), now=datetime.now(UTC))
    try:
        return await call(
            request, timeout=timeout_s, metadata=((PRINCIPAL_METADATA_KEY, credential),)
        )
    except grpc.aio.AioRpcError as error:
        return error


async def storm(
    booking: Booking,
    starts: Sequence[Start],
    *,
    attempts: int,
    clients: int,
    channels: int,
    plan: bool = False,
    seed: int = 5,
) -> Outcomes:
    """`attempts` bookings of `starts` by `clients` concurrent callers over `channels` channels.

    The attempts come in waves of ten start times (neighbours in time, so the same instants
    at site A are in one wave), each wave's attempts shuffled: at any moment about
    `clients / 10` requests race for each start time of the wave, and different providers'
    requests race for the same rooms.
    """
    rng = random.Random(seed)
    per_start = attempts // len(starts)
    plan_order: list[int] = []
    for wave in range(0, len(starts), 10):
        batch = [i for i in range(wave, min(wave + 10, len(starts))) for _ in range(per_start)]
        rng.shuffle(batch)
        plan_order.extend(batch)
    work = iter(enumerate(plan_order))
    opened = [channel(booking.address, tls=None) for _ in range(channels)]
    outcomes = Outcomes()

    async def client(number: int) -> None:
        call = book_call(opened[number % channels])
        for attempt, index in work:
            request = book_request(
                booking.clinic, starts[index], f"c{number}-a{attempt}", plan=plan
            )
            outcomes.record(index, await call_book(call, booking.signer, request, 60.0))

    try:
        await asyncio.gather(*(client(n) for n in range(clients)))
    finally:
        for ch in opened:
            await ch.close(None)
    return outcomes


# ---- the invariants -------------------------------------------------------------------------


async def scalar(pool: Pool, query: str, params: Sequence[object] = ()) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute(query, params)
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


INVARIANTS = {
    "overlapping live reservations of one resource": """
        SELECT count(*) FROM booking.reservations a
        JOIN booking.reservations b
          ON a.resource_id = b.resource_id AND a.id < b.id AND a.during && b.during
        WHERE a.released_at IS NULL AND b.released_at IS NULL
    """,
    "live appointment granules not BOOKED by it": """
        SELECT count(*) FROM (
            SELECT a.provider_id, g, a.id FROM booking.appointments a,
                   generate_series(a.start_time, a.end_time - make_interval(mins =>
                                   a.granule_minutes), make_interval(mins => a.granule_minutes)) g
            WHERE a.status <> 'CANCELLED'
            EXCEPT
            SELECT provider_id, start_time, appointment_id FROM availability.slots
            WHERE status = 'BOOKED'
        ) missing
    """,
    "BOOKED granules without a live appointment covering them": """
        SELECT count(*) FROM availability.slots s
        WHERE s.status = 'BOOKED' AND NOT EXISTS (
            SELECT 1 FROM booking.appointments a
            WHERE a.id = s.appointment_id AND a.status <> 'CANCELLED'
              AND a.provider_id = s.provider_id
              AND s.start_time >= a.start_time AND s.end_time <= a.end_time)
    """,
    "granules pointing at an appointment while not BOOKED": """
        SELECT count(*) FROM availability.slots
        WHERE appointment_id IS NOT NULL AND status <> 'BOOKED'
    """,
    "live reservations of cancelled or missing appointments": """
        SELECT count(*) FROM booking.reservations r
        LEFT JOIN booking.appointments a ON a.id = r.appointment_id
        WHERE r.released_at IS NULL AND (a.id IS NULL OR a.status = 'CANCELLED')
    """,
    "live appointments without their provider's reservation": """
        SELECT count(*) FROM booking.appointments a
        WHERE a.status <> 'CANCELLED' AND NOT EXISTS (
            SELECT 1 FROM booking.reservations r
            WHERE r.appointment_id = a.id AND r.resource_type = 'PROVIDER'
              AND r.resource_id = a.provider_id AND r.released_at IS NULL
              AND r.during = tstzrange(a.start_time, a.end_time))
    """,
    "live appointments whose rooms or equipment do not match the visit type's needs": """
        SELECT count(*) FROM booking.appointments a
        JOIN availability.visit_type_resource_needs n ON n.visit_type_id = a.visit_type_id
        WHERE a.status <> 'CANCELLED' AND n.count <> (
            SELECT count(*) FROM booking.reservations r
            WHERE r.appointment_id = a.id AND r.kind = n.kind AND r.released_at IS NULL
              AND r.during = tstzrange(a.start_time, a.end_time))
    """,
    "resource_busy rows differing from the live room and equipment reservations": """
        SELECT count(*) FROM (
            (SELECT resource_id, appointment_id, during FROM availability.resource_busy
             EXCEPT SELECT resource_id, appointment_id, during FROM booking.reservations
                    WHERE released_at IS NULL AND resource_type <> 'PROVIDER')
            UNION ALL
            (SELECT resource_id, appointment_id, during FROM booking.reservations
             WHERE released_at IS NULL AND resource_type <> 'PROVIDER'
             EXCEPT SELECT resource_id, appointment_id, during FROM availability.resource_busy)
        ) differing
    """,
    "appointments without exactly one AppointmentBooked event": """
        SELECT count(*) FROM booking.appointments a
        WHERE (SELECT count(*) FROM booking.outbox o
               WHERE o.aggregate_type = 'appointment' AND o.aggregate_id = a.id::text
                 AND o.event_type = 'appointment.booked') <> 1
    """,
    "appointment events of appointments that do not exist": """
        SELECT count(*) FROM booking.outbox o
        WHERE o.aggregate_type = 'appointment' AND NOT EXISTS (
            SELECT 1 FROM booking.appointments a WHERE a.id::text = o.aggregate_id)
    """,
    "idempotency keys of appointments that do not exist": """
        SELECT count(*) FROM booking.idempotency_keys k
        WHERE NOT EXISTS (SELECT 1 FROM booking.appointments a WHERE a.id = k.appointment_id)
    """,
}


async def check_booking_invariants(pool: Pool) -> None:
    """Fail with every broken invariant of the booking tables, counted."""
    broken = {}
    for name, query in INVARIANTS.items():
        found = await scalar(pool, query)
        if found:
            broken[name] = found
    assert broken == {}


async def live_appointments(pool: Pool) -> dict[uuid.UUID, tuple[str, str]]:
    """id -> (patient, slot id) of every appointment not cancelled."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT id, patient_id, provider_id, start_time FROM booking.appointments"
            " WHERE status <> 'CANCELLED'"
        )
        rows = await cursor.fetchall()
    return {
        row[0]: (row[1], f"{row[2]}_{row[3].astimezone(UTC).strftime('%Y%m%dT%H%MZ')}")
        for row in rows
    }


def assert_one_winner_per_start(outcomes: Outcomes, starts: Sequence[Start], attempts: int) -> None:
    assert outcomes.unexpected == []
    assert sorted(outcomes.booked) == list(range(len(starts)))
    assert [i for i, made in outcomes.booked.items() if len(made) != 1] == []
    assert sum(outcomes.refused.values()) == attempts - len(starts)


# ---- the tests ------------------------------------------------------------------------------


async def test_ten_thousand_attempts_on_a_hundred_starts(booking: Booking) -> None:
    starts = contended_starts(booking.clinic, 100)
    outcomes = await storm(booking, starts, attempts=10_000, clients=200, channels=8)
    assert_one_winner_per_start(outcomes, starts, 10_000)
    assert all(made[0].status == A.BOOKED for made in outcomes.booked.values())
    stored = await live_appointments(booking.pool)
    assert sorted(str(a) for a in stored) == sorted(
        made[0].appointment_id for made in outcomes.booked.values()
    )
    # Each start time went to the request that was told it won.
    assert {made[0].appointment_id: made[0].slot_id for made in outcomes.booked.values()} == {
        str(a): slot for a, (_, slot) in stored.items()
    }
    await check_booking_invariants(booking.pool)
    # Rooms really were contended: both site A providers hold rooms at the same instants.
    assert outcomes.refused  # and most attempts lost a race
    assert (
        await scalar(
            booking.pool,
            "SELECT count(*) FROM booking.reservations a JOIN booking.reservations b"
            " ON a.during = b.during AND a.resource_id = %s AND b.resource_id = %s"
            " WHERE a.released_at IS NULL AND b.released_at IS NULL",
            tuple(booking.clinic.exam_rooms_a),
        )
        > 0
    )


@pytest.mark.parametrize("attempts", [300])
async def test_insured_bookings_race_with_eligibility(booking: Booking, attempts: int) -> None:
    # Providers 0 and 1 accept the plan; the payer simulator answers ACTIVE for the member.
    starts = contended_starts(booking.clinic, 10, providers=(0, 1))
    outcomes = await storm(booking, starts, attempts=attempts, clients=50, channels=4, plan=True)
    assert_one_winner_per_start(outcomes, starts, attempts)
    for made in outcomes.booked.values():
        assert made[0].status == A.BOOKED
        assert made[0].insurance_member_id == ACTIVE_MEMBER[0]
        assert made[0].eligibility.check_id
    assert len(await live_appointments(booking.pool)) == len(starts)
    await check_booking_invariants(booking.pool)
