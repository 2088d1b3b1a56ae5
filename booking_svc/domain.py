"""The booking domain without I/O: commands, refusals, the status workflow, who may do what.

Everything here is pure so that the rules (which status may move where, which refusal gets
which status code, what a valid request is) are tested without a database.
"""

from __future__ import annotations

import enum
import re
import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from common.auth import Principal, Role
from common.errors import Conflict, FailedPrecondition, MedschedError, Reason, ViolationCollector
from medsched.booking.v1 import appointment_pb2

IDEMPOTENCY_KEY_MIN = 8
IDEMPOTENCY_KEY_MAX = 128
MAX_FREE_TEXT = 500
MAX_MEMBER_ID = 80
MAX_NAME = 60
PATIENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_PLAN_ID = re.compile(r"[a-z][a-z0-9_]{0,62}")
_X12_UNSAFE = re.compile(r"[*~:^\x00-\x1f\x7f]")
# Six characters without look-alikes (no 0/O, 1/I/L): 31^6, about 887 million codes.
CONFIRMATION_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"


class Status(enum.StrEnum):
    BOOKED = "BOOKED"
    PENDING_VERIFICATION = "PENDING_VERIFICATION"
    CHECKED_IN = "CHECKED_IN"
    COMPLETED = "COMPLETED"
    NO_SHOW = "NO_SHOW"
    CANCELLED = "CANCELLED"


LIVE = frozenset({Status.BOOKED, Status.PENDING_VERIFICATION})
FINAL = frozenset({Status.COMPLETED, Status.NO_SHOW, Status.CANCELLED})


# The ErrorInfo domain of a refusal, as the booking contract names it.
REFUSAL_DOMAIN = "medsched.booking.v1"


class RefusalReason(enum.IntEnum):
    """`BookingRefusal.Reason`, same numbers and order."""

    TAKEN = 1
    HELD_BY_OTHER = 2
    RESOURCE_UNAVAILABLE = 3
    OUTSIDE_BOOKING_WINDOW = 4
    PLAN_NOT_ACCEPTED = 5
    ELIGIBILITY_INACTIVE = 6
    ELIGIBILITY_NOT_FOUND = 7
    ELIGIBILITY_UNVERIFIED = 8
    NOT_OFFERED = 9
    PATIENT_KIND_MISMATCH = 10


# Refusals that only mean "someone else got there first": ABORTED, pick another time.
RACE_REASONS = frozenset(
    {RefusalReason.TAKEN, RefusalReason.HELD_BY_OTHER, RefusalReason.RESOURCE_UNAVAILABLE}
)


@dataclass(frozen=True)
class Violation:
    """One reason a start time cannot be booked, with what it concerns (no PHI)."""

    reason: RefusalReason
    description: str
    slot_ids: tuple[str, ...] = ()
    resource_kind: str = ""
    eligibility_check_id: str = ""
    hold_expire_time: datetime | None = None


class BookingRefused(MedschedError):
    """A start time cannot be held or booked; every reason found is in `violations`."""

    def __init__(self, violations: Iterable[Violation]) -> None:
        ordered = sorted(violations, key=lambda v: v.reason)
        if not ordered:
            raise ValueError("a refusal needs at least one violation")
        self.violations: tuple[Violation, ...] = tuple(ordered)
        self.grpc_code_name = refusal_code(self.violations)
        message = "the start time cannot be booked: " + "; ".join(
            v.description for v in self.violations
        )
        super().__init__(
            message,
            reasons=[
                Reason(
                    code="BOOKING_REFUSED",
                    metadata={"reasons": ",".join(v.reason.name for v in self.violations)},
                    domain=REFUSAL_DOMAIN,
                )
            ],
            details=[refusal_message(self.violations)],
        )


def refusal_message(violations: Sequence[Violation]) -> appointment_pb2.BookingRefusal:
    """The contract's `BookingRefusal` detail for `violations`."""
    message = appointment_pb2.BookingRefusal()
    for v in violations:
        item = message.violations.add(
            reason=int(v.reason),
            description=v.description,
            slot_ids=list(v.slot_ids),
            resource_kind=v.resource_kind,
            eligibility_check_id=v.eligibility_check_id,
        )
        if v.hold_expire_time is not None:
            item.hold_expire_time.FromDatetime(v.hold_expire_time)
    return message


def refusal_code(violations: Sequence[Violation]) -> str:
    """ABORTED when every violation is a lost race, otherwise FAILED_PRECONDITION."""
    if all(v.reason in RACE_REASONS for v in violations):
        return Conflict.grpc_code_name
    return FailedPrecondition.grpc_code_name


# ---- requests ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Which start time: a provider, optionally a location (a slot id names none), a start."""

    provider_id: uuid.UUID
    start: datetime
    location_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Demographics:
    """Name, birth date and sex as the payer knows them (PHI; encrypted at rest)."""

    family_name: str = ""
    given_name: str = ""
    birth_date: str = ""
    sex: int = 0


@dataclass(frozen=True)
class BookCommand:
    target: Target
    visit_type_id: uuid.UUID
    patient_id: str
    idempotency_key: str
    request_digest: bytes
    visit_reason: str = ""
    insurance_plan_id: str = ""
    insurance_payer_id: str = ""
    insurance_member_id: str = ""
    demographics: bytes = b""  # serialized PatientDemographics, PHI
    subscriber_demographics: bytes = b""  # serialized PatientDemographics, PHI
    resource_ids: tuple[uuid.UUID, ...] = ()
    hold_id: uuid.UUID | None = None


@dataclass(frozen=True)
class HoldCommand:
    target: Target
    visit_type_id: uuid.UUID
    patient_id: str
    ttl: timedelta


@dataclass(frozen=True)
class RescheduleCommand:
    appointment_id: uuid.UUID
    target: Target
    idempotency_key: str
    request_digest: bytes
    etag: str = ""
    resource_ids: tuple[uuid.UUID, ...] = ()
    hold_id: uuid.UUID | None = None


def parse_uuid(
    value: str, path: str, errors: ViolationCollector, *, required: bool = True
) -> uuid.UUID | None:
    text = value.strip()
    if not text:
        if required:
            errors.add(path, "is required")
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        errors.add(path, "must be a UUID")
        return None


def check_patient_id(value: str, path: str, errors: ViolationCollector) -> str:
    if not value:
        errors.add(path, "is required")
    elif not PATIENT_ID.fullmatch(value):
        errors.add(path, "must be 1-64 letters, digits or _ . : -")
    return value


def check_idempotency_key(value: str, path: str, errors: ViolationCollector) -> str:
    if not value:
        errors.add(path, "is required")
    elif not IDEMPOTENCY_KEY_MIN <= len(value) <= IDEMPOTENCY_KEY_MAX:
        errors.add(path, f"must be {IDEMPOTENCY_KEY_MIN} to {IDEMPOTENCY_KEY_MAX} characters")
    elif not value.isprintable():
        errors.add(path, "must be printable characters")
    return value


def check_free_text(value: str, path: str, errors: ViolationCollector) -> str:
    errors.check(len(value) <= MAX_FREE_TEXT, path, f"must be at most {MAX_FREE_TEXT} characters")
    return value


def check_insurance(
    plan_id: str, payer_id: str, member_id: str, errors: ViolationCollector
) -> tuple[str, str, str]:
    plan, payer, member = plan_id.strip(), payer_id.strip(), member_id.strip()
    if plan:
        errors.check(bool(_PLAN_ID.fullmatch(plan)), "insurance_plan_id", "is not a plan id")
        if not member:
            errors.add("insurance_member_id", "is required with an insurance plan")
    else:
        errors.check(not member, "insurance_member_id", "needs insurance_plan_id")
        errors.check(not payer, "insurance_payer_id", "needs insurance_plan_id")
    if member:
        errors.check(
            len(member) <= MAX_MEMBER_ID,
            "insurance_member_id",
            f"must be at most {MAX_MEMBER_ID} characters",
        )
        errors.check(
            not _X12_UNSAFE.search(member), "insurance_member_id", "must not contain * ~ : ^"
        )
    errors.check(len(payer) <= 80, "insurance_payer_id", "must be at most 80 characters")
    return plan, payer, member


def check_person_name(value: str, path: str, errors: ViolationCollector) -> str:
    """A name as the payer knows it: short, and free of the X12 delimiters it would break."""
    errors.check(len(value) <= MAX_NAME, path, f"must be at most {MAX_NAME} characters")
    errors.check(not _X12_UNSAFE.search(value), path, "must not contain * ~ : ^")
    return value


def new_confirmation_code() -> str:
    return "".join(secrets.choice(CONFIRMATION_ALPHABET) for _ in range(6))


def etag_of(version: int) -> str:
    return f'W/"{version}"'


# ---- the status workflow and who may move what ------------------------------------------


class Move(enum.Enum):
    CHECK_IN = "check in"
    COMPLETE = "complete"
    NO_SHOW = "mark as no-show"
    CANCEL = "cancel"
    RESCHEDULE = "reschedule"
    CONFIRM = "confirm"  # PENDING_VERIFICATION -> BOOKED, by medsched itself


_ALLOWED: dict[Move, tuple[frozenset[Status], Status | None]] = {
    Move.CHECK_IN: (LIVE, Status.CHECKED_IN),
    Move.COMPLETE: (frozenset({Status.CHECKED_IN}), Status.COMPLETED),
    Move.NO_SHOW: (LIVE, Status.NO_SHOW),
    Move.CANCEL: (LIVE, Status.CANCELLED),
    Move.RESCHEDULE: (LIVE, None),
    Move.CONFIRM: (frozenset({Status.PENDING_VERIFICATION}), Status.BOOKED),
}

_STAFF_ONLY = frozenset({Move.CHECK_IN, Move.COMPLETE, Move.NO_SHOW})


@dataclass(frozen=True)
class MoveContext:
    status: Status
    start: datetime
    now: datetime


def check_move(move: Move, principal: Principal, ctx: MoveContext) -> Status | None:
    """The status after `move`, or raise: PermissionDenied or FailedPrecondition with why."""
    from common.errors import PermissionDenied

    if move in _STAFF_ONLY and principal.role not in (Role.STAFF, Role.ADMIN):
        raise PermissionDenied(f"only staff may {move.value} an appointment")
    allowed_from, to = _ALLOWED[move]
    if ctx.status not in allowed_from:
        raise FailedPrecondition(
            f"an appointment in status {ctx.status.value} cannot {move.value}",
            reasons=[
                Reason(
                    code="APPOINTMENT_STATUS",
                    subject=ctx.status.value,
                    description=f"allowed from {', '.join(sorted(s.value for s in allowed_from))}",
                )
            ],
        )
    if move is Move.NO_SHOW and ctx.now < ctx.start:
        raise FailedPrecondition(
            "a no-show can be recorded only once the start has passed",
            reasons=[
                Reason(
                    code="APPOINTMENT_STATUS",
                    subject=ctx.status.value,
                    description="the start has not passed",
                )
            ],
        )
    if (
        principal.role is Role.PATIENT
        and move in (Move.CANCEL, Move.RESCHEDULE)
        and ctx.now >= ctx.start
    ):
        raise FailedPrecondition(
            f"a patient may {move.value} only before the start; call the clinic",
            reasons=[
                Reason(
                    code="APPOINTMENT_STATUS",
                    subject=ctx.status.value,
                    description="the start has passed",
                )
            ],
        )
    return to


@dataclass
class Plan:
    """What a booking transaction found while checking a start (its outcome so far)."""

    violations: list[Violation] = field(default_factory=list)

    def refuse(self, reason: RefusalReason, description: str, **extra: object) -> None:
        self.violations.append(Violation(reason, description, **extra))  # type: ignore[arg-type]
