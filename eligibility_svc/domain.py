"""Eligibility checks as values: the command, the normalized outcome, and the pure decisions.

No protobuf, database, network or wall clock here: callers pass `now` in. Values that carry
PHI (member ids, names, birth dates, plan names, payer messages) are excluded from `repr`
so they cannot leak into logs through a formatted object.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from common.errors import ViolationCollector

DEFAULT_SERVICE_TYPE = "30"
# The X12 delimiters we write (and control characters) cannot travel inside a value.
_X12_UNSAFE = re.compile(r"[*~:^\x00-\x1f\x7f]")
_SERVICE_TYPE = re.compile(r"[A-Z0-9]{1,2}")
_NPI = re.compile(r"[0-9]{10}")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MAX_ID = 128
_MAX_MEMBER_ID = 80
_MAX_NAME = 60


class CheckStatus(enum.Enum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    NOT_FOUND = "NOT_FOUND"
    ERROR = "ERROR"
    PENDING = "PENDING"


FINAL_STATUSES = frozenset(s for s in CheckStatus if s is not CheckStatus.PENDING)
# Answers about the member that stay true for a while; errors say nothing about the member.
CACHEABLE_STATUSES = frozenset({CheckStatus.ACTIVE, CheckStatus.INACTIVE, CheckStatus.NOT_FOUND})


class Source(enum.Enum):
    CACHE = "CACHE"
    PAYER = "PAYER"


class ErrorKind(enum.Enum):
    UNKNOWN_PAYER = "UNKNOWN_PAYER"
    PAYER_TIMEOUT = "PAYER_TIMEOUT"
    PAYER_UNAVAILABLE = "PAYER_UNAVAILABLE"
    CIRCUIT_OPEN = "CIRCUIT_OPEN"
    INVALID_RESPONSE = "INVALID_RESPONSE"
    PAYER_REJECTED = "PAYER_REJECTED"


class CoverageState(enum.Enum):
    UNSPECIFIED = "UNSPECIFIED"
    COVERED = "COVERED"
    NOT_ACTIVE = "NOT_ACTIVE"
    NOT_COVERED = "NOT_COVERED"


class RejectionLevel(enum.Enum):
    UNSPECIFIED = "UNSPECIFIED"
    SOURCE = "SOURCE"
    RECEIVER = "RECEIVER"
    SUBSCRIBER = "SUBSCRIBER"
    DEPENDENT = "DEPENDENT"


# --- the command -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    """A patient or policy holder as the payer knows them (all PHI)."""

    family_name: str = field(default="", repr=False)
    given_name: str = field(default="", repr=False)
    middle_name: str = field(default="", repr=False)
    suffix: str = field(default="", repr=False)
    birth_date: date | None = field(default=None, repr=False)
    sex: str = field(default="", repr=False)
    """X12 gender code: F, M, U, or empty when not given."""


@dataclass(frozen=True)
class CheckCommand:
    """Check one patient's coverage with one payer for one service type and date."""

    organization_id: str
    patient_id: str
    payer_id: str
    member_id: str = field(repr=False)
    service_type: str = DEFAULT_SERVICE_TYPE
    service_date: date | None = None
    """None: today in the organisation's time zone."""
    patient: Person | None = field(default=None, repr=False)
    subscriber: Person | None = field(default=None, repr=False)
    """The policy holder when the patient is a dependent; None: the patient is."""
    provider_npi: str = ""
    appointment_id: str = ""
    plan_id: str = ""
    max_cache_age_s: float | None = None
    """None: the cache lifetime; 0: always ask the payer."""
    max_wait_s: float | None = None


@dataclass(frozen=True)
class PersonInput:
    """A person as received, before validation (strings as in the API)."""

    family_name: str = ""
    given_name: str = ""
    middle_name: str = ""
    suffix: str = ""
    birth_date: str = ""
    sex: str = ""


def build_command(
    *,
    organization_id: str,
    patient_id: str,
    payer_id: str,
    member_id: str,
    service_type: str,
    service_date: str,
    provider_npi: str,
    appointment_id: str,
    plan_id: str,
    patient: PersonInput | None,
    subscriber: PersonInput | None,
    max_cache_age_s: float | None,
    max_wait_s: float | None,
) -> CheckCommand:
    """Validate a request; `InvalidArgument` lists every bad field by its API path."""
    errors = ViolationCollector()
    for name, value in (
        ("organization_id", organization_id),
        ("patient_id", patient_id),
        ("payer_id", payer_id),
    ):
        errors.check(bool(value.strip()), name, "is required")
        errors.check(len(value) <= _MAX_ID, name, f"must be at most {_MAX_ID} characters")
    member = member_id.strip()
    errors.check(bool(member), "member_id", "is required")
    errors.check(len(member) <= _MAX_MEMBER_ID, "member_id", "is too long")
    errors.check(not _X12_UNSAFE.search(member), "member_id", "must not contain * ~ : ^")
    kind = service_type.strip().upper() or DEFAULT_SERVICE_TYPE
    errors.check(
        bool(_SERVICE_TYPE.fullmatch(kind)),
        "service_type_code",
        "must be an X12 service type code (1-2 letters or digits)",
    )
    when = _date(service_date, "service_date", errors)
    npi = provider_npi.strip()
    errors.check(not npi or npi_is_valid(npi), "provider_npi", "must be a valid 10-digit NPI")
    for name, value in (("appointment_id", appointment_id), ("plan_id", plan_id)):
        errors.check(len(value) <= _MAX_ID, name, f"must be at most {_MAX_ID} characters")
    for name, seconds in (("max_cache_age", max_cache_age_s), ("max_wait", max_wait_s)):
        errors.check(seconds is None or seconds >= 0, name, "must not be negative")
    person = _person(patient, "patient_demographics", errors)
    holder = _person(subscriber, "subscriber_demographics", errors)
    if holder is not None:
        errors.check(
            person is not None and bool(person.family_name),
            "patient_demographics.name.family_name",
            "is required when the patient is a dependent",
        )
    errors.raise_if_any()
    return CheckCommand(
        organization_id=organization_id.strip(),
        patient_id=patient_id.strip(),
        payer_id=payer_id.strip(),
        member_id=member,
        service_type=kind,
        service_date=when,
        patient=person,
        subscriber=holder,
        provider_npi=npi,
        appointment_id=appointment_id.strip(),
        plan_id=plan_id.strip(),
        max_cache_age_s=max_cache_age_s,
        max_wait_s=max_wait_s,
    )


def _date(text: str, path: str, errors: ViolationCollector) -> date | None:
    value = text.strip()
    if not value:
        return None
    if _DATE.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    errors.add(path, "must be a date YYYY-MM-DD")
    return None


def _person(value: PersonInput | None, path: str, errors: ViolationCollector) -> Person | None:
    if value is None:
        return None
    names = {
        "family_name": value.family_name.strip().upper(),
        "given_name": value.given_name.strip().upper(),
        "middle_name": value.middle_name.strip().upper(),
        "name_suffix": value.suffix.strip().upper(),
    }
    for name, text in names.items():
        errors.check(len(text) <= _MAX_NAME, f"{path}.name.{name}", "is too long")
        errors.check(not _X12_UNSAFE.search(text), f"{path}.name.{name}", "has * ~ : or ^")
    errors.check(value.sex in ("", "F", "M", "U"), f"{path}.sex", "must be female, male or unknown")
    return Person(
        family_name=names["family_name"],
        given_name=names["given_name"],
        middle_name=names["middle_name"],
        suffix=names["name_suffix"],
        birth_date=_date(value.birth_date, f"{path}.birth_date", errors),
        sex=value.sex,
    )


def npi_is_valid(npi: str) -> bool:
    """The NPI check digit: Luhn over the 9 digits prefixed by the card issuer code 80840."""
    if not _NPI.fullmatch(npi):
        return False
    total = 0
    for position, digit in enumerate(int(c) for c in reversed("80840" + npi)):
        if position % 2 == 1:
            digit = digit * 2 - 9 if digit * 2 > 9 else digit * 2
        total += digit
    return total % 10 == 0


# --- the outcome -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Amount:
    """One cost-sharing amount (EB07) or percentage (EB08) with its qualifiers as X12 codes."""

    coverage_level: str = ""
    network: str = ""
    period: str = ""
    amount: Decimal | None = None
    percent: Decimal | None = None
    authorization_required: bool = False


@dataclass(frozen=True)
class ServiceBenefits:
    """What the payer said about one service type."""

    service_type: str
    coverage: CoverageState
    copayments: tuple[Amount, ...] = ()
    coinsurance: tuple[Amount, ...] = ()
    deductibles: tuple[Amount, ...] = ()
    out_of_pocket: tuple[Amount, ...] = ()
    messages: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Plan:
    """The plan and coverage period the payer reports."""

    name: str = field(default="", repr=False)
    group_number: str = field(default="", repr=False)
    group_name: str = field(default="", repr=False)
    insurance_type: str = ""
    coverage_start: date | None = None
    coverage_end: date | None = None


@dataclass(frozen=True)
class RejectionInfo:
    """An AAA segment with its meaning."""

    level: RejectionLevel
    valid_request: bool
    code: str
    description: str
    follow_up_code: str = ""


@dataclass(frozen=True)
class CheckError:
    """Why there is no usable answer: a kind, words for operators (no PHI), retry advice."""

    kind: ErrorKind
    description: str
    retryable: bool


@dataclass(frozen=True)
class Outcome:
    """The final answer of a check (never PENDING)."""

    status: CheckStatus
    plan: Plan | None = None
    benefits: tuple[ServiceBenefits, ...] = ()
    rejections: tuple[RejectionInfo, ...] = ()
    messages: tuple[str, ...] = field(default=(), repr=False)
    error: CheckError | None = None
    responded_at: datetime | None = None
    """When the payer's answer arrived; None without an answer."""
    exchange_id: str | None = None
    """The audited payer exchange this outcome came from, if any."""

    def __post_init__(self) -> None:
        if self.status is CheckStatus.PENDING:
            raise ValueError("an outcome is final; PENDING is a check without one")
        if (self.status is CheckStatus.ERROR) != (self.error is not None):
            raise ValueError("an outcome carries an error exactly when its status is ERROR")


def failed(
    kind: ErrorKind,
    description: str,
    *,
    retryable: bool,
    responded_at: datetime | None = None,
    exchange_id: str | None = None,
) -> Outcome:
    return Outcome(
        CheckStatus.ERROR,
        error=CheckError(kind, description, retryable),
        responded_at=responded_at,
        exchange_id=exchange_id,
    )


@dataclass(frozen=True)
class Check:
    """One check as a caller sees it: the question (ids only) and the answer so far."""

    check_id: str
    organization_id: str
    patient_id: str
    payer_id: str
    service_type: str
    service_date: date
    requested_at: datetime
    status: CheckStatus
    source: Source | None = None
    outcome: Outcome | None = None
    appointment_id: str = ""
    plan_id: str = ""

    def age(self, now: datetime) -> timedelta:
        """Zero for a live answer; time since the payer answered for a cached one."""
        if self.source is not Source.CACHE or self.outcome is None:
            return timedelta(0)
        responded = self.outcome.responded_at
        return max(timedelta(0), now - responded) if responded is not None else timedelta(0)


# --- decisions -------------------------------------------------------------------------------


def cached_answer_usable(
    outcome: Outcome, now: datetime, max_cache_age_s: float | None, cache_ttl_s: float
) -> bool:
    """Whether a cached outcome is young enough for this caller."""
    if outcome.status not in CACHEABLE_STATUSES or outcome.responded_at is None:
        return False
    limit = cache_ttl_s if max_cache_age_s is None else min(max_cache_age_s, cache_ttl_s)
    if limit <= 0:
        return False
    return (now - outcome.responded_at).total_seconds() <= limit


def wait_seconds(
    *,
    max_wait_s: float | None,
    deadline_in_s: float | None,
    default_wait_s: float,
    margin_s: float,
) -> float:
    """How long a caller may wait for the payer before getting PENDING.

    `max_wait` when given, otherwise `default_wait_s`; never past the gRPC deadline less
    `margin_s`, the time kept to record the check and send the answer.
    """
    wait = default_wait_s if max_wait_s is None else max_wait_s
    if deadline_in_s is not None:
        wait = min(wait, deadline_in_s - margin_s)
    return max(0.0, wait)


# --- serialization (cache values and stored results; encrypted by the caller) ---------------


@dataclass(frozen=True)
class EncodedOutcome:
    """An outcome with its `encode_outcome` bytes: one outcome stored in several places (the
    cache, the flight's result, every check it answers) is encoded once, and a cached
    answer's bytes are reused for the check it answers instead of being encoded again."""

    outcome: Outcome
    data: bytes = field(repr=False)

    @classmethod
    def of(cls, outcome: Outcome) -> EncodedOutcome:
        return cls(outcome, encode_outcome(outcome))

    @classmethod
    def decode(cls, data: bytes) -> EncodedOutcome:
        """From stored bytes; ValueError when they are not an encoded outcome."""
        return cls(decode_outcome(data), data)


def encode_outcome(outcome: Outcome) -> bytes:
    """Compact JSON of an outcome; amounts and dates as text so nothing is rounded."""
    return json.dumps(_plain(outcome), separators=(",", ":"), sort_keys=True).encode("utf-8")


def decode_outcome(data: bytes) -> Outcome:
    """The outcome `encode_outcome` wrote; ValueError when the data is not one."""
    try:
        raw = json.loads(data)
        return _outcome(raw)
    except (KeyError, TypeError, ValueError, InvalidOperation) as e:
        # The message names the type only: the data may hold PHI.
        raise ValueError(f"not an encoded outcome ({type(e).__name__})") from None


def _plain(value: object) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if hasattr(value, "__dataclass_fields__"):
        return {name: _plain(getattr(value, name)) for name in value.__dataclass_fields__}
    return value


def _outcome(raw: Mapping[str, Any]) -> Outcome:
    plan = raw["plan"]
    error = raw["error"]
    return Outcome(
        status=CheckStatus(raw["status"]),
        plan=None if plan is None else _plan(plan),
        benefits=tuple(_benefits(b) for b in raw["benefits"]),
        rejections=tuple(_rejection(r) for r in raw["rejections"]),
        messages=tuple(str(m) for m in raw["messages"]),
        error=None
        if error is None
        else CheckError(
            ErrorKind(error["kind"]), str(error["description"]), bool(error["retryable"])
        ),
        responded_at=_optional_datetime(raw["responded_at"]),
        exchange_id=raw["exchange_id"],
    )


def _error(raw: Mapping[str, Any]) -> CheckError:
    return CheckError(ErrorKind(raw["kind"]), str(raw["description"]), bool(raw["retryable"]))


def _plan(raw: Mapping[str, Any]) -> Plan:
    return Plan(
        name=raw["name"],
        group_number=raw["group_number"],
        group_name=raw["group_name"],
        insurance_type=raw["insurance_type"],
        coverage_start=_optional_date(raw["coverage_start"]),
        coverage_end=_optional_date(raw["coverage_end"]),
    )


def _benefits(raw: Mapping[str, Any]) -> ServiceBenefits:
    return ServiceBenefits(
        service_type=raw["service_type"],
        coverage=CoverageState(raw["coverage"]),
        copayments=_amounts(raw["copayments"]),
        coinsurance=_amounts(raw["coinsurance"]),
        deductibles=_amounts(raw["deductibles"]),
        out_of_pocket=_amounts(raw["out_of_pocket"]),
        messages=tuple(raw["messages"]),
    )


def _amounts(items: Sequence[Mapping[str, Any]]) -> tuple[Amount, ...]:
    return tuple(
        Amount(
            coverage_level=item["coverage_level"],
            network=item["network"],
            period=item["period"],
            amount=None if item["amount"] is None else Decimal(item["amount"]),
            percent=None if item["percent"] is None else Decimal(item["percent"]),
            authorization_required=bool(item["authorization_required"]),
        )
        for item in items
    )


def _rejection(raw: Mapping[str, Any]) -> RejectionInfo:
    return RejectionInfo(
        level=RejectionLevel(raw["level"]),
        valid_request=bool(raw["valid_request"]),
        code=raw["code"],
        description=raw["description"],
        follow_up_code=raw["follow_up_code"],
    )


def _optional_date(value: str | None) -> date | None:
    return None if value is None else date.fromisoformat(value)


def _optional_datetime(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)
