"""The booking use cases: hold, book, reschedule, cancel, the status workflow, and lists.

The guarantee against double booking is PostgreSQL's: granules are row-locked in one global
order and checked (status, owner) inside the transaction that changes them, and every
reservation of a provider, room or piece of equipment is covered by an exclusion constraint.
Holds (Redis) and the search index are courtesies on top.

Booking runs eligibility in parallel with the database work: the check starts before the
transaction, the transaction locks and checks everything, then waits for the answer (within
the request's budget) and commits per policy, or rolls back leaving nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import psycopg.errors

from booking_svc import store
from booking_svc.domain import (
    BookCommand,
    BookingRefused,
    HoldCommand,
    Move,
    MoveContext,
    RefusalReason,
    RescheduleCommand,
    Status,
    Target,
    Violation,
    check_move,
    etag_of,
    new_confirmation_code,
)
from booking_svc.eligibility import Check, CheckRequest, EligibilityPort
from booking_svc.holds import HoldRecord, HoldStore
from common.auth import Principal, Role, can_access_organization
from common.crypto import BlindIndex, FieldCipher, field_context
from common.db import Connection, Pool
from common.errors import (
    AlreadyExists,
    Conflict,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
)
from common.events import Event, Origin, write_events
from medsched.booking.v1 import appointment_pb2
from medsched.common.v1 import types_pb2
from medsched.eligibility.v1 import eligibility_pb2
from medsched.events.v1 import appointment_events_pb2, slot_events_pb2

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class BookingConfig:
    hold_ttl: timedelta = timedelta(seconds=90)
    max_service_hold: timedelta = timedelta(minutes=30)
    # A booking answers within this, whatever the caller's deadline.
    budget_s: float = 2.0
    # Kept back from the budget for the commit after eligibility answers.
    commit_margin_s: float = 0.25
    verification_max_age: timedelta = timedelta(days=30)
    recheck_interval: timedelta = timedelta(minutes=5)
    idempotency_retention_days: int = 30


# ---- what a transaction found about a start time -----------------------------------------


@dataclass
class Checked:
    """The outcome of checking one start time inside a transaction (granules locked)."""

    rules: store.VisitTypeRules
    provider_id: uuid.UUID
    location_id: uuid.UUID
    start: datetime
    end: datetime
    starts: list[datetime]
    time_zone: str
    visit_type_id: uuid.UUID
    explicit: frozenset[uuid.UUID] = frozenset()
    plan_payer_id: str = ""
    violations: list[Violation] = field(default_factory=list)
    resources: list[store.Resource] = field(default_factory=list)
    # Holds on the granules the request may take over: its own, or lapsed ones.
    consumed_holds: set[uuid.UUID] = field(default_factory=set)
    # An alive hold of the same patient covering exactly these granules (for re-holding).
    own_hold: HoldRecord | None = None

    def refuse(self, reason: RefusalReason, description: str, **extra: Any) -> None:
        self.violations.append(Violation(reason, description, **extra))

    def slot_ids(self, starts: Sequence[datetime]) -> tuple[str, ...]:
        return tuple(slot_id(self.provider_id, s) for s in starts)


def slot_id(provider_id: uuid.UUID, start: datetime) -> str:
    return f"{provider_id}_{start.astimezone(UTC).strftime('%Y%m%dT%H%MZ')}"


@dataclass(frozen=True)
class Eligibility:
    """What the eligibility check said, as booking's policy sees it."""

    status: eligibility_pb2.EligibilityStatus.ValueType
    check_id: str = ""
    verified_at: datetime | None = None


_PENDING = eligibility_pb2.PENDING
_ERROR = eligibility_pb2.ERROR

_ACTOR = {
    Role.PATIENT: types_pb2.PATIENT,
    Role.STAFF: types_pb2.STAFF,
    Role.ADMIN: types_pb2.ADMIN,
    Role.SERVICE: types_pb2.SYSTEM,
}


class _KeyTaken(Exception):
    """The idempotency key was committed by another transaction: replay its answer."""


class BookingService:
    def __init__(
        self,
        *,
        pool: Pool,
        holds: HoldStore,
        eligibility: EligibilityPort,
        cipher: FieldCipher,
        blind_index: BlindIndex,
        config: BookingConfig | None = None,
        clock: Clock = _utc_now,
    ) -> None:
        self._pool = pool
        self._holds = holds
        self._eligibility = eligibility
        self._cipher = cipher
        self._blind = blind_index
        self._config = config or BookingConfig()
        self._clock = clock

    # ---- holds ------------------------------------------------------------------------

    async def hold(self, cmd: HoldCommand, principal: Principal) -> HoldRecord:
        _authorize_patient(principal, cmd.patient_id)
        ttl = self._hold_ttl(cmd.ttl, principal)
        async with self._pool.connection() as conn, conn.transaction():
            checked = await self._check(
                conn,
                principal,
                target=cmd.target,
                visit_type_id=cmd.visit_type_id,
                patient_id=cmd.patient_id,
                plan_id="",
                requested_hold=None,
                own_appointment=None,
                extra_lock=(),
                pick_resources=True,
            )
            if checked.violations:
                raise BookingRefused(checked.violations)
            now = self._clock()
            reuse = checked.own_hold
            hold_id = reuse.hold_id if reuse is not None else uuid.uuid4()
            record = HoldRecord(
                hold_id=hold_id,
                organization_id=str(checked.rules.organization_id),
                patient_id=cmd.patient_id,
                provider_id=str(checked.provider_id),
                location_id=str(checked.location_id),
                visit_type_id=str(cmd.visit_type_id),
                starts=tuple(int(s.timestamp()) for s in checked.starts),
                end=int(checked.end.timestamp()),
                expire_ms=int((now + ttl).timestamp() * 1000),
            )
            # Redis first: a committed HELD granule always has a live record until it lapses.
            await self._holds.put(record)
            granules = await store.set_granules(
                conn, checked.provider_id, checked.starts, status="HELD", hold_id=hold_id
            )
            held = slot_events_pb2.SlotsHeld(
                provider_id=str(checked.provider_id),
                location_id=str(checked.location_id),
                hold_id=str(hold_id),
                visit_type_id=str(cmd.visit_type_id),
                granules=_granules(checked.provider_id, granules),
            )
            held.expire_time.FromDatetime(record.expire_time)
            await write_events(
                conn,
                store.SCHEMA,
                self._origin(checked.rules.organization_id, principal, now, str(hold_id)),
                [Event("slots", str(checked.provider_id), held)],
            )
        stale = checked.consumed_holds - {hold_id}
        for lapsed in stale:
            await self._holds.forget(lapsed)
        return record

    def _hold_ttl(self, requested: timedelta, principal: Principal) -> timedelta:
        if principal.role is not Role.SERVICE or requested <= timedelta(0):
            return self._config.hold_ttl
        if requested > self._config.max_service_hold:
            raise InvalidArgument.single(
                "ttl", f"must be at most {int(self._config.max_service_hold.total_seconds())} s"
            )
        return requested

    async def release_hold(self, hold_id: uuid.UUID, principal: Principal) -> None:
        record = await self._holds.get(hold_id)
        if record is not None and not _may_act_for(
            principal, record.patient_id, record.organization_id
        ):
            raise NotFound("no such hold", reasons=[Reason("HOLD_NOT_FOUND", str(hold_id))])
        reason = slot_events_pb2.SlotsReleased.RELEASED
        if record is None:
            # Lapsed (or consumed): releasing changes nothing but what the sweeper would do.
            reason = slot_events_pb2.SlotsReleased.EXPIRED
        await self._release_granules(hold_id, reason, principal)
        await self._holds.forget(hold_id)

    async def _release_granules(
        self,
        hold_id: uuid.UUID,
        reason: slot_events_pb2.SlotsReleased.Reason.ValueType,
        principal: Principal | None,
    ) -> bool:
        async with self._pool.connection() as conn, conn.transaction():
            released = await store.release_hold_granules(conn, hold_id)
            if released is None:
                return False
            org, provider, location, granules = released
            event = slot_events_pb2.SlotsReleased(
                provider_id=str(provider),
                location_id=str(location),
                hold_id=str(hold_id),
                granules=_granules(provider, granules),
                reason=reason,
            )
            await write_events(
                conn,
                store.SCHEMA,
                self._origin(org, principal, self._clock(), str(hold_id)),
                [Event("slots", str(provider), event)],
            )
        return True

    async def sweep_holds(self) -> int:
        """Release holds that lapsed: due by the expiry set, or HELD rows with no record."""
        released = 0
        now_ms = int(self._clock().timestamp() * 1000)
        due = await self._holds.due(now_ms)
        alive = await self._holds.alive(due)
        for hold_id in due:
            if hold_id in alive:
                continue
            if await self._release_granules(hold_id, slot_events_pb2.SlotsReleased.EXPIRED, None):
                released += 1
            await self._holds.forget(hold_id)
        async with self._pool.connection() as conn:
            held = await store.held_hold_ids(conn)
        alive = await self._holds.alive(held)
        for hold_id in held:
            if hold_id not in alive and await self._release_granules(
                hold_id, slot_events_pb2.SlotsReleased.EXPIRED, None
            ):
                released += 1
        return released

    # ---- booking ------------------------------------------------------------------------

    async def book(
        self, cmd: BookCommand, principal: Principal, *, deadline: float | None
    ) -> appointment_pb2.Appointment:
        _authorize_patient(principal, cmd.patient_id)
        scope = f"book:{cmd.patient_id}"
        replay = await self._replay(scope, cmd.idempotency_key, cmd.request_digest, principal)
        if replay is not None:
            return replay
        budget_end = time.monotonic() + self._config.budget_s
        if deadline is not None:
            budget_end = min(budget_end, deadline)
        appointment_id = uuid.uuid4()
        prelude = await self._prelude(cmd, principal)
        eligibility_task = self._start_eligibility(cmd, prelude, appointment_id, budget_end)
        try:
            async with self._pool.connection() as conn, conn.transaction():
                if not await store.claim_idempotency_key(
                    conn, scope, cmd.idempotency_key, cmd.request_digest, appointment_id
                ):
                    raise _KeyTaken
                checked = await self._check(
                    conn,
                    principal,
                    target=cmd.target,
                    visit_type_id=cmd.visit_type_id,
                    patient_id=cmd.patient_id,
                    plan_id=cmd.insurance_plan_id,
                    requested_hold=cmd.hold_id,
                    own_appointment=None,
                    extra_lock=(),
                    pick_resources=True,
                    explicit_resources=cmd.resource_ids,
                )
                if checked.violations:
                    await self._add_eligibility_if_ready(eligibility_task, checked)
                    raise BookingRefused(checked.violations)
                status, verdict = await self._decide(conn, cmd, checked, eligibility_task)
                now = self._clock()
                await self._insert_appointment(
                    conn, cmd, checked, appointment_id, status, verdict, principal, now
                )
                reserved = await self._reserve(conn, appointment_id, checked)
                granules = await store.set_granules(
                    conn,
                    checked.provider_id,
                    checked.starts,
                    status="BOOKED",
                    appointment_id=appointment_id,
                )
                placement = _placement(checked, granules, reserved)
                booked = appointment_events_pb2.AppointmentBooked(
                    appointment_id=str(appointment_id),
                    patient_id=cmd.patient_id,
                    visit_type_id=str(cmd.visit_type_id),
                    placement=placement,
                    status=_STATUS_PB[status],
                    insurance_plan_id=cmd.insurance_plan_id,
                    eligibility_check_id=verdict.check_id if verdict else "",
                    booked_by=_ACTOR[principal.role],
                    hold_id=str(cmd.hold_id) if cmd.hold_id else "",
                )
                slots_booked = slot_events_pb2.SlotsBooked(
                    provider_id=str(checked.provider_id),
                    location_id=str(checked.location_id),
                    appointment_id=str(appointment_id),
                    granules=placement_granules(checked.provider_id, granules),
                    resources=list(placement.resources),
                )
                await write_events(
                    conn,
                    store.SCHEMA,
                    self._origin(
                        checked.rules.organization_id, principal, now, str(appointment_id)
                    ),
                    [
                        Event("appointment", str(appointment_id), booked),
                        Event("slots", str(checked.provider_id), slots_booked),
                    ],
                )
        except _KeyTaken:
            eligibility_task.cancel()
            replay = await self._replay(scope, cmd.idempotency_key, cmd.request_digest, principal)
            if replay is None:  # the other transaction's row vanished: it was pruned
                raise Conflict("the request raced with its own retry; retry it") from None
            return replay
        finally:
            if not eligibility_task.done():
                eligibility_task.cancel()
        for hold_id in checked.consumed_holds:
            await self._holds.forget(hold_id)
        return await self.get(appointment_id, principal)

    async def _replay(
        self, scope: str, key: str, digest: bytes, principal: Principal
    ) -> appointment_pb2.Appointment | None:
        async with self._pool.connection() as conn:
            found = await store.find_idempotency_key(conn, scope, key)
        if found is None:
            return None
        stored_digest, appointment_id = found
        if stored_digest != digest:
            raise AlreadyExists(
                "this idempotency key was used for a different request; use a new key for a"
                " new booking intent",
                reasons=[Reason("IDEMPOTENCY_KEY_REUSED", key)],
            )
        return await self.get(appointment_id, principal)

    async def _prelude(self, cmd: BookCommand, principal: Principal) -> _Prelude:
        """What the eligibility request needs, read before the transaction (no locks)."""
        async with self._pool.connection() as conn:
            rules = await store.visit_type_rules(conn, cmd.visit_type_id, cmd.target.provider_id)
            cursor = await conn.execute(
                "SELECT l.time_zone FROM availability.slots s"
                " JOIN availability.locations l ON l.id = s.location_id"
                " WHERE s.provider_id = %s AND s.start_time = %s",
                (cmd.target.provider_id, cmd.target.start),
            )
            row = await cursor.fetchone()
            payer = cmd.insurance_payer_id
            if not payer and cmd.insurance_plan_id and rules is not None:
                cursor = await conn.execute(
                    "SELECT payer_id FROM availability.insurance_plans"
                    " WHERE organization_id = %s AND plan_id = %s",
                    (rules.organization_id, cmd.insurance_plan_id),
                )
                plan = await cursor.fetchone()
                payer = plan[0] if plan else ""
        zone = ZoneInfo(row[0]) if row else UTC
        return _Prelude(
            rules=rules,
            service_date=cmd.target.start.astimezone(zone).date(),
            payer_id=payer,
        )

    def _start_eligibility(
        self, cmd: BookCommand, prelude: _Prelude, appointment_id: uuid.UUID, budget_end: float
    ) -> asyncio.Task[Eligibility | None]:
        async def run() -> Eligibility | None:
            if not cmd.insurance_plan_id:
                return None  # self-pay
            rules = prelude.rules
            if rules is None or not prelude.payer_id:
                return Eligibility(_ERROR)
            wait_s = max(0.0, budget_end - time.monotonic() - self._config.commit_margin_s)
            request = CheckRequest(
                organization_id=str(rules.organization_id),
                patient_id=cmd.patient_id,
                payer_id=prelude.payer_id,
                member_id=cmd.insurance_member_id,
                service_type_code=rules.service_type_code,
                service_date=prelude.service_date.isoformat(),
                provider_npi=rules.provider_npi,
                appointment_id=str(appointment_id),
                plan_id=cmd.insurance_plan_id,
            )
            if cmd.demographics:
                request.patient_demographics.ParseFromString(cmd.demographics)
            if cmd.subscriber_demographics:
                request.subscriber_demographics.ParseFromString(cmd.subscriber_demographics)
            request.max_wait.FromTimedelta(timedelta(seconds=wait_s))
            try:
                answer = await self._eligibility.check(request, timeout_s=wait_s + 0.1)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise _eligibility_invalid(e) from None
                logger.warning("eligibility check failed", extra={"grpc_code": e.code().name})
                return Eligibility(_ERROR)
            return _eligibility_of(answer)

        return asyncio.create_task(run(), name="booking-eligibility")

    async def _add_eligibility_if_ready(
        self, task: asyncio.Task[Eligibility | None], checked: Checked
    ) -> None:
        """Add an eligibility refusal to `checked` if the answer is (almost) in already."""
        if any(v.reason in _RACE for v in checked.violations):
            return  # taken: no need to hold the caller for the payer
        with contextlib.suppress(TimeoutError, Exception):
            verdict = await asyncio.wait_for(asyncio.shield(task), timeout=0.2)
            if verdict is not None:
                reason = _ELIGIBILITY_REFUSALS.get(verdict.status)
                if reason is not None:
                    checked.refuse(
                        reason,
                        "the payer reports coverage is not active"
                        if reason is RefusalReason.ELIGIBILITY_INACTIVE
                        else "the payer did not find the member",
                        eligibility_check_id=verdict.check_id,
                    )

    async def _decide(
        self,
        conn: Connection,
        cmd: BookCommand,
        checked: Checked,
        task: asyncio.Task[Eligibility | None],
    ) -> tuple[Status, Eligibility | None]:
        verdict = await task
        if verdict is None:
            return Status.BOOKED, None
        if verdict.status == eligibility_pb2.ACTIVE:
            if verdict.verified_at is not None:
                await store.record_verification(
                    conn,
                    cmd.patient_id,
                    checked.plan_payer_id or cmd.insurance_payer_id,
                    self._member_digest(cmd.insurance_member_id),
                    verdict.check_id,
                    verdict.verified_at,
                )
            return Status.BOOKED, verdict
        reason = _ELIGIBILITY_REFUSALS.get(verdict.status)
        if reason is RefusalReason.ELIGIBILITY_INACTIVE:
            raise BookingRefused(
                [
                    Violation(
                        reason,
                        "the payer reports coverage is not active for this visit",
                        eligibility_check_id=verdict.check_id,
                    )
                ]
            )
        if reason is RefusalReason.ELIGIBILITY_NOT_FOUND:
            raise BookingRefused(
                [
                    Violation(
                        reason,
                        "the payer did not find the member",
                        eligibility_check_id=verdict.check_id,
                    )
                ]
            )
        # PENDING or ERROR: book PENDING_VERIFICATION on a recent ACTIVE verification.
        recent = await store.recent_verification(
            conn,
            cmd.patient_id,
            checked.plan_payer_id or cmd.insurance_payer_id,
            self._member_digest(cmd.insurance_member_id),
        )
        if recent is not None and self._clock() - recent[1] <= self._config.verification_max_age:
            return Status.PENDING_VERIFICATION, verdict
        raise BookingRefused(
            [
                Violation(
                    RefusalReason.ELIGIBILITY_UNVERIFIED,
                    "the payer did not answer in time and there is no recent verification;"
                    " retry later",
                    eligibility_check_id=verdict.check_id,
                )
            ]
        )

    def _member_digest(self, member_id: str) -> bytes:
        return self._blind.digest(member_id, purpose="booking.member_id")

    async def _insert_appointment(
        self,
        conn: Connection,
        cmd: BookCommand,
        checked: Checked,
        appointment_id: uuid.UUID,
        status: Status,
        verdict: Eligibility | None,
        principal: Principal,
        now: datetime,
    ) -> None:
        def enc(column: str, value: bytes | str) -> bytes | None:
            if not value:
                return None
            return self._cipher.encrypt(
                value, context=field_context(f"booking.appointments.{column}", appointment_id)
            )

        values: dict[str, object] = {
            "id": appointment_id,
            "organization_id": checked.rules.organization_id,
            "patient_id": cmd.patient_id,
            "provider_id": checked.provider_id,
            "location_id": checked.location_id,
            "visit_type_id": cmd.visit_type_id,
            "start_time": checked.start,
            "end_time": checked.end,
            "time_zone": checked.time_zone,
            "granule_minutes": checked.rules.granule_minutes,
            "status": status.value,
            "insurance_plan_id": cmd.insurance_plan_id,
            "insurance_payer_id": checked.plan_payer_id or cmd.insurance_payer_id,
            "member_id_enc": enc("member_id", cmd.insurance_member_id),
            "visit_reason_enc": enc("visit_reason", cmd.visit_reason),
            "demographics_enc": enc("demographics", cmd.demographics),
            "eligibility_check_id": verdict.check_id if verdict else "",
            "eligibility_status": _STATUS_NAME.get(verdict.status, "") if verdict else "",
            "eligibility_verified_at": verdict.verified_at if verdict else None,
            "next_check_at": now + self._config.recheck_interval
            if status is Status.PENDING_VERIFICATION
            else None,
            "booked_by": types_pb2.ActorRole.Name(_ACTOR[principal.role]),
            "hold_id": cmd.hold_id,
            "created_at": now,
            "updated_at": now,
        }
        for _ in range(8):
            values["confirmation_code"] = new_confirmation_code()
            try:
                async with conn.transaction():  # a savepoint: a code collision retries
                    await store.insert_appointment(conn, values)
                return
            except psycopg.errors.UniqueViolation:
                continue
        raise Conflict("could not mint a unique confirmation code; retry")

    async def _reserve(
        self, conn: Connection, appointment_id: uuid.UUID, checked: Checked
    ) -> list[store.ReservationRow]:
        """Insert the provider's and the chosen resources' reservations.

        A room another transaction reserved meanwhile (the exclusion constraint fires) is
        swapped for another free one of its kind; if none is left, the booking is refused.
        """
        rows = [
            store.ReservationRow(
                checked.provider_id, "PROVIDER", "provider", checked.start, checked.end
            )
        ]
        try:
            async with conn.transaction():
                await store.insert_reservation(
                    conn,
                    appointment_id,
                    checked.provider_id,
                    "PROVIDER",
                    "provider",
                    checked.start,
                    checked.end,
                )
        except psycopg.errors.ExclusionViolation:
            raise BookingRefused(
                [
                    Violation(
                        RefusalReason.TAKEN,
                        "the provider is already booked at that time",
                        slot_ids=checked.slot_ids(checked.starts),
                    )
                ]
            ) from None
        taken: set[uuid.UUID] = set()
        for resource in checked.resources:
            chosen: store.Resource | None = resource
            while chosen is not None:
                try:
                    async with conn.transaction():
                        await store.insert_reservation(
                            conn,
                            appointment_id,
                            chosen.resource_id,
                            chosen.category,
                            chosen.kind,
                            checked.start,
                            checked.end,
                        )
                    rows.append(
                        store.ReservationRow(
                            chosen.resource_id,
                            chosen.category,
                            chosen.kind,
                            checked.start,
                            checked.end,
                        )
                    )
                    taken.add(chosen.resource_id)
                    break
                except psycopg.errors.ExclusionViolation:
                    taken.add(chosen.resource_id)
                    chosen = await self._another(conn, checked, chosen, taken)
            if chosen is None:
                raise BookingRefused(
                    [
                        Violation(
                            RefusalReason.RESOURCE_UNAVAILABLE,
                            f"no {resource.kind} free at the location for the whole visit",
                            resource_kind=resource.kind,
                        )
                    ]
                )
        return rows

    async def _another(
        self, conn: Connection, checked: Checked, lost: store.Resource, taken: set[uuid.UUID]
    ) -> store.Resource | None:
        if lost.resource_id in checked.explicit:
            return None  # the caller chose this one: no substitute
        free = await store.free_resources(
            conn,
            organization_id=checked.rules.organization_id,
            location_id=checked.location_id,
            kinds=[lost.kind],
            start=checked.start,
            end=checked.end,
        )
        chosen = {r.resource_id for r in checked.resources}
        for candidate in free:
            if candidate.resource_id not in taken and candidate.resource_id not in chosen:
                return candidate
        return None

    # ---- the shared check of a start time ---------------------------------------------

    async def _check(
        self,
        conn: Connection,
        principal: Principal,
        *,
        target: Target,
        visit_type_id: uuid.UUID,
        patient_id: str,
        plan_id: str,
        requested_hold: uuid.UUID | None,
        own_appointment: uuid.UUID | None,
        extra_lock: Sequence[tuple[uuid.UUID, datetime]],
        pick_resources: bool,
        explicit_resources: Sequence[uuid.UUID] = (),
        before_resources: Callable[[], Awaitable[None]] | None = None,
    ) -> Checked:
        rules = await store.visit_type_rules(conn, visit_type_id, target.provider_id)
        if rules is None or not _may_see_org(principal, rules.organization_id):
            raise NotFound(
                "no such visit type", reasons=[Reason("VISIT_TYPE_NOT_FOUND", str(visit_type_id))]
            )
        if not rules.provider_found or rules.provider_organization_id != rules.organization_id:
            raise NotFound(
                "no such provider",
                reasons=[Reason("PROVIDER_NOT_FOUND", str(target.provider_id))],
            )
        step = timedelta(minutes=rules.granule_minutes)
        starts = [target.start + step * k for k in range(rules.duration_granules)]
        end = target.start + step * rules.duration_granules
        keys = [(target.provider_id, s) for s in starts]
        locked = await store.lock_granules(conn, sorted({*keys, *extra_lock}))
        by_key = {(g.provider_id, g.start): g for g in locked}
        mine = [by_key.get(k) for k in keys]
        first = mine[0]
        location_id = target.location_id or (first.location_id if first else None)
        checked = Checked(
            rules=rules,
            provider_id=target.provider_id,
            location_id=location_id or uuid.UUID(int=0),
            start=target.start,
            end=end,
            starts=starts,
            time_zone="UTC",
            visit_type_id=visit_type_id,
            explicit=frozenset(explicit_resources),
        )
        if not rules.active or not rules.provider_active:
            checked.refuse(RefusalReason.NOT_OFFERED, "the visit type or provider is not active")
        now = self._clock()
        self._check_window(checked, now)
        await self._check_granules(checked, mine, requested_hold, own_appointment, patient_id)
        facts = await store.place_facts(
            conn,
            organization_id=rules.organization_id,
            provider_id=target.provider_id,
            location_id=checked.location_id,
            visit_type_id=visit_type_id,
            plan_id=plan_id,
            patient_id=patient_id,
        )
        checked.time_zone = facts.time_zone
        if location_id is not None and (not facts.location_found or not facts.location_active):
            checked.refuse(RefusalReason.NOT_OFFERED, "the location is not open for booking")
        elif location_id is not None and not facts.offered:
            checked.refuse(
                RefusalReason.NOT_OFFERED,
                "the provider does not offer this visit type at this location",
            )
        if plan_id:
            checked.plan_payer_id = facts.plan_payer_id
            if not facts.plan_found or not facts.plan_active:
                checked.refuse(RefusalReason.PLAN_NOT_ACCEPTED, f"plan {plan_id} is not active")
            elif not facts.plan_accepted:
                checked.refuse(
                    RefusalReason.PLAN_NOT_ACCEPTED, f"the provider does not accept plan {plan_id}"
                )
        self._check_patient_kind(checked, facts.returning_patient)
        if before_resources is not None:
            await before_resources()
        if pick_resources and location_id is not None:
            await self._pick_resources(conn, checked, explicit_resources)
        return checked

    def _check_window(self, checked: Checked, now: datetime) -> None:
        rules = checked.rules
        days_ahead = rules.maximum_days_ahead or rules.horizon_days
        if checked.start <= now:
            checked.refuse(RefusalReason.OUTSIDE_BOOKING_WINDOW, "the start has passed")
        elif checked.start < now + timedelta(seconds=rules.minimum_notice_s):
            checked.refuse(
                RefusalReason.OUTSIDE_BOOKING_WINDOW,
                f"the visit type needs {rules.minimum_notice_s // 60} minutes' notice",
            )
        elif checked.start > now + timedelta(days=days_ahead):
            checked.refuse(
                RefusalReason.OUTSIDE_BOOKING_WINDOW,
                f"the visit type can be booked at most {days_ahead} days ahead",
            )

    async def _check_granules(
        self,
        checked: Checked,
        granules: Sequence[store.Granule | None],
        requested_hold: uuid.UUID | None,
        own_appointment: uuid.UUID | None,
        patient_id: str,
    ) -> None:
        hold_ids = {g.hold_id for g in granules if g is not None and g.hold_id is not None}
        records = await self._holds.get_many(hold_ids)
        missing: list[datetime] = []
        taken: list[datetime] = []
        blocked: list[datetime] = []
        held: list[datetime] = []
        held_until: datetime | None = None
        own_holds: set[uuid.UUID] = set()
        for start, granule in zip(checked.starts, granules, strict=True):
            if granule is None or granule.location_id != checked.location_id:
                missing.append(start)
            elif granule.status == "BLOCKED":
                blocked.append(start)
            elif granule.status == "BOOKED":
                if own_appointment is None or granule.appointment_id != own_appointment:
                    taken.append(start)
            elif granule.status == "HELD" and granule.hold_id is not None:
                record = records.get(granule.hold_id)
                if record is None:
                    checked.consumed_holds.add(granule.hold_id)  # lapsed: free to take
                elif record.patient_id == patient_id and (
                    requested_hold is None or requested_hold == granule.hold_id
                ):
                    checked.consumed_holds.add(granule.hold_id)
                    own_holds.add(granule.hold_id)
                else:
                    held.append(start)
                    held_until = max(held_until or record.expire_time, record.expire_time)
        if len(own_holds) == 1:
            record = records[next(iter(own_holds))]
            if record.starts == tuple(
                int(s.timestamp()) for s in checked.starts
            ) and record.visit_type_id == str(checked.visit_type_id):
                checked.own_hold = record
        if missing:
            checked.refuse(
                RefusalReason.NOT_OFFERED,
                "the provider is not scheduled for the whole visit at that location",
                slot_ids=checked.slot_ids(missing),
            )
        if blocked:
            checked.refuse(
                RefusalReason.NOT_OFFERED,
                "part of the visit is blocked in the provider's schedule",
                slot_ids=checked.slot_ids(blocked),
            )
        if taken:
            checked.refuse(
                RefusalReason.TAKEN,
                "part of the visit is already booked",
                slot_ids=checked.slot_ids(taken),
            )
        if held:
            checked.refuse(
                RefusalReason.HELD_BY_OTHER,
                "part of the visit is held for another patient",
                slot_ids=checked.slot_ids(held),
                hold_expire_time=held_until,
            )

    def _check_patient_kind(self, checked: Checked, returning: bool) -> None:
        kind = checked.rules.patient_kind
        if kind == "NEW" and returning:
            checked.refuse(
                RefusalReason.PATIENT_KIND_MISMATCH,
                "the visit type is for new patients and the patient has seen this provider",
            )
        elif kind == "RETURNING" and not returning:
            checked.refuse(
                RefusalReason.PATIENT_KIND_MISMATCH,
                "the visit type is for returning patients of this provider",
            )
        elif not returning and not checked.rules.provider_accepting_new:
            checked.refuse(
                RefusalReason.PATIENT_KIND_MISMATCH, "the provider is not accepting new patients"
            )

    async def _pick_resources(
        self, conn: Connection, checked: Checked, explicit: Sequence[uuid.UUID]
    ) -> None:
        needs = checked.rules.needs
        if not needs and not explicit:
            return
        free = await store.free_resources(
            conn,
            organization_id=checked.rules.organization_id,
            location_id=checked.location_id,
            kinds=[n.kind for n in needs],
            start=checked.start,
            end=checked.end,
        )
        free_ids = {r.resource_id for r in free}
        chosen: list[store.Resource] = []
        explicit_by_kind: dict[str, list[store.Resource]] = {}
        if explicit:
            known = await store.resources_by_id(conn, checked.rules.organization_id, explicit)
            wanted = {n.kind: n for n in needs}
            for resource_id in explicit:
                info = known.get(resource_id)
                if (
                    info is None
                    or info[0] != checked.location_id
                    or info[1] not in wanted
                    or not info[3]
                    or resource_id not in free_ids
                ):
                    kind = info[1] if info else ""
                    checked.refuse(
                        RefusalReason.RESOURCE_UNAVAILABLE,
                        f"resource {resource_id} is not a free {kind or 'needed resource'}"
                        " at the location for the whole visit",
                        resource_kind=kind,
                    )
                    continue
                explicit_by_kind.setdefault(info[1], []).append(
                    store.Resource(resource_id, info[1], info[2])
                )
        for need in needs:
            picked = explicit_by_kind.get(need.kind, [])[: need.count]
            picked_ids = {r.resource_id for r in picked}
            for resource in free:
                if len(picked) >= need.count:
                    break
                if (
                    resource.kind == need.kind
                    and resource.category == need.category
                    and resource.resource_id not in picked_ids
                    and resource.resource_id not in explicit
                ):
                    picked.append(resource)
                    picked_ids.add(resource.resource_id)
            if len(picked) < need.count:
                checked.refuse(
                    RefusalReason.RESOURCE_UNAVAILABLE,
                    f"no {need.kind} free at the location for the whole visit",
                    resource_kind=need.kind,
                )
            chosen.extend(picked)
        checked.resources = chosen

    # ---- reschedule, cancel, status moves ---------------------------------------------

    async def reschedule(
        self, cmd: RescheduleCommand, principal: Principal
    ) -> appointment_pb2.Appointment:
        scope = f"reschedule:{cmd.appointment_id}"
        replay = await self._replay(scope, cmd.idempotency_key, cmd.request_digest, principal)
        if replay is not None:
            return replay
        try:
            async with self._pool.connection() as conn, conn.transaction():
                row = await self._visible(conn, cmd.appointment_id, principal, lock=True)
                if not await store.claim_idempotency_key(
                    conn, scope, cmd.idempotency_key, cmd.request_digest, cmd.appointment_id
                ):
                    raise _KeyTaken
                _check_etag(row, cmd.etag)
                now = self._clock()
                check_move(
                    Move.RESCHEDULE, principal, MoveContext(Status(row.status), row.start_time, now)
                )
                old = await store.booked_granules(conn, row.id, row.provider_id)
                old_keys = [(row.provider_id, g[0]) for g in old]
                released: list[store.ReservationRow] = []

                async def release_old() -> None:
                    released.extend(await store.release_reservations(conn, row.id))

                checked = await self._check(
                    conn,
                    principal,
                    target=cmd.target,
                    visit_type_id=row.visit_type_id,
                    patient_id=row.patient_id,
                    plan_id=row.insurance_plan_id,
                    requested_hold=cmd.hold_id,
                    own_appointment=row.id,
                    extra_lock=old_keys,
                    pick_resources=True,
                    explicit_resources=cmd.resource_ids,
                    before_resources=release_old,
                )
                if checked.rules.organization_id != row.organization_id:
                    raise NotFound("no such provider")
                if checked.violations:
                    raise BookingRefused(checked.violations)
                new_starts = (
                    set(checked.starts) if checked.provider_id == row.provider_id else set()
                )
                freed_starts = [g[0] for g in old if g[0] not in new_starts]
                freed = (
                    await store.set_granules(conn, row.provider_id, freed_starts, status="OPEN")
                    if freed_starts
                    else []
                )
                await conn.execute(
                    "UPDATE booking.appointments SET provider_id = %s, location_id = %s,"
                    " start_time = %s, end_time = %s, time_zone = %s, version = version + 1,"
                    " updated_at = %s WHERE id = %s",
                    (
                        checked.provider_id,
                        checked.location_id,
                        checked.start,
                        checked.end,
                        checked.time_zone,
                        now,
                        row.id,
                    ),
                )
                reserved = await self._reserve(conn, row.id, checked)
                granules = await store.set_granules(
                    conn,
                    checked.provider_id,
                    checked.starts,
                    status="BOOKED",
                    appointment_id=row.id,
                )
                previous = _placement_of(row, old, released)
                placement = _placement(checked, granules, reserved)
                events = [
                    Event(
                        "appointment",
                        str(row.id),
                        appointment_events_pb2.AppointmentRescheduled(
                            appointment_id=str(row.id),
                            patient_id=row.patient_id,
                            visit_type_id=str(row.visit_type_id),
                            previous_placement=previous,
                            placement=placement,
                            rescheduled_by=_ACTOR[principal.role],
                        ),
                    )
                ]
                slot_events = [
                    Event(
                        "slots",
                        str(checked.provider_id),
                        slot_events_pb2.SlotsBooked(
                            provider_id=str(checked.provider_id),
                            location_id=str(checked.location_id),
                            appointment_id=str(row.id),
                            granules=placement_granules(checked.provider_id, granules),
                            resources=list(placement.resources),
                        ),
                    )
                ]
                if freed:
                    slot_events.insert(
                        0,
                        Event(
                            "slots",
                            str(row.provider_id),
                            _freed_event(
                                row, freed, released, slot_events_pb2.SlotFreed.RESCHEDULE
                            ),
                        ),
                    )
                await write_events(
                    conn,
                    store.SCHEMA,
                    self._origin(row.organization_id, principal, now, str(row.id)),
                    events + slot_events,
                )
        except _KeyTaken:
            replay = await self._replay(scope, cmd.idempotency_key, cmd.request_digest, principal)
            if replay is None:
                raise Conflict("the request raced with its own retry; retry it") from None
            return replay
        for hold_id in checked.consumed_holds:
            await self._holds.forget(hold_id)
        return await self.get(cmd.appointment_id, principal)

    async def cancel(
        self,
        appointment_id: uuid.UUID,
        reason: appointment_pb2.CancellationReason.ValueType,
        note: str,
        etag: str,
        principal: Principal,
    ) -> appointment_pb2.Appointment:
        async with self._pool.connection() as conn, conn.transaction():
            row = await self._visible(conn, appointment_id, principal, lock=True)
            if row.status == Status.CANCELLED:
                return await self._view(conn, row)
            _check_etag(row, etag)
            now = self._clock()
            check_move(Move.CANCEL, principal, MoveContext(Status(row.status), row.start_time, now))
            released = await store.release_reservations(conn, row.id)
            booked = await store.booked_granules(conn, row.id, row.provider_id)
            starts = [g[0] for g in booked]
            conflicts = await store.open_conflict_granules(conn, row.id)
            events: list[Event] = []
            if conflicts:
                # The schedule no longer wants this time (a block landed on the visit): the
                # granules go to BLOCKED, and staff's conflict is resolved by the cancel.
                granules = await store.set_granules(conn, row.provider_id, starts, status="BLOCKED")
                await store.resolve_conflicts(conn, conflicts)
                slot_event: Any = slot_events_pb2.SlotsBlocked(
                    provider_id=str(row.provider_id),
                    location_id=str(row.location_id),
                    granules=placement_granules(row.provider_id, granules),
                )
            else:
                granules = await store.set_granules(conn, row.provider_id, starts, status="OPEN")
                slot_event = _freed_event(
                    row, granules, released, slot_events_pb2.SlotFreed.CANCELLATION
                )
            note_enc = (
                self._cipher.encrypt(
                    note, context=field_context("booking.appointments.cancellation_note", row.id)
                )
                if note
                else None
            )
            await conn.execute(
                "UPDATE booking.appointments SET status = 'CANCELLED', cancellation_reason = %s,"
                " cancellation_note_enc = %s, next_check_at = NULL, version = version + 1,"
                " updated_at = %s WHERE id = %s",
                (appointment_pb2.CancellationReason.Name(reason), note_enc, now, row.id),
            )
            placement = _placement_of(row, booked, released)
            events.append(
                Event(
                    "appointment",
                    str(row.id),
                    appointment_events_pb2.AppointmentCancelled(
                        appointment_id=str(row.id),
                        patient_id=row.patient_id,
                        visit_type_id=str(row.visit_type_id),
                        placement=placement,
                        cancellation_reason=reason,
                        cancelled_by=_ACTOR[principal.role],
                    ),
                )
            )
            if granules:
                events.append(Event("slots", str(row.provider_id), slot_event))
            await write_events(
                conn,
                store.SCHEMA,
                self._origin(row.organization_id, principal, now, str(row.id)),
                events,
            )
            updated = await store.get_appointment(conn, row.id)
            assert updated is not None
            return await self._view(conn, updated)

    async def move(
        self, appointment_id: uuid.UUID, move: Move, etag: str, principal: Principal | None
    ) -> appointment_pb2.Appointment:
        """Check-in, complete, no-show, or (principal None: medsched) confirm."""
        async with self._pool.connection() as conn, conn.transaction():
            actor = principal or Principal(subject="medsched", role=Role.SERVICE)
            row = await self._visible(conn, appointment_id, actor, lock=True)
            _check_etag(row, etag)
            now = self._clock()
            target = check_move(move, actor, MoveContext(Status(row.status), row.start_time, now))
            assert target is not None
            await conn.execute(
                "UPDATE booking.appointments SET status = %s, version = version + 1,"
                " next_check_at = NULL, updated_at = %s WHERE id = %s",
                (target.value, now, row.id),
            )
            changed = appointment_events_pb2.AppointmentStatusChanged(
                appointment_id=str(row.id),
                patient_id=row.patient_id,
                provider_id=str(row.provider_id),
                previous_status=_STATUS_PB[Status(row.status)],
                status=_STATUS_PB[target],
                changed_by=_ACTOR[actor.role] if principal else types_pb2.SYSTEM,
            )
            changed.start_time.FromDatetime(row.start_time)
            await write_events(
                conn,
                store.SCHEMA,
                self._origin(row.organization_id, principal, now, str(row.id)),
                [Event("appointment", str(row.id), changed)],
            )
            updated = await store.get_appointment(conn, row.id)
            assert updated is not None
            return await self._view(conn, updated)

    # ---- re-checks of PENDING_VERIFICATION --------------------------------------------

    async def recheck_pending(self, limit: int = 50) -> int:
        """Ask again for appointments booked on a recent verification; returns how many moved."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT id FROM booking.appointments WHERE status = 'PENDING_VERIFICATION'"
                " AND next_check_at <= %s ORDER BY next_check_at LIMIT %s",
                (self._clock(), limit),
            )
            due = [row[0] for row in await cursor.fetchall()]
        moved = 0
        for appointment_id in due:
            try:
                moved += await self._recheck_one(appointment_id)
            except Exception as e:  # one failure must not stop the others
                logger.warning("re-check failed", extra={"error_type": type(e).__name__})
        return moved

    async def _recheck_one(self, appointment_id: uuid.UUID) -> int:
        async with self._pool.connection() as conn:
            row = await store.get_appointment(conn, appointment_id)
        if row is None or row.status != Status.PENDING_VERIFICATION:
            return 0
        verdict: Eligibility | None = None
        if row.eligibility_check_id:
            with contextlib.suppress(grpc.aio.AioRpcError):
                verdict = _eligibility_of(
                    await self._eligibility.get(row.eligibility_check_id, timeout_s=5.0)
                )
        if verdict is None or verdict.status == _ERROR:
            verdict = await self._ask_again(row)
        now = self._clock()
        async with self._pool.connection() as conn, conn.transaction():
            current = await store.get_appointment(conn, appointment_id, lock=True)
            if current is None or current.status != Status.PENDING_VERIFICATION:
                return 0
            if verdict.status == eligibility_pb2.ACTIVE:
                await conn.execute(
                    "UPDATE booking.appointments SET eligibility_check_id = %s,"
                    " eligibility_status = 'ACTIVE', eligibility_verified_at = %s"
                    " WHERE id = %s",
                    (verdict.check_id, verdict.verified_at, appointment_id),
                )
        if verdict.status == eligibility_pb2.ACTIVE:
            await self.move(appointment_id, Move.CONFIRM, "", None)
            return 1
        final = verdict.status in (eligibility_pb2.INACTIVE, eligibility_pb2.NOT_FOUND)
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(
                "UPDATE booking.appointments SET eligibility_check_id = %s,"
                " eligibility_status = %s, check_attempts = check_attempts + 1,"
                " next_check_at = CASE WHEN %s THEN NULL ELSE %s END WHERE id = %s"
                " AND status = 'PENDING_VERIFICATION'",
                (
                    verdict.check_id or row.eligibility_check_id,
                    _STATUS_NAME.get(verdict.status, "ERROR"),
                    final,
                    now + self._config.recheck_interval,
                    appointment_id,
                ),
            )
        return 0

    async def _ask_again(self, row: store.AppointmentRow) -> Eligibility:
        member = (
            self._cipher.decrypt_str(
                row.member_id_enc, context=field_context("booking.appointments.member_id", row.id)
            )
            if row.member_id_enc
            else ""
        )
        async with self._pool.connection() as conn:
            rules = await store.visit_type_rules(conn, row.visit_type_id, row.provider_id)
        if rules is None or not member:
            return Eligibility(_ERROR)
        request = CheckRequest(
            organization_id=str(row.organization_id),
            patient_id=row.patient_id,
            payer_id=row.insurance_payer_id,
            member_id=member,
            service_type_code=rules.service_type_code,
            service_date=row.start_time.astimezone(ZoneInfo(row.time_zone)).date().isoformat(),
            provider_npi=rules.provider_npi,
            appointment_id=str(row.id),
            plan_id=row.insurance_plan_id,
        )
        if row.demographics_enc:
            request.patient_demographics.ParseFromString(
                self._cipher.decrypt(
                    row.demographics_enc,
                    context=field_context("booking.appointments.demographics", row.id),
                )
            )
        request.max_cache_age.FromTimedelta(timedelta(0))
        request.max_wait.FromTimedelta(timedelta(seconds=3))
        try:
            return _eligibility_of(await self._eligibility.check(request, timeout_s=5.0))
        except grpc.aio.AioRpcError:
            return Eligibility(_ERROR)

    async def prune(self) -> int:
        async with self._pool.connection() as conn, conn.transaction():
            return await store.prune_idempotency_keys(conn, self._config.idempotency_retention_days)

    # ---- reads ------------------------------------------------------------------------

    async def get(
        self, appointment_id: uuid.UUID, principal: Principal
    ) -> appointment_pb2.Appointment:
        async with self._pool.connection() as conn:
            row = await self._visible(conn, appointment_id, principal)
            return await self._view(conn, row)

    async def _visible(
        self,
        conn: Connection,
        appointment_id: uuid.UUID,
        principal: Principal,
        *,
        lock: bool = False,
    ) -> store.AppointmentRow:
        row = await store.get_appointment(conn, appointment_id, lock=lock)
        if row is None or not _may_act_for(principal, row.patient_id, str(row.organization_id)):
            # Another patient's appointment looks exactly like one that does not exist.
            raise NotFound(
                "no such appointment",
                reasons=[Reason("APPOINTMENT_NOT_FOUND", str(appointment_id))],
            )
        return row

    async def list_provider_day(
        self,
        organization_id: uuid.UUID,
        provider_id: uuid.UUID,
        day: date,
        include_cancelled: bool,
        principal: Principal,
    ) -> list[appointment_pb2.Appointment]:
        _require_staff_of(principal, organization_id)
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT {store.APPOINTMENT_COLUMNS} FROM booking.appointments"
                " WHERE organization_id = %s AND provider_id = %s"
                " AND start_time >= %s AND start_time < %s"
                " AND (start_time AT TIME ZONE time_zone)::date = %s"
                " AND (%s OR status <> 'CANCELLED') ORDER BY start_time, id",
                (
                    organization_id,
                    provider_id,
                    datetime.combine(day, datetime.min.time(), UTC) - timedelta(days=1),
                    datetime.combine(day, datetime.min.time(), UTC) + timedelta(days=2),
                    day,
                    include_cancelled,
                ),
            )
            rows = [store.AppointmentRow(*r) for r in await cursor.fetchall()]
            return await self._views(conn, rows)

    async def list_resource_day(
        self,
        organization_id: uuid.UUID,
        resource_id: uuid.UUID,
        day: date,
        include_cancelled: bool,
        principal: Principal,
    ) -> list[appointment_pb2.Appointment]:
        _require_staff_of(principal, organization_id)
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT l.time_zone FROM availability.resources r"
                " JOIN availability.locations l ON l.id = r.location_id"
                " WHERE r.id = %s AND r.organization_id = %s",
                (resource_id, organization_id),
            )
            found = await cursor.fetchone()
            if found is None:
                raise NotFound(
                    "no such resource", reasons=[Reason("RESOURCE_NOT_FOUND", str(resource_id))]
                )
            zone = ZoneInfo(found[0])
            day_start = datetime.combine(day, datetime.min.time(), zone)
            day_end = datetime.combine(day + timedelta(days=1), datetime.min.time(), zone)
            columns = ", ".join(f"a.{c.strip()}" for c in store.APPOINTMENT_COLUMNS.split(","))
            cursor = await conn.execute(
                f"SELECT {columns} FROM booking.appointments a"
                " WHERE a.organization_id = %s AND a.start_time >= %s AND a.start_time < %s"
                " AND (%s OR a.status <> 'CANCELLED')"
                " AND EXISTS (SELECT 1 FROM booking.reservations r WHERE r.appointment_id = a.id"
                "   AND r.resource_id = %s AND r.during = tstzrange(a.start_time, a.end_time))"
                " ORDER BY a.start_time, a.id",
                (organization_id, day_start, day_end, include_cancelled, resource_id),
            )
            rows = [store.AppointmentRow(*r) for r in await cursor.fetchall()]
            return await self._views(conn, rows)

    async def list_patient(
        self,
        patient_id: str,
        *,
        page_size: int,
        page_token: str,
        start: datetime | None,
        end: datetime | None,
        statuses: Sequence[Status],
        organization_id: uuid.UUID | None,
        principal: Principal,
    ) -> tuple[list[appointment_pb2.Appointment], str]:
        if principal.role is Role.PATIENT and principal.patient_id != patient_id:
            raise PermissionDenied("patients may list only their own appointments")
        after = _decode_token(page_token)
        lower = start or self._clock()
        wanted = [s.value for s in statuses] or [
            s.value for s in Status if s is not Status.CANCELLED
        ]
        orgs: list[uuid.UUID] | None = None
        if principal.role is Role.STAFF:
            orgs = [uuid.UUID(o) for o in principal.organization_ids if _is_uuid(o)]
        if organization_id is not None:
            orgs = [o for o in (orgs or [organization_id]) if o == organization_id]
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT {store.APPOINTMENT_COLUMNS} FROM booking.appointments"
                " WHERE patient_id = %s AND start_time >= %s"
                " AND (%s::timestamptz IS NULL OR start_time < %s)"
                " AND status = ANY(%s)"
                " AND (%s::uuid[] IS NULL OR organization_id = ANY(%s))"
                " AND (%s::timestamptz IS NULL OR (start_time, id) > (%s, %s::uuid))"
                " ORDER BY start_time, id LIMIT %s",
                (
                    patient_id,
                    lower,
                    end,
                    end,
                    wanted,
                    orgs,
                    orgs,
                    after[0] if after else None,
                    after[0] if after else None,
                    after[1] if after else None,
                    page_size + 1,
                ),
            )
            rows = [store.AppointmentRow(*r) for r in await cursor.fetchall()]
            more = len(rows) > page_size
            rows = rows[:page_size]
            views = await self._views(conn, rows)
        token = _encode_token(rows[-1].start_time, rows[-1].id) if more and rows else ""
        return views, token

    async def _view(
        self, conn: Connection, row: store.AppointmentRow
    ) -> appointment_pb2.Appointment:
        return (await self._views(conn, [row]))[0]

    async def _views(
        self, conn: Connection, rows: Sequence[store.AppointmentRow]
    ) -> list[appointment_pb2.Appointment]:
        reservations = await store.reservations_of(conn, [r.id for r in rows])
        return [self._message(row, reservations.get(row.id, [])) for row in rows]

    def _message(
        self, row: store.AppointmentRow, reservations: Sequence[store.ReservationRow]
    ) -> appointment_pb2.Appointment:
        def dec(column: str, blob: bytes | None) -> bytes:
            if not blob:
                return b""
            return self._cipher.decrypt(
                blob, context=field_context(f"booking.appointments.{column}", row.id)
            )

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
            status=_STATUS_PB[Status(row.status)],
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

    def _origin(
        self,
        organization_id: uuid.UUID | str,
        principal: Principal | None,
        now: datetime,
        correlation_id: str,
    ) -> Origin:
        return Origin(
            organization_id=str(organization_id),
            occurred_at=now,
            actor_role=_ACTOR[principal.role] if principal else types_pb2.SYSTEM,
            # Patients' subjects are ids, never names; staff subjects are staff ids.
            actor_id=principal.subject if principal else "",
            correlation_id=correlation_id,
        )


@dataclass(frozen=True)
class _Prelude:
    rules: store.VisitTypeRules | None
    service_date: date
    payer_id: str


# ---- helpers ---------------------------------------------------------------------------------

_RACE = frozenset(
    {RefusalReason.TAKEN, RefusalReason.HELD_BY_OTHER, RefusalReason.RESOURCE_UNAVAILABLE}
)
_ELIGIBILITY_REFUSALS = {
    eligibility_pb2.INACTIVE: RefusalReason.ELIGIBILITY_INACTIVE,
    eligibility_pb2.NOT_FOUND: RefusalReason.ELIGIBILITY_NOT_FOUND,
}
_STATUS_PB = {
    Status.BOOKED: appointment_pb2.Appointment.BOOKED,
    Status.PENDING_VERIFICATION: appointment_pb2.Appointment.PENDING_VERIFICATION,
    Status.CHECKED_IN: appointment_pb2.Appointment.CHECKED_IN,
    Status.COMPLETED: appointment_pb2.Appointment.COMPLETED,
    Status.NO_SHOW: appointment_pb2.Appointment.NO_SHOW,
    Status.CANCELLED: appointment_pb2.Appointment.CANCELLED,
}
_STATUS_NAME = {
    eligibility_pb2.ACTIVE: "ACTIVE",
    eligibility_pb2.INACTIVE: "INACTIVE",
    eligibility_pb2.NOT_FOUND: "NOT_FOUND",
    eligibility_pb2.ERROR: "ERROR",
    eligibility_pb2.PENDING: "PENDING",
}


def _eligibility_of(answer: Check) -> Eligibility:
    verified = (
        answer.response_time.ToDatetime(tzinfo=UTC) if answer.HasField("response_time") else None
    )
    return Eligibility(status=answer.status, check_id=answer.check_id, verified_at=verified)


_ELIGIBILITY_FIELDS = {
    "member_id": "insurance_member_id",
    "payer_id": "insurance_payer_id",
    "plan_id": "insurance_plan_id",
}


def _eligibility_invalid(error: grpc.aio.AioRpcError) -> InvalidArgument:
    """The eligibility service's field violations, named by this request's field paths."""
    import google.rpc.error_details_pb2 as error_details_pb2  # type: ignore[import-untyped, unused-ignore]

    from common.grpc_client import status_details

    violations: list[FieldViolation] = []
    status = status_details(error)
    for detail in status.details if status is not None else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            for v in bad.field_violations:
                head, _, rest = v.field.partition(".")
                name = _ELIGIBILITY_FIELDS.get(head, head)
                violations.append(FieldViolation(f"{name}.{rest}" if rest else name, v.description))
    if not violations:
        violations.append(
            FieldViolation("insurance_member_id", "was refused by the eligibility check")
        )
    return InvalidArgument(violations)


def _authorize_patient(principal: Principal, patient_id: str) -> None:
    if principal.role is Role.PATIENT and principal.patient_id != patient_id:
        raise PermissionDenied("patients may book and hold only for themselves")


def _may_see_org(principal: Principal, organization_id: uuid.UUID) -> bool:
    if principal.role is Role.STAFF:
        return str(organization_id) in principal.organization_ids
    return True


def _may_act_for(principal: Principal, patient_id: str, organization_id: str) -> bool:
    if principal.role is Role.PATIENT:
        return principal.patient_id == patient_id
    if principal.role is Role.STAFF:
        return organization_id in principal.organization_ids
    return principal.role in (Role.ADMIN, Role.SERVICE)


def _require_staff_of(principal: Principal, organization_id: uuid.UUID) -> None:
    if principal.role is Role.PATIENT:
        raise PermissionDenied("only staff may list a provider's or resource's day")
    if not can_access_organization(principal, str(organization_id)):
        raise PermissionDenied("not a member of this organization")


def _check_etag(row: store.AppointmentRow, etag: str) -> None:
    if etag and etag != etag_of(row.version):
        raise Conflict(
            "the appointment changed since it was read; read it again and retry",
            reasons=[Reason("ETAG_MISMATCH", str(row.id))],
        )


def _granules(
    provider_id: uuid.UUID, granules: Sequence[tuple[datetime, datetime, int]]
) -> list[slot_events_pb2.Granule]:
    return placement_granules(provider_id, granules)


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


def _spans(rows: Sequence[store.ReservationRow]) -> list[slot_events_pb2.ResourceSpan]:
    spans = []
    for r in rows:
        if r.resource_type == "PROVIDER":
            continue
        span = slot_events_pb2.ResourceSpan(resource_id=str(r.resource_id))
        span.start_time.FromDatetime(r.start)
        span.end_time.FromDatetime(r.end)
        spans.append(span)
    return spans


def _placement(
    checked: Checked,
    granules: Sequence[tuple[datetime, datetime, int]],
    reserved: Sequence[store.ReservationRow],
) -> appointment_events_pb2.AppointmentPlacement:
    placement = appointment_events_pb2.AppointmentPlacement(
        provider_id=str(checked.provider_id),
        location_id=str(checked.location_id),
        time_zone=checked.time_zone,
        slot_ids=[slot_id(checked.provider_id, g[0]) for g in granules],
        resources=_spans(reserved),
    )
    placement.start_time.FromDatetime(checked.start)
    placement.end_time.FromDatetime(checked.end)
    return placement


def _placement_of(
    row: store.AppointmentRow,
    granules: Sequence[tuple[datetime, datetime]],
    released: Sequence[store.ReservationRow],
) -> appointment_events_pb2.AppointmentPlacement:
    placement = appointment_events_pb2.AppointmentPlacement(
        provider_id=str(row.provider_id),
        location_id=str(row.location_id),
        time_zone=row.time_zone,
        slot_ids=[slot_id(row.provider_id, g[0]) for g in granules],
        resources=_spans(released),
    )
    placement.start_time.FromDatetime(row.start_time)
    placement.end_time.FromDatetime(row.end_time)
    return placement


def _freed_event(
    row: store.AppointmentRow,
    granules: Sequence[tuple[datetime, datetime, int]],
    released: Sequence[store.ReservationRow],
    cause: slot_events_pb2.SlotFreed.Cause.ValueType,
) -> slot_events_pb2.SlotFreed:
    freed = slot_events_pb2.SlotFreed(
        provider_id=str(row.provider_id),
        location_id=str(row.location_id),
        granules=placement_granules(row.provider_id, granules),
        resources=_spans(released),
        cause=cause,
        appointment_id=str(row.id),
        visit_type_id=str(row.visit_type_id),
    )
    if granules:
        freed.start_time.FromDatetime(granules[0][0])
        freed.end_time.FromDatetime(granules[-1][1])
    return freed


def _encode_token(start: datetime, appointment_id: uuid.UUID) -> str:
    raw = f"{start.astimezone(UTC).isoformat()}|{appointment_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> tuple[datetime, uuid.UUID] | None:
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        stamp, _, ident = raw.partition("|")
        return datetime.fromisoformat(stamp), uuid.UUID(ident)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument.single(
            "page_token", "is not a page token this service issued"
        ) from None


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


__all__ = ["BookingConfig", "BookingService", "replace"]
