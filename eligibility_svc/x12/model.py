"""Typed 270 inquiries and normalized 271 responses: frozen values with no X12 syntax left.

Absent optional elements are `None` (or an empty tuple), never empty strings, so that a
parsed value and the value it was built from compare equal. Amounts and percentages are
`Decimal`; dates are `datetime.date`. The model carries PHI (names, member ids, birth
dates): the eligibility service encrypts it at rest, and nothing here puts it in messages.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, time
from decimal import Decimal
from typing import Generic, TypeVar

from eligibility_svc.x12 import codes

T = TypeVar("T")


class CoverageStatus(enum.Enum):
    """What an EB01 code 1-8 says about the coverage."""

    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"


class EligibilityStatus(enum.Enum):
    """Overall answer for one patient and service type (see `summary.summarize`)."""

    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    NOT_FOUND = "NOT_FOUND"
    ERROR = "ERROR"


# --- envelope ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InterchangeHeader:
    """The ISA segment (fixed-width fields stored without their padding)."""

    sender_qualifier: str
    sender_id: str
    receiver_qualifier: str
    receiver_id: str
    created_date: date
    created_time: time
    control_number: int
    usage: str = "P"
    acknowledgment_requested: bool = False
    authorization_qualifier: str = "00"
    authorization: str = ""
    security_qualifier: str = "00"
    security: str = ""


@dataclass(frozen=True)
class FunctionalGroup(Generic[T]):
    """A GS..GE group; GS01 and GS08 are implied by the transaction type (HS/HB, X279A1)."""

    sender_code: str
    receiver_code: str
    created_date: date
    created_time: time
    control_number: int
    transactions: tuple[T, ...]


@dataclass(frozen=True)
class Interchange(Generic[T]):
    """An ISA..IEA interchange; `warnings` lists what the parser tolerated (no PHI)."""

    header: InterchangeHeader
    groups: tuple[FunctionalGroup[T], ...]
    warnings: tuple[str, ...] = ()

    @property
    def transactions(self) -> tuple[T, ...]:
        return tuple(t for group in self.groups for t in group.transactions)


# --- shared segments --------------------------------------------------------------------


@dataclass(frozen=True)
class Entity:
    """An NM1 segment: who (NM101), person or not (NM102), name parts and identifier."""

    entity_code: str
    entity_type: str
    name: str | None = None
    first_name: str | None = None
    middle_name: str | None = None
    suffix: str | None = None
    id_qualifier: str | None = None
    identifier: str | None = None


@dataclass(frozen=True)
class Address:
    """N3 street lines and N4 city/state/postal code/country."""

    street: tuple[str, ...] = ()
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country_code: str | None = None
    country_subdivision: str | None = None


@dataclass(frozen=True)
class Reference:
    """A REF segment: qualifier (REF01), identifier (REF02), optional description (REF03)."""

    qualifier: str
    identifier: str
    description: str | None = None


@dataclass(frozen=True)
class ProviderInfo:
    """A PRV segment: provider code (PRV01) and taxonomy reference (PRV02/PRV03)."""

    code: str
    qualifier: str | None = None
    identifier: str | None = None


@dataclass(frozen=True)
class ContactNumber:
    """One PER communication number with its qualifier (TE, EM, FX, UR, EX)."""

    qualifier: str
    number: str


@dataclass(frozen=True)
class Contact:
    """A PER segment: contact function (PER01), name (PER02) and up to three numbers."""

    function: str
    name: str | None = None
    numbers: tuple[ContactNumber, ...] = ()


@dataclass(frozen=True)
class TraceNumber:
    """A TRN segment: trace type (1 current, 2 referenced), reference and originator."""

    trace_type: str
    reference: str
    originator: str | None = None
    secondary: str | None = None


@dataclass(frozen=True)
class DatePeriod:
    """A DTP segment: qualifier (DTP01) and a date (D8) or range (RD8, `end` set)."""

    qualifier: str
    start: date
    end: date | None = None

    @property
    def meaning(self) -> str | None:
        return codes.DATE_QUALIFIERS.get(self.qualifier)


@dataclass(frozen=True)
class Relationship:
    """An INS segment: subscriber or not (INS01), relationship code (INS02) and changes."""

    is_subscriber: bool
    code: str
    maintenance_type: str | None = None
    maintenance_reason: str | None = None
    birth_sequence: str | None = None


@dataclass(frozen=True)
class IndustryCode:
    """An III segment: code list qualifier (III01, e.g. ZZ place of service) and code."""

    qualifier: str
    code: str


@dataclass(frozen=True)
class Rejection:
    """An AAA segment: whether the request was valid, why it was rejected, what to do next."""

    valid_request: bool
    reason_code: str
    follow_up_code: str | None = None

    @property
    def reason(self) -> str | None:
        return codes.REJECT_REASONS.get(self.reason_code)

    @property
    def follow_up(self) -> str | None:
        return (
            None
            if self.follow_up_code is None
            else codes.FOLLOW_UP_ACTIONS.get(self.follow_up_code)
        )


@dataclass(frozen=True)
class Member:
    """A subscriber or dependent (loops 2000C/2100C or 2000D/2100D) without benefits."""

    entity: Entity
    trace_numbers: tuple[TraceNumber, ...] = ()
    references: tuple[Reference, ...] = ()
    address: Address | None = None
    provider: ProviderInfo | None = None
    birth_date: date | None = None
    gender: str | None = None
    relationship: Relationship | None = None
    dates: tuple[DatePeriod, ...] = ()


@dataclass(frozen=True)
class InformationReceiver:
    """The provider asking (loop 2100B): NM1, REF, N3/N4 and PRV."""

    entity: Entity
    references: tuple[Reference, ...] = ()
    address: Address | None = None
    provider: ProviderInfo | None = None


# --- 270 --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceInquiry:
    """One EQ loop (2110C/D): service types and/or a procedure, with its own details."""

    service_types: tuple[str, ...] = ()
    procedure: tuple[str, ...] = ()
    coverage_level: str | None = None
    industry_codes: tuple[IndustryCode, ...] = ()
    references: tuple[Reference, ...] = ()
    dates: tuple[DatePeriod, ...] = ()


@dataclass(frozen=True)
class EligibilityInquiry:
    """One 270 transaction set: who asks whom about which patient and services.

    `service_inquiries` belong to the patient: the dependent when there is one, otherwise
    the subscriber (the TR3 puts the EQ loop under the patient's own HL level).
    """

    control_number: str
    reference: str
    created_date: date
    created_time: time
    information_source: Entity
    information_receiver: InformationReceiver
    subscriber: Member
    service_inquiries: tuple[ServiceInquiry, ...]
    dependent: Member | None = None
    transaction_type: str | None = None

    @property
    def patient(self) -> Member:
        return self.dependent if self.dependent is not None else self.subscriber


# --- 271 --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceDelivery:
    """An HSD segment: how much, how often, over which period a benefit is delivered."""

    quantity_qualifier: str | None = None
    quantity: Decimal | None = None
    unit: str | None = None
    sample_selection_modulus: Decimal | None = None
    time_period: str | None = None
    period_count: Decimal | None = None
    frequency: str | None = None
    pattern_time: str | None = None


@dataclass(frozen=True)
class RelatedEntity:
    """A 2120 loop entry inside LS/LE: e.g. the primary care provider or another payer."""

    entity: Entity
    address: Address | None = None
    contacts: tuple[Contact, ...] = ()
    provider: ProviderInfo | None = None


@dataclass(frozen=True)
class Benefit:
    """One EB loop (2110C/D) with its HSD, REF, DTP, AAA, MSG, III and 2120 entries."""

    code: str
    coverage_level: str | None = None
    service_types: tuple[str, ...] = ()
    insurance_type: str | None = None
    plan_description: str | None = None
    time_period: str | None = None
    amount: Decimal | None = None
    percent: Decimal | None = None
    quantity_qualifier: str | None = None
    quantity: Decimal | None = None
    authorization_required: str | None = None
    in_plan_network: str | None = None
    procedure: tuple[str, ...] = ()
    service_deliveries: tuple[ServiceDelivery, ...] = ()
    references: tuple[Reference, ...] = ()
    dates: tuple[DatePeriod, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    messages: tuple[str, ...] = ()
    industry_codes: tuple[IndustryCode, ...] = ()
    related_entities: tuple[RelatedEntity, ...] = ()

    @property
    def meaning(self) -> str | None:
        return codes.ELIGIBILITY_CODES.get(self.code)

    @property
    def coverage(self) -> CoverageStatus | None:
        """ACTIVE for EB01 1-5, INACTIVE for 6-8, None for benefit details (A, B, C...)."""
        if self.code in codes.ACTIVE_CODES:
            return CoverageStatus.ACTIVE
        if self.code in codes.INACTIVE_CODES:
            return CoverageStatus.INACTIVE
        return None

    @property
    def in_network(self) -> bool | None:
        """EB12: True in network, False out of network, None unknown or not applicable."""
        return {"Y": True, "N": False}.get(self.in_plan_network or "")

    def applies_to(self, service_type: str) -> bool:
        return service_type in self.service_types


@dataclass(frozen=True)
class PatientResponse:
    """A subscriber (with its dependents) or a dependent in a 271, with its benefits."""

    member: Member
    rejections: tuple[Rejection, ...] = ()
    benefits: tuple[Benefit, ...] = ()
    dependents: tuple[PatientResponse, ...] = ()


@dataclass(frozen=True)
class ReceiverLoop:
    """Loop 2000B/2100B of a 271: the receiver, its rejections and its subscribers."""

    receiver: InformationReceiver
    rejections: tuple[Rejection, ...] = ()
    subscribers: tuple[PatientResponse, ...] = ()


@dataclass(frozen=True)
class SourceLoop:
    """Loop 2000A/2100A of a 271: the payer, its contacts and rejections, its receivers.

    Rejections from 2000A (before NM1) and 2100A (after it) are kept together: both say
    the request never reached a point where patients could be looked up.
    """

    entity: Entity
    contacts: tuple[Contact, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    receivers: tuple[ReceiverLoop, ...] = ()


@dataclass(frozen=True)
class PatientContext:
    """A patient with the loops above it; `patient` is the dependent when there is one."""

    source: SourceLoop
    receiver: ReceiverLoop
    subscriber: PatientResponse
    dependent: PatientResponse | None = None

    @property
    def patient(self) -> PatientResponse:
        return self.dependent if self.dependent is not None else self.subscriber


@dataclass(frozen=True)
class EligibilityResponse:
    """One 271 transaction set, normalized: the HL tree as nested loops."""

    control_number: str
    reference: str
    created_date: date
    created_time: time
    sources: tuple[SourceLoop, ...]
    transaction_type: str | None = None

    def patients(self) -> tuple[PatientContext, ...]:
        """Every patient in the response: each dependent, or the subscriber if it has none."""
        return tuple(self._iter_patients())

    def _iter_patients(self) -> Iterator[PatientContext]:
        for source in self.sources:
            for receiver in source.receivers:
                for subscriber in receiver.subscribers:
                    if not subscriber.dependents:
                        yield PatientContext(source, receiver, subscriber)
                    for dependent in subscriber.dependents:
                        yield PatientContext(source, receiver, subscriber, dependent)
