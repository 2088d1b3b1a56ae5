"""The booking use cases: hold, book, reschedule, cancel, the status workflow, and lists.

The guarantee against double booking is PostgreSQL's: granules are row-locked in one global
order and checked (status, owner) inside the transaction that changes them, and every
reservation of a provider, room or piece of equipment is covered by an exclusion constraint.
Holds (Redis) and the search index are courtesies on top.

Booking runs eligibility in parallel with the database work: the check starts before the
transaction, the transaction locks and checks everything, then waits for the answer (within
the request's budget) and commits per policy, or rolls back leaving nothing.

Beside this module: `checks` (the shared check of a start time), `messages` (protobuf shapes of
rows and placements), `eligibility` (the port to eligibility_svc and how its answers are
read), `store` (SQL), `holds` (Redis), `domain` (pure rules).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import psycopg
import psycopg.errors

from booking_svc import store
from booking_svc.checks import Checked, StartChecker, slot_id
from booking_svc.domain import (
    RACE_REASONS,
    BookCommand,
    BookingRefused,
    HoldCommand,
    Move,
    MoveContext,
    RefusalReason,
    RescheduleCommand,
    Status,
    Violation,
    check_move,
    etag_of,
    new_confirmation_code,
)
from booking_svc.eligibility import (
    ELIGIBILITY_REFUSALS,
    STATUS_NAME,
    CheckRequest,
    Eligibility,
    EligibilityPort,
    invalid_request_of,
    verdict_of,
)
from booking_svc.holds import HoldRecord, HoldStore
from booking_svc.messages import (
    ACTOR,
    STATUS_PB,
    appointment_message,
    freed_event,
    placement_granules,
    placement_of_check,
    placement_of_row,
)
from common.auth import Principal, Role, can_access_organization
from common.crypto import BlindIndex, FieldCipher, field_context, normalize_identifier
from common.db import Connection, Pool
from common.errors import (
    AlreadyExists,
    Conflict,
    DependencyUnavailable,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
)
from common.events import Event, Origin, write_events
from medsched.availability.v1 import schedule_resources_pb2
from medsched.booking.v1 import appointment_pb2
from medsched.common.v1 import types_pb2
from medsched.eligibility.v1 import eligibility_pb2
from medsched.events.v1 import appointment_events_pb2, schedule_events_pb2, slot_events_pb2

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
    commit_margin_s: float = 0.3
    # How much longer than its wait the eligibility call may take to answer (its own
    # bookkeeping after the payer's wait); taken out of the commit margin.
    eligibility_grace_s: float = 0.15
    verification_max_age: timedelta = timedelta(days=30)
    recheck_interval: timedelta = timedelta(minutes=5)
    idempotency_retention_days: int = 30


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
        self._checker = StartChecker(holds, clock)

    @contextlib.asynccontextmanager
    async def _db(self, *, until: float | None = None) -> AsyncIterator[Connection]:
        """A pooled connection; a lost or unreachable database is UNAVAILABLE, not a bug.

        Connection failures, terminated backends, deadlock victims and pool timeouts are all
        `psycopg.OperationalError`s: nothing was committed, and a retry (with the same
        idempotency key) is safe, so callers are told to retry.
        """
        timeout = None if until is None else max(0.01, until - time.monotonic())
        try:
            async with self._pool.connection(timeout=timeout) as conn:
                yield conn
        except psycopg.OperationalError as e:
            logger.warning("database unavailable", extra={"error_type": type(e).__name__})
            raise DependencyUnavailable("the database is unavailable; retry") from e

    # ---- holds ------------------------------------------------------------------------

    async def hold(self, cmd: HoldCommand, principal: Principal) -> HoldRecord:
        _authorize_patient(principal, cmd.patient_id)
        ttl = self._hold_ttl(cmd.ttl, principal)
        async with self._db() as conn, conn.transaction():
            checked = await self._checker.check(
                conn,
                principal,
                target=cmd.target,
                visit_type_id=cmd.visit_type_id,
                patient_id=cmd.patient_id,
                plan_id="",
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
                granules=placement_granules(checked.provider_id, granules),
            )
            held.expire_time.FromDatetime(record.expire_time)
            released = await self._let_go_of_holds(conn, checked, keep=hold_id)
            await write_events(
                conn,
                store.SCHEMA,
                self._origin(checked.rules.organization_id, principal, now, str(hold_id)),
                [Event("slots", str(checked.provider_id), held), *released],
            )
        await self._forget_holds(checked, keep=hold_id)
        return record

    async def _let_go_of_holds(
        self, conn: Connection, checked: Checked, *, keep: uuid.UUID | None = None
    ) -> list[Event]:
        """Release what is still HELD of the holds a request took over; their events.

        A hold the request consumed (the patient's own) or found lapsed may cover granules
        the request does not take (another visit type, a neighbouring start). Leaving them
        HELD without a record would hide them from search until the sweeper came by, so
        they are released here, in the request's transaction. Granules another transaction
        has locked are skipped (never waited for, so no lock-order deadlock): the sweeper
        releases them later.
        """
        events: list[Event] = []
        reasons = {h: slot_events_pb2.SlotsReleased.EXPIRED for h in checked.lapsed_holds}
        reasons.update({h: slot_events_pb2.SlotsReleased.RELEASED for h in checked.consumed_holds})
        for hold_id in sorted(reasons.keys() - {keep}):
            released = await store.release_hold_granules(conn, hold_id, skip_locked=True)
            if released is None:
                continue
            _, provider, location, granules = released
            events.append(
                Event(
                    "slots",
                    str(provider),
                    slot_events_pb2.SlotsReleased(
                        provider_id=str(provider),
                        location_id=str(location),
                        hold_id=str(hold_id),
                        granules=placement_granules(provider, granules),
                        reason=reasons[hold_id],
                    ),
                )
            )
        return events

    async def _forget_holds(self, checked: Checked, *, keep: uuid.UUID | None = None) -> None:
        """After commit: drop the Redis records of the holds the request took over."""
        for hold_id in (checked.consumed_holds | checked.lapsed_holds) - {keep}:
            await self._holds.forget(hold_id)

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
            raise NotFound(
                "no such hold",
                reasons=[
                    Reason("HOLD_NOT_FOUND", str(hold_id), resource_type="medsched.booking.v1.Hold")
                ],
            )
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
        async with self._db() as conn, conn.transaction():
            released = await store.release_hold_granules(conn, hold_id)
            if released is None:
                return False
            org, provider, location, granules = released
            event = slot_events_pb2.SlotsReleased(
                provider_id=str(provider),
                location_id=str(location),
                hold_id=str(hold_id),
                granules=placement_granules(provider, granules),
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
        async with self._db() as conn:
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
        # The budget covers everything from here, waits for a pool connection included.
        budget_end = time.monotonic() + self._config.budget_s
        if deadline is not None:
            budget_end = min(budget_end, deadline)
        scope = f"book:{cmd.patient_id}"
        async with self._db(until=budget_end) as conn:
            found = await store.find_idempotency_key(conn, scope, cmd.idempotency_key)
            prelude = None if found is not None else await self._prelude(conn, cmd)
        if prelude is None:
            replay = await self._replay(scope, cmd.idempotency_key, cmd.request_digest, principal)
            if replay is not None:
                return replay
            raise Conflict("the idempotency key expired while it was read; retry")
        appointment_id = uuid.uuid4()
        eligibility_task = self._start_eligibility(cmd, prelude, appointment_id, budget_end)
        try:
            if cmd.insurance_plan_id and not await _done_within(eligibility_task, 0.05):
                # The payer is thinking. Check the start now, holding its locks for
                # milliseconds only, so a taken or unbookable start is refused at once; then
                # wait for the payer holding neither locks nor a pool connection, and check
                # again (for real) in the transaction that books. Holding a connection for
                # the whole payer wait would make concurrent bookings queue for connections
                # outside their budget.
                await self._check_before_eligibility(cmd, principal, eligibility_task, budget_end)
                await asyncio.wait({eligibility_task})
            async with self._db(until=budget_end) as conn, conn.transaction():
                if not await store.claim_idempotency_key(
                    conn, scope, cmd.idempotency_key, cmd.request_digest, appointment_id
                ):
                    raise _KeyTaken
                checked = await self._check_start(conn, cmd, principal)
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
                placement = placement_of_check(checked, granules, reserved)
                booked = appointment_events_pb2.AppointmentBooked(
                    appointment_id=str(appointment_id),
                    patient_id=cmd.patient_id,
                    visit_type_id=str(cmd.visit_type_id),
                    placement=placement,
                    status=STATUS_PB[status],
                    insurance_plan_id=cmd.insurance_plan_id,
                    eligibility_check_id=verdict.check_id if verdict else "",
                    booked_by=ACTOR[principal.role],
                    hold_id=str(consumed_hold(cmd.hold_id, checked) or ""),
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
                        *await self._let_go_of_holds(conn, checked),
                    ],
                )
        except _KeyTaken:
            replay = await self._replay(scope, cmd.idempotency_key, cmd.request_digest, principal)
            if replay is None:  # the other transaction's row vanished: it was pruned
                raise Conflict("the request raced with its own retry; retry it") from None
            return replay
        finally:
            _discard(eligibility_task)
        await self._forget_holds(checked)
        return await self.get(appointment_id, principal)

    async def _check_start(
        self, conn: Connection, cmd: BookCommand, principal: Principal
    ) -> Checked:
        return await self._checker.check(
            conn,
            principal,
            target=cmd.target,
            visit_type_id=cmd.visit_type_id,
            patient_id=cmd.patient_id,
            plan_id=cmd.insurance_plan_id,
            own_appointment=None,
            extra_lock=(),
            pick_resources=True,
            explicit_resources=cmd.resource_ids,
        )

    async def _check_before_eligibility(
        self,
        cmd: BookCommand,
        principal: Principal,
        eligibility_task: asyncio.Task[Eligibility | None],
        budget_end: float,
    ) -> None:
        """Refuse now if the start cannot be booked whatever the payer says; writes nothing."""
        async with self._db(until=budget_end) as conn, conn.transaction():
            checked = await self._check_start(conn, cmd, principal)
        if checked.violations:
            await self._add_eligibility_if_ready(eligibility_task, checked)
            raise BookingRefused(checked.violations)

    async def _replay(
        self, scope: str, key: str, digest: bytes, principal: Principal
    ) -> appointment_pb2.Appointment | None:
        async with self._db() as conn:
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

    async def _prelude(self, conn: Connection, cmd: BookCommand) -> _Prelude:
        """What the eligibility request needs, read before the transaction (no locks)."""
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
                return Eligibility(eligibility_pb2.ERROR)
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
                answer = await self._eligibility.check(
                    request, timeout_s=wait_s + self._config.eligibility_grace_s
                )
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise invalid_request_of(e) from None
                logger.warning("eligibility check failed", extra={"grpc_code": e.code().name})
                return Eligibility(eligibility_pb2.ERROR)
            return verdict_of(answer)

        return asyncio.create_task(run(), name="booking-eligibility")

    async def _add_eligibility_if_ready(
        self, task: asyncio.Task[Eligibility | None], checked: Checked
    ) -> None:
        """Add an eligibility refusal to `checked` if the answer is (almost) in already."""
        if any(v.reason in RACE_REASONS for v in checked.violations):
            return  # taken: no need to hold the caller for the payer
        with contextlib.suppress(TimeoutError, Exception):
            verdict = await asyncio.wait_for(asyncio.shield(task), timeout=0.2)
            if verdict is not None:
                reason = ELIGIBILITY_REFUSALS.get(verdict.status)
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
                    cmd.insurance_payer_id or checked.plan_payer_id,
                    self._member_digest(cmd.insurance_member_id),
                    verdict.check_id,
                    verdict.verified_at,
                )
            return Status.BOOKED, verdict
        reason = ELIGIBILITY_REFUSALS.get(verdict.status)
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
            cmd.insurance_payer_id or checked.plan_payer_id,
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
        # The member id as the payer sees it: `sim a0001` and `SIMA0001` are one member (the
        # eligibility cache keys the same way), so spacing or case cannot lose a verification.
        return self._blind.digest(normalize_identifier(member_id), purpose="booking.member_id")

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
            "insurance_payer_id": cmd.insurance_payer_id or checked.plan_payer_id,
            "member_id_enc": enc("member_id", cmd.insurance_member_id),
            "visit_reason_enc": enc("visit_reason", cmd.visit_reason),
            "demographics_enc": enc("demographics", cmd.demographics),
            "eligibility_check_id": verdict.check_id if verdict else "",
            "eligibility_status": STATUS_NAME.get(verdict.status, "") if verdict else "",
            "eligibility_verified_at": verdict.verified_at if verdict else None,
            "next_check_at": now + self._config.recheck_interval
            if status is Status.PENDING_VERIFICATION
            else None,
            "booked_by": types_pb2.ActorRole.Name(ACTOR[principal.role]),
            "hold_id": consumed_hold(cmd.hold_id, checked),
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
                except (psycopg.errors.ExclusionViolation, psycopg.errors.DeadlockDetected):
                    # Another booking reserved it first (or both waited on each other for
                    # the same room and PostgreSQL chose us as the victim): the savepoint
                    # rolled back, so try another free one of the kind.
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

    # ---- reschedule, cancel, status moves ---------------------------------------------

    async def reschedule(
        self, cmd: RescheduleCommand, principal: Principal
    ) -> appointment_pb2.Appointment:
        scope = f"reschedule:{cmd.appointment_id}"
        replay = await self._replay(scope, cmd.idempotency_key, cmd.request_digest, principal)
        if replay is not None:
            return replay
        try:
            async with self._db() as conn, conn.transaction():
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

                checked = await self._checker.check(
                    conn,
                    principal,
                    target=cmd.target,
                    visit_type_id=row.visit_type_id,
                    patient_id=row.patient_id,
                    plan_id=row.insurance_plan_id,
                    own_appointment=row.id,
                    extra_lock=old_keys,
                    pick_resources=True,
                    explicit_resources=cmd.resource_ids,
                    before_resources=release_old,
                )
                if checked.rules.organization_id != row.organization_id:
                    raise NotFound(
                        "no such provider",
                        reasons=[
                            Reason(
                                "PROVIDER_NOT_FOUND",
                                str(cmd.target.provider_id),
                                resource_type="medsched.availability.v1.Provider",
                            )
                        ],
                    )
                if checked.violations:
                    raise BookingRefused(checked.violations)
                new_starts = (
                    set(checked.starts) if checked.provider_id == row.provider_id else set()
                )
                vacated = await self._vacate(
                    conn,
                    row,
                    [g[0] for g in old if g[0] not in new_starts],
                    released,
                    slot_events_pb2.SlotFreed.RESCHEDULE,
                    now_at=(checked.provider_id, checked.start, checked.end),
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
                previous = placement_of_row(row, old, released)
                placement = placement_of_check(checked, granules, reserved)
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
                            rescheduled_by=ACTOR[principal.role],
                        ),
                    )
                ]
                booked = Event(
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
                await write_events(
                    conn,
                    store.SCHEMA,
                    self._origin(row.organization_id, principal, now, str(row.id)),
                    [
                        *events,
                        *vacated,
                        booked,
                        *await self._let_go_of_holds(conn, checked),
                    ],
                )
        except _KeyTaken:
            replay = await self._replay(scope, cmd.idempotency_key, cmd.request_digest, principal)
            if replay is None:
                raise Conflict("the request raced with its own retry; retry it") from None
            return replay
        await self._forget_holds(checked)
        return await self.get(cmd.appointment_id, principal)

    async def cancel(
        self,
        appointment_id: uuid.UUID,
        reason: appointment_pb2.CancellationReason.ValueType,
        note: str,
        etag: str,
        principal: Principal,
    ) -> appointment_pb2.Appointment:
        async with self._db() as conn, conn.transaction():
            row = await self._visible(conn, appointment_id, principal, lock=True)
            if row.status == Status.CANCELLED:
                return await self._view(conn, row)
            _check_etag(row, etag)
            now = self._clock()
            check_move(Move.CANCEL, principal, MoveContext(Status(row.status), row.start_time, now))
            # Granules first, then reservations: the order every booking transaction uses.
            booked = await store.booked_granules(conn, row.id, row.provider_id, lock=True)
            released = await store.release_reservations(conn, row.id)
            vacated = await self._vacate(
                conn,
                row,
                [g[0] for g in booked],
                released,
                slot_events_pb2.SlotFreed.CANCELLATION,
                now_at=None,
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
            cancelled = appointment_events_pb2.AppointmentCancelled(
                appointment_id=str(row.id),
                patient_id=row.patient_id,
                visit_type_id=str(row.visit_type_id),
                placement=placement_of_row(row, booked, released),
                cancellation_reason=reason,
                cancelled_by=ACTOR[principal.role],
            )
            await write_events(
                conn,
                store.SCHEMA,
                self._origin(row.organization_id, principal, now, str(row.id)),
                [Event("appointment", str(row.id), cancelled), *vacated],
            )
            updated = await store.get_appointment(conn, row.id)
            assert updated is not None
            return await self._view(conn, updated)

    async def _vacate(
        self,
        conn: Connection,
        row: store.AppointmentRow,
        starts: Sequence[datetime],
        released: Sequence[store.ReservationRow],
        cause: slot_events_pb2.SlotFreed.Cause.ValueType,
        *,
        now_at: tuple[uuid.UUID, datetime, datetime] | None,
    ) -> list[Event]:
        """Give up the granules `starts` that appointment `row` leaves; the events to write.

        Normally they become OPEN (`SlotFreed`, which feeds the waitlist). If an open
        schedule conflict names the appointment, a schedule change (an exception, an
        override) no longer wants that time: the granules become BLOCKED instead
        (`SlotsBlocked` with the conflict's cause), as materialization would have left them.
        Conflicts the appointment no longer overlaps (`now_at`: its new provider and time;
        None when cancelled) are resolved, with `ScheduleConflictResolved`.
        """
        conflicts = await store.open_conflicts(conn, row.id)
        events: list[Event] = []
        provider = str(row.provider_id)
        if starts and conflicts:
            granules = await store.set_granules(conn, row.provider_id, starts, status="BLOCKED")
            blocked = slot_events_pb2.SlotsBlocked(
                provider_id=provider,
                location_id=str(row.location_id),
                granules=placement_granules(row.provider_id, granules),
                cause=schedule_resources_pb2.ScheduleConflict.Cause.Value(conflicts[0].cause),
                cause_id=str(conflicts[0].cause_id or ""),
            )
            events.append(Event("slots", provider, blocked))
        elif starts:
            granules = await store.set_granules(conn, row.provider_id, starts, status="OPEN")
            events.append(Event("slots", provider, freed_event(row, granules, released, cause)))
        settled = [
            c
            for c in conflicts
            if now_at is None
            or now_at[0] != row.provider_id
            or not (c.start < now_at[2] and now_at[1] < c.end)
        ]
        if settled:
            await store.resolve_conflicts(conn, [c.id for c in settled])
        for c in settled:
            resolved = schedule_events_pb2.ScheduleConflictResolved(
                conflict_id=str(c.id), provider_id=provider, appointment_id=str(row.id)
            )
            events.append(Event("schedule", provider, resolved))
        return events

    async def move(
        self, appointment_id: uuid.UUID, move: Move, etag: str, principal: Principal | None
    ) -> appointment_pb2.Appointment:
        """Check-in, complete, no-show, or (principal None: medsched) confirm."""
        async with self._db() as conn, conn.transaction():
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
                previous_status=STATUS_PB[Status(row.status)],
                status=STATUS_PB[target],
                changed_by=ACTOR[actor.role] if principal else types_pb2.SYSTEM,
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
        """Ask again for appointments booked on a recent verification; returns how many moved.

        Every replica runs this loop: the due rows are claimed by pushing their next check
        one interval ahead (rows another replica is claiming are skipped), so two replicas
        do not ask the payer twice for one appointment.
        """
        now = self._clock()
        async with self._db() as conn, conn.transaction():
            cursor = await conn.execute(
                "UPDATE booking.appointments SET next_check_at = %s WHERE id IN ("
                " SELECT id FROM booking.appointments WHERE status = 'PENDING_VERIFICATION'"
                " AND next_check_at <= %s ORDER BY next_check_at LIMIT %s"
                " FOR UPDATE SKIP LOCKED) RETURNING id",
                (now + self._config.recheck_interval, now, limit),
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
        async with self._db() as conn:
            row = await store.get_appointment(conn, appointment_id)
        if row is None or row.status != Status.PENDING_VERIFICATION:
            return 0
        verdict: Eligibility | None = None
        if row.eligibility_check_id:
            with contextlib.suppress(grpc.aio.AioRpcError):
                verdict = verdict_of(
                    await self._eligibility.get(row.eligibility_check_id, timeout_s=5.0)
                )
        if verdict is None or verdict.status == eligibility_pb2.ERROR:
            verdict = await self._ask_again(row)
        now = self._clock()
        async with self._db() as conn, conn.transaction():
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
        async with self._db() as conn, conn.transaction():
            await conn.execute(
                "UPDATE booking.appointments SET eligibility_check_id = %s,"
                " eligibility_status = %s, check_attempts = check_attempts + 1,"
                " next_check_at = CASE WHEN %s THEN NULL ELSE %s END WHERE id = %s"
                " AND status = 'PENDING_VERIFICATION'",
                (
                    verdict.check_id or row.eligibility_check_id,
                    STATUS_NAME.get(verdict.status, "ERROR"),
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
        async with self._db() as conn:
            rules = await store.visit_type_rules(conn, row.visit_type_id, row.provider_id)
        if rules is None or not member:
            return Eligibility(eligibility_pb2.ERROR)
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
            return verdict_of(await self._eligibility.check(request, timeout_s=5.0))
        except grpc.aio.AioRpcError:
            return Eligibility(eligibility_pb2.ERROR)

    async def prune(self) -> int:
        async with self._db() as conn, conn.transaction():
            return await store.prune_idempotency_keys(conn, self._config.idempotency_retention_days)

    # ---- reads ------------------------------------------------------------------------

    async def get(
        self, appointment_id: uuid.UUID, principal: Principal
    ) -> appointment_pb2.Appointment:
        async with self._db() as conn:
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
                reasons=[
                    Reason(
                        "APPOINTMENT_NOT_FOUND",
                        str(appointment_id),
                        resource_type="medsched.booking.v1.Appointment",
                    )
                ],
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
        async with self._db() as conn:
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
        async with self._db() as conn:
            cursor = await conn.execute(
                "SELECT l.time_zone FROM availability.resources r"
                " JOIN availability.locations l ON l.id = r.location_id"
                " WHERE r.id = %s AND r.organization_id = %s",
                (resource_id, organization_id),
            )
            found = await cursor.fetchone()
            if found is None:
                raise NotFound(
                    "no such resource",
                    reasons=[
                        Reason(
                            "RESOURCE_NOT_FOUND",
                            str(resource_id),
                            resource_type="medsched.availability.v1.Resource",
                        )
                    ],
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
                f"   AND r.resource_id = %s AND {store.CURRENT_RESERVATION})"
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
            if orgs is not None and organization_id not in orgs:
                raise PermissionDenied("not a member of this organization")
            orgs = [organization_id]
        async with self._db() as conn:
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
        return [
            appointment_message(row, reservations.get(row.id, []), self._cipher) for row in rows
        ]

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
            actor_role=ACTOR[principal.role] if principal else types_pb2.SYSTEM,
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


def consumed_hold(requested: uuid.UUID | None, checked: Checked) -> uuid.UUID | None:
    """The hold a booking consumed: the one it named, else the patient's only one, if any."""
    if requested is not None and requested in checked.consumed_holds:
        return requested
    if requested is None and len(checked.consumed_holds) == 1:
        return next(iter(checked.consumed_holds))
    return None


async def _done_within(task: asyncio.Task[Any], seconds: float) -> bool:
    """Whether `task` finishes within `seconds` (it keeps running either way)."""
    done, _ = await asyncio.wait({task}, timeout=seconds)
    return bool(done)


def _discard(task: asyncio.Task[Any]) -> None:
    """Stop a task whose answer is no longer wanted, without leaving its error unretrieved."""
    if not task.done():
        task.cancel()
    task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _authorize_patient(principal: Principal, patient_id: str) -> None:
    if principal.role is Role.PATIENT and principal.patient_id != patient_id:
        raise PermissionDenied("patients may book and hold only for themselves")


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


__all__ = ["BookingConfig", "BookingService", "slot_id"]
