"""The shared check of a start time: what hold, book and reschedule verify, all at once.

Inside the caller's transaction it locks the visit's granules (in the one global order every
claimer uses), then gathers every reason the start cannot be taken: the booking window, the
granules' status and holders, where the provider works and what they offer, the plan, the
patient kind, and free rooms and equipment. Nothing is written here; the caller decides.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from booking_svc import store
from booking_svc.domain import RefusalReason, Target, Violation
from booking_svc.holds import HoldRecord, HoldStore
from common.auth import Principal, Role
from common.db import Connection
from common.errors import NotFound, Reason
from common.slot_ids import format_slot_id

Clock = Callable[[], datetime]


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
    # Holds of the same patient on the granules, which the request takes over.
    consumed_holds: set[uuid.UUID] = field(default_factory=set)
    # Holds on the granules whose Redis record lapsed: free to take, not yet swept.
    lapsed_holds: set[uuid.UUID] = field(default_factory=set)
    # An alive hold of the same patient covering exactly these granules (for re-holding).
    own_hold: HoldRecord | None = None

    def refuse(self, reason: RefusalReason, description: str, **extra: Any) -> None:
        self.violations.append(Violation(reason, description, **extra))

    def slot_ids(self, starts: Sequence[datetime]) -> tuple[str, ...]:
        return tuple(slot_id(self.provider_id, s) for s in starts)


def slot_id(provider_id: uuid.UUID, start: datetime) -> str:
    return format_slot_id(str(provider_id), int(start.timestamp()))


def may_see_organization(principal: Principal, organization_id: uuid.UUID) -> bool:
    """Staff reach only their organisations; patients, admins and services reach any."""
    if principal.role is Role.STAFF:
        return str(organization_id) in principal.organization_ids
    return True


class StartChecker:
    """Checks start times against the inventory, the schedule's rules and the live holds."""

    def __init__(self, holds: HoldStore, clock: Clock) -> None:
        self._holds = holds
        self._clock = clock

    async def check(
        self,
        conn: Connection,
        principal: Principal,
        *,
        target: Target,
        visit_type_id: uuid.UUID,
        patient_id: str,
        plan_id: str,
        own_appointment: uuid.UUID | None,
        extra_lock: Sequence[tuple[uuid.UUID, datetime]],
        pick_resources: bool,
        explicit_resources: Sequence[uuid.UUID] = (),
        before_resources: Callable[[], Awaitable[None]] | None = None,
    ) -> Checked:
        rules = await store.visit_type_rules(conn, visit_type_id, target.provider_id)
        if rules is None or not may_see_organization(principal, rules.organization_id):
            raise NotFound(
                "no such visit type",
                reasons=[
                    Reason(
                        "VISIT_TYPE_NOT_FOUND",
                        str(visit_type_id),
                        resource_type="medsched.availability.v1.VisitType",
                    )
                ],
            )
        if not rules.provider_found or rules.provider_organization_id != rules.organization_id:
            raise NotFound(
                "no such provider",
                reasons=[
                    Reason(
                        "PROVIDER_NOT_FOUND",
                        str(target.provider_id),
                        resource_type="medsched.availability.v1.Provider",
                    )
                ],
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
        await self._check_granules(checked, mine, own_appointment, patient_id)
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
                    checked.lapsed_holds.add(granule.hold_id)  # free to take
                elif record.patient_id == patient_id:
                    # The patient's own hold (placed by them, staff or a waitlist offer) is
                    # theirs to take over, whichever hold id the request names.
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
            named = explicit_by_kind.get(need.kind, [])
            if len(named) > need.count:
                checked.refuse(
                    RefusalReason.RESOURCE_UNAVAILABLE,
                    f"the visit needs {need.count} {need.kind}, {len(named)} were chosen",
                    resource_kind=need.kind,
                )
            picked = named[: need.count]
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
