"""The simulated payer's members and the rules that turn a 270 into a 271.

Rules, in order, for the patient a 270 asks about (all names and ids here are invented):

1. member id not 6-20 letters and digits: AAA 72 (invalid member id) at the subscriber;
2. member id not on the roster: AAA 75 (subscriber not found);
3. a birth date sent that differs from the roster's: AAA 71 (birth date does not match);
4. the member's `behavior` (see `Behavior`): AAA 42 at the payer level, HTTP 503, no answer,
   garbage, or a normal answer;
5. a normal answer: inactive members get EB*6; active ones EB*1 for 30 (plan coverage) with
   copay, coinsurance, deductible and out-of-pocket amounts, and EB*I for service types the
   plan does not cover when asked about one of them.

A roster file (JSON) replaces the built-in roster: `{"members": [{...}, ...]}` with the keys
of `RosterMember` (dates as YYYY-MM-DD, amounts as strings).
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

from eligibility_svc.x12 import (
    Benefit,
    DatePeriod,
    EligibilityInquiry,
    EligibilityResponse,
    Entity,
    Member,
    PatientResponse,
    ReceiverLoop,
    Reference,
    Rejection,
    SourceLoop,
    TraceNumber,
)

_VALID_MEMBER_ID = re.compile(r"[A-Z0-9]{6,20}")
PLAN_COVERAGE = "30"


class Behavior(enum.Enum):
    """How the payer reacts to an inquiry about a member."""

    NORMAL = "normal"
    UNABLE_TO_RESPOND = "aaa42"
    """A 271 with AAA 42 at the payer level: its back end is down."""
    HTTP_503 = "http503"
    """HTTP 503 without an envelope: the gateway refuses the request."""
    TIMEOUT = "timeout"
    """Never answers (the connection stays open until the client gives up)."""
    GARBAGE = "garbage"
    """HTTP 200 with a body that is no CORE envelope."""
    BAD_X12 = "bad_x12"
    """A well-formed envelope whose payload is not a 271."""


@dataclass(frozen=True)
class RosterMember:
    """One member as the payer's records have them."""

    member_id: str
    last_name: str
    first_name: str
    birth_date: date
    gender: str = "U"
    active: bool = True
    plan_name: str = "SILVER PPO 2000"
    insurance_type: str = "PR"
    group_number: str = "GRP7788"
    group_name: str = "ACME WIDGETS INC"
    coverage_start: date = date(2026, 1, 1)
    coverage_end: date | None = None
    office_copay: Decimal = Decimal("25.00")
    out_of_network_copay: Decimal = Decimal("50.00")
    coinsurance: Decimal = Decimal("0.2")
    deductible: Decimal = Decimal("1500.00")
    deductible_remaining: Decimal = Decimal("500.00")
    out_of_pocket: Decimal = Decimal("5000.00")
    not_covered: tuple[str, ...] = ()
    behavior: Behavior = Behavior.NORMAL
    latency_s: float | None = None
    """Fixed answer time for this member, instead of the simulator's random latency."""


def builtin_roster() -> tuple[RosterMember, ...]:
    """Members covering every outcome; ids say what they do (SIMA active, SIMI inactive...)."""
    return (
        RosterMember("SIMA00001", "SMITH", "JOHN", date(1980, 1, 15), "M"),
        RosterMember(
            "SIMI00002",
            "DOE",
            "JANE",
            date(1975, 6, 30),
            "F",
            active=False,
            coverage_start=date(2024, 1, 1),
            coverage_end=date(2025, 12, 31),
        ),
        RosterMember("SIMN00003", "BROWN", "ALEX", date(1990, 3, 3), "U", not_covered=("AL", "33")),
        RosterMember(
            "SIMU00004", "GREEN", "PAT", date(1966, 9, 9), behavior=Behavior.UNABLE_TO_RESPOND
        ),
        RosterMember("SIMD00005", "WHITE", "SAM", date(1971, 2, 2), behavior=Behavior.HTTP_503),
        RosterMember("SIMT00006", "BLACK", "LEE", date(1983, 4, 4), behavior=Behavior.TIMEOUT),
        RosterMember("SIMG00007", "GRAY", "KIM", date(1999, 5, 5), behavior=Behavior.GARBAGE),
        RosterMember("SIMX00008", "REED", "MAX", date(2001, 7, 7), behavior=Behavior.BAD_X12),
    )


def load_roster(path: Path) -> tuple[RosterMember, ...]:
    """Members from a JSON roster file (see the module docstring)."""
    document = json.loads(path.read_text(encoding="utf-8"))
    entries = document.get("members") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"roster {path}: want an object with a non-empty members list")
    return tuple(_member_from(entry, index) for index, entry in enumerate(entries))


def _member_from(entry: object, index: int) -> RosterMember:
    if not isinstance(entry, dict):
        raise ValueError(f"members[{index}] must be an object")
    values = dict(entry)
    for key in ("birth_date", "coverage_start", "coverage_end"):
        if isinstance(values.get(key), str):
            values[key] = date.fromisoformat(values[key])
    for key in (
        "office_copay",
        "out_of_network_copay",
        "coinsurance",
        "deductible",
        "deductible_remaining",
        "out_of_pocket",
    ):
        if key in values:
            values[key] = Decimal(str(values[key]))
    if "not_covered" in values:
        values["not_covered"] = tuple(values["not_covered"])
    if "behavior" in values:
        values["behavior"] = Behavior(values["behavior"])
    try:
        return RosterMember(**values)
    except TypeError as e:
        raise ValueError(f"members[{index}]: {e}") from e


@dataclass(frozen=True)
class Roster:
    """Members by (upper-case) member id."""

    members: Mapping[str, RosterMember] = field(default_factory=dict)

    @classmethod
    def of(cls, members: Sequence[RosterMember]) -> Roster:
        return cls({m.member_id.upper(): m for m in members})

    def find(self, member_id: str) -> RosterMember | None:
        return self.members.get(member_id.upper())


@dataclass(frozen=True)
class Decision:
    """What to send back: a behaviour and, for answers, the 271 transaction."""

    behavior: Behavior
    response: EligibilityResponse | None
    member: RosterMember | None
    latency_s: float | None = None


def decide(inquiry: EligibilityInquiry, roster: Roster, now: datetime) -> Decision:
    """Apply the rules of the module docstring to one 270 transaction."""
    subscriber = inquiry.subscriber
    member_id = (subscriber.entity.identifier or "").upper()
    if not _VALID_MEMBER_ID.fullmatch(member_id):
        return _rejected(inquiry, now, "72")
    member = roster.find(member_id)
    if member is None:
        return _rejected(inquiry, now, "75")
    patient = inquiry.patient
    if inquiry.dependent is None and patient.birth_date not in (None, member.birth_date):
        return _rejected(inquiry, now, "71", member)
    if member.behavior is Behavior.UNABLE_TO_RESPOND:
        source = SourceLoop(
            entity=inquiry.information_source,
            rejections=(Rejection(valid_request=True, reason_code="42", follow_up_code="R"),),
        )
        return Decision(member.behavior, _response(inquiry, now, (source,)), member)
    if member.behavior is not Behavior.NORMAL:
        return Decision(member.behavior, None, member, member.latency_s)
    answer = _patient_answer(inquiry, member)
    return Decision(Behavior.NORMAL, _wrap(inquiry, now, answer), member, member.latency_s)


def _rejected(
    inquiry: EligibilityInquiry, now: datetime, code: str, member: RosterMember | None = None
) -> Decision:
    echo = _echo_member(inquiry.subscriber)
    answer = PatientResponse(
        member=echo,
        rejections=(Rejection(valid_request=True, reason_code=code, follow_up_code="C"),),
    )
    latency = None if member is None else member.latency_s
    return Decision(Behavior.NORMAL, _wrap(inquiry, now, answer), member, latency)


def _echo_member(member: Member, *, dates: tuple[DatePeriod, ...] = ()) -> Member:
    """The 2100C/D member of a 271: as asked, with TRN turned into 'referenced' traces."""
    traces = tuple(
        TraceNumber("2", t.reference, t.originator, t.secondary) for t in member.trace_numbers
    )
    return Member(
        entity=member.entity,
        trace_numbers=traces,
        birth_date=member.birth_date,
        gender=member.gender,
        dates=dates,
    )


def _patient_answer(inquiry: EligibilityInquiry, member: RosterMember) -> PatientResponse:
    asked = tuple(t for q in inquiry.service_inquiries for t in q.service_types)
    benefits = _benefits(member, asked)
    plan_dates = (
        DatePeriod("346", member.coverage_start),
        *(() if member.coverage_end is None else (DatePeriod("347", member.coverage_end),)),
    )
    subscriber_entity = Entity(
        entity_code="IL",
        entity_type="1",
        name=member.last_name,
        first_name=member.first_name,
        id_qualifier="MI",
        identifier=member.member_id,
    )
    subscriber = Member(
        entity=subscriber_entity,
        trace_numbers=_echo_member(inquiry.subscriber).trace_numbers,
        references=(Reference("6P", member.group_number, member.group_name),),
        birth_date=member.birth_date,
        gender=member.gender,
        dates=plan_dates,
    )
    if inquiry.dependent is None:
        return PatientResponse(member=subscriber, benefits=benefits)
    dependent = PatientResponse(
        member=_echo_member(inquiry.dependent, dates=plan_dates), benefits=benefits
    )
    return PatientResponse(member=subscriber, dependents=(dependent,))


def _benefits(member: RosterMember, asked: tuple[str, ...]) -> tuple[Benefit, ...]:
    if not member.active:
        return (
            Benefit(
                code="6",
                coverage_level="IND",
                service_types=(PLAN_COVERAGE,),
                insurance_type=member.insurance_type,
                plan_description=member.plan_name,
            ),
        )
    not_covered = tuple(t for t in asked if t in member.not_covered)
    office = ("98",)
    return (
        Benefit(
            code="1",
            coverage_level="IND",
            service_types=(PLAN_COVERAGE,),
            insurance_type=member.insurance_type,
            plan_description=member.plan_name,
        ),
        *(Benefit(code="I", service_types=(t,)) for t in not_covered),
        Benefit(
            code="B",
            coverage_level="IND",
            service_types=office,
            time_period="27",
            amount=member.office_copay,
            in_plan_network="Y",
        ),
        Benefit(
            code="B",
            coverage_level="IND",
            service_types=office,
            time_period="27",
            amount=member.out_of_network_copay,
            in_plan_network="N",
        ),
        Benefit(
            code="A",
            coverage_level="IND",
            service_types=(PLAN_COVERAGE,),
            percent=member.coinsurance,
            in_plan_network="Y",
        ),
        Benefit(
            code="C",
            coverage_level="IND",
            service_types=(PLAN_COVERAGE,),
            time_period="23",
            amount=member.deductible,
            in_plan_network="Y",
        ),
        Benefit(
            code="C",
            coverage_level="IND",
            service_types=(PLAN_COVERAGE,),
            time_period="29",
            amount=member.deductible_remaining,
            in_plan_network="Y",
        ),
        Benefit(
            code="G",
            coverage_level="IND",
            service_types=(PLAN_COVERAGE,),
            time_period="23",
            amount=member.out_of_pocket,
            in_plan_network="Y",
            messages=("OUT OF POCKET INCLUDES DEDUCTIBLE",),
        ),
    )


def _wrap(
    inquiry: EligibilityInquiry, now: datetime, answer: PatientResponse
) -> EligibilityResponse:
    receiver = ReceiverLoop(receiver=inquiry.information_receiver, subscribers=(answer,))
    source = SourceLoop(entity=inquiry.information_source, receivers=(receiver,))
    return _response(inquiry, now, (source,))


def _response(
    inquiry: EligibilityInquiry, now: datetime, sources: tuple[SourceLoop, ...]
) -> EligibilityResponse:
    stamp = now.replace(second=0, microsecond=0, tzinfo=None)
    return EligibilityResponse(
        control_number=inquiry.control_number,
        # Real-time 271s echo the 270's BHT03 so the submitter can match them.
        reference=inquiry.reference,
        created_date=stamp.date(),
        created_time=stamp.time(),
        sources=sources,
    )
