"""Build 270 inquiries and 271 responses from the model, always inside a valid envelope.

The builders refuse (with `X12BuildError`, naming the model field) any value the parser
would not read back identically: delimiters or control characters inside values, empty
strings or surrounding spaces, codes the parser rejects, and precision X12 cannot carry.
So `parse_270(build_270(x)) == x` and `parse_271(build_271(y)) == y` hold for every value
the builders accept.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from typing import TypeVar

from eligibility_svc.x12 import codes
from eligibility_svc.x12.errors import X12BuildError
from eligibility_svc.x12.model import (
    Address,
    Benefit,
    Contact,
    DatePeriod,
    EligibilityInquiry,
    EligibilityResponse,
    Entity,
    FunctionalGroup,
    IndustryCode,
    InformationReceiver,
    Interchange,
    InterchangeHeader,
    Member,
    PatientResponse,
    ProviderInfo,
    ReceiverLoop,
    Reference,
    Rejection,
    RelatedEntity,
    ServiceDelivery,
    ServiceInquiry,
    SourceLoop,
    TraceNumber,
)
from eligibility_svc.x12.tokenizer import Delimiters

T = TypeVar("T")

DEFAULT_DELIMITERS = Delimiters(element="*", repetition="^", component=":", segment="~")
# ISA fields written padded to fixed widths: (field, shortest, longest).
_ISA_WIDTHS = (
    ("authorization_qualifier", 2, 2),
    ("authorization", 0, 10),
    ("security_qualifier", 2, 2),
    ("security", 0, 10),
    ("sender_qualifier", 2, 2),
    ("sender_id", 1, 15),
    ("receiver_qualifier", 2, 2),
    ("receiver_id", 1, 15),
)
_MAX_NUMBER_DIGITS = 18
_CONTROL_CHAR = re.compile(r"[\x00-\x1f\x7f]")
_SERVICE_TYPE = re.compile(r"[A-Z0-9]{1,2}")
_DATE_QUALIFIER = re.compile(r"[0-9]{3}")
_REJECT_REASON = re.compile(r"[A-Z0-9]{2}")
_ST_CONTROL = re.compile(r"\S{4,9}")
_MAX_CONTROL_NUMBER = 999_999_999
_MAX_PER_NUMBERS = 3
_MAX_STREET_LINES = 2


def build_270(
    interchange: Interchange[EligibilityInquiry],
    delimiters: Delimiters = DEFAULT_DELIMITERS,
    *,
    line_breaks: bool = False,
) -> str:
    """Write an interchange of 270 inquiries (GS01 HS, GS08/ST03 005010X279A1)."""
    return _build(interchange, "270", _write_inquiry, delimiters, line_breaks)


def build_271(
    interchange: Interchange[EligibilityResponse],
    delimiters: Delimiters = DEFAULT_DELIMITERS,
    *,
    line_breaks: bool = False,
) -> str:
    """Write an interchange of 271 responses (GS01 HB, GS08/ST03 005010X279A1)."""
    return _build(interchange, "271", _write_response, delimiters, line_breaks)


def interchange_for(
    transactions: Sequence[T],
    *,
    sender_id: str,
    receiver_id: str,
    control_number: int,
    created: datetime,
    sender_qualifier: str = "ZZ",
    receiver_qualifier: str = "ZZ",
    usage: str = "P",
) -> Interchange[T]:
    """One interchange with one group around `transactions`; ISA13 = GS06 = control number.

    `created` is truncated to what ISA09/ISA10 and GS04/GS05 carry (minutes).
    """
    stamp = created.replace(second=0, microsecond=0, tzinfo=None)
    header = InterchangeHeader(
        sender_qualifier=sender_qualifier,
        sender_id=sender_id,
        receiver_qualifier=receiver_qualifier,
        receiver_id=receiver_id,
        created_date=stamp.date(),
        created_time=stamp.time(),
        control_number=control_number,
        usage=usage,
    )
    group = FunctionalGroup(
        sender_code=sender_id,
        receiver_code=receiver_id,
        created_date=stamp.date(),
        created_time=stamp.time(),
        control_number=control_number,
        transactions=tuple(transactions),
    )
    return Interchange(header, (group,))


class _Writer:
    """Accumulates segments of one interchange with the chosen delimiters."""

    def __init__(self, delimiters: Delimiters) -> None:
        self.delimiters = delimiters
        self.segments: list[str] = []

    def add(self, segment_id: str, *values: str | None) -> None:
        items = ["" if value is None else value for value in values]
        while items and not items[-1]:
            items.pop()
        self.segments.append(self.delimiters.element.join((segment_id, *items)))

    def repeat(self, values: Iterable[str]) -> str:
        separator = self.delimiters.repetition
        assert separator is not None  # _build requires a repetition separator
        return separator.join(values)

    def composite(self, values: Iterable[str]) -> str:
        return self.delimiters.component.join(values)

    def text(self, line_breaks: bool) -> str:
        terminator = self.delimiters.segment + ("\n" if line_breaks else "")
        return "".join(segment + terminator for segment in self.segments)


# Writes one transaction set (ST..before SE) and returns its control number for SE02.
_TransactionWriter = Callable[[_Writer, T, str], str]


def _build(
    interchange: Interchange[T],
    set_id: str,
    write: _TransactionWriter[T],
    delimiters: Delimiters,
    line_breaks: bool,
) -> str:
    _check_delimiters(delimiters)
    _check_values(interchange, "interchange", delimiters)
    if not interchange.groups:
        raise X12BuildError("interchange.groups", "needs at least one functional group")
    writer = _Writer(delimiters)
    _write_isa(writer, interchange.header)
    for index, group in enumerate(interchange.groups):
        _write_group(writer, group, f"interchange.groups[{index}]", set_id, write)
    writer.add("IEA", str(len(interchange.groups)), f"{interchange.header.control_number:09d}")
    return writer.text(line_breaks)


def _check_delimiters(delimiters: Delimiters) -> None:
    problems = delimiters.problems()
    if delimiters.repetition is None:
        problems.append("5010 needs a repetition separator (ISA11)")
    if problems:
        raise X12BuildError("delimiters", "; ".join(problems))


# --- value checks ------------------------------------------------------------------------

# The only strings allowed to be empty: ISA02/ISA04 are written as spaces when unused.
_MAY_BE_EMPTY = frozenset({(InterchangeHeader, "authorization"), (InterchangeHeader, "security")})


def _check_values(value: object, path: str, delimiters: Delimiters) -> None:
    """Every string and number in the model must survive writing and reading unchanged."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for item in dataclasses.fields(value):
            child = getattr(value, item.name)
            child_path = f"{path}.{item.name}"
            if child == "" and (type(value), item.name) in _MAY_BE_EMPTY:
                continue
            _check_values(child, child_path, delimiters)
    elif isinstance(value, tuple):
        for index, item in enumerate(value):
            _check_values(item, f"{path}[{index}]", delimiters)
    elif isinstance(value, str):
        _check_string(value, path, delimiters)
    elif isinstance(value, Decimal):
        _check_decimal(value, path)


def _check_string(value: str, path: str, delimiters: Delimiters) -> None:
    if not value:
        raise X12BuildError(path, "is empty; use None for an absent value")
    if value != value.strip(" "):
        raise X12BuildError(path, "has leading or trailing spaces, which X12 does not keep")
    if _CONTROL_CHAR.search(value):
        raise X12BuildError(path, "contains a control character or line break")
    used = {delimiters.element, delimiters.component, delimiters.segment, delimiters.repetition}
    if any(char in used for char in value):
        raise X12BuildError(path, "contains one of the delimiters")


def _check_decimal(value: Decimal, path: str) -> None:
    if not value.is_finite():
        raise X12BuildError(path, "is not a finite number")
    digits = sum(char.isdigit() for char in format(value, "f"))
    if digits > _MAX_NUMBER_DIGITS:
        raise X12BuildError(path, f"has more than {_MAX_NUMBER_DIGITS} digits")


def _require(condition: bool, path: str, problem: str) -> None:
    if not condition:
        raise X12BuildError(path, problem)


def _check_code(value: str | None, allowed: Collection[str], path: str, what: str) -> None:
    _require(value is None or value in allowed, path, f"expected {what}")


def _check_pattern(value: str, pattern: re.Pattern[str], path: str, what: str) -> None:
    _require(pattern.fullmatch(value) is not None, path, f"expected {what}")


# --- formatting --------------------------------------------------------------------------


def _number(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def _ccyymmdd(value: date) -> str:
    return f"{value.year:04d}{value.month:02d}{value.day:02d}"


def _hhmm_etc(value: time, path: str) -> str:
    """HHMM, HHMMSS, HHMMSSD or HHMMSSDD: the shortest form that keeps the value."""
    _require(value.tzinfo is None, path, "must be a local time without tzinfo")
    base = f"{value.hour:02d}{value.minute:02d}"
    micro = value.microsecond
    if value.second == 0 and micro == 0:
        return base
    base += f"{value.second:02d}"
    if micro == 0:
        return base
    if micro % 100_000 == 0:
        return base + str(micro // 100_000)
    _require(micro % 10_000 == 0, path, "X12 times carry at most hundredths of a second")
    return base + f"{micro // 10_000:02d}"


# --- envelope ----------------------------------------------------------------------------


def _write_isa(writer: _Writer, header: InterchangeHeader) -> None:
    path = "interchange.header"
    for name, shortest, longest in _ISA_WIDTHS:
        width = len(getattr(header, name))
        _require(
            shortest <= width <= longest,
            f"{path}.{name}",
            f"must be {longest} characters"
            if shortest == longest
            else f"must be at most {longest} characters",
        )
    _require(
        2000 <= header.created_date.year <= 2099,
        f"{path}.created_date",
        "ISA09 holds years 2000-2099 only",
    )
    created = header.created_time
    _require(
        created.second == 0 and created.microsecond == 0 and created.tzinfo is None,
        f"{path}.created_time",
        "ISA10 holds hours and minutes only",
    )
    _require(
        0 <= header.control_number <= _MAX_CONTROL_NUMBER,
        f"{path}.control_number",
        "must be 0-999999999",
    )
    _check_code(header.usage, ("P", "T"), f"{path}.usage", "P (production) or T (test)")
    assert writer.delimiters.repetition is not None
    writer.add(
        "ISA",
        header.authorization_qualifier,
        header.authorization.ljust(10),
        header.security_qualifier,
        header.security.ljust(10),
        header.sender_qualifier,
        header.sender_id.ljust(15),
        header.receiver_qualifier,
        header.receiver_id.ljust(15),
        f"{header.created_date:%y%m%d}",
        f"{created.hour:02d}{created.minute:02d}",
        writer.delimiters.repetition,
        "00501",
        f"{header.control_number:09d}",
        "1" if header.acknowledgment_requested else "0",
        header.usage,
        writer.delimiters.component,
    )


def _write_group(
    writer: _Writer,
    group: FunctionalGroup[T],
    path: str,
    set_id: str,
    write: _TransactionWriter[T],
) -> None:
    _require(
        1 <= group.control_number <= _MAX_CONTROL_NUMBER,
        f"{path}.control_number",
        "must be 1-999999999",
    )
    _require(bool(group.transactions), f"{path}.transactions", "needs at least one transaction set")
    writer.add(
        "GS",
        "HS" if set_id == "270" else "HB",
        group.sender_code,
        group.receiver_code,
        _ccyymmdd(group.created_date),
        _hhmm_etc(group.created_time, f"{path}.created_time"),
        str(group.control_number),
        "X",
        codes.VERSION_5010,
    )
    for index, transaction in enumerate(group.transactions):
        start = len(writer.segments)
        control = write(writer, transaction, f"{path}.transactions[{index}]")
        count = len(writer.segments) - start + 1
        writer.add("SE", str(count), control)
    writer.add("GE", str(len(group.transactions)), str(group.control_number))


def _write_header(
    writer: _Writer,
    set_id: str,
    purpose: str,
    transaction: EligibilityInquiry | EligibilityResponse,
    path: str,
) -> None:
    _check_pattern(
        transaction.control_number, _ST_CONTROL, f"{path}.control_number", "4-9 characters"
    )
    writer.add("ST", set_id, transaction.control_number, codes.VERSION_5010)
    writer.add(
        "BHT",
        "0022",
        purpose,
        transaction.reference,
        _ccyymmdd(transaction.created_date),
        _hhmm_etc(transaction.created_time, f"{path}.created_time"),
        transaction.transaction_type,
    )


class _Levels:
    """Hands out HL ids in document order."""

    def __init__(self) -> None:
        self.count = 0

    def add(self, writer: _Writer, parent: int | None, level: str, has_children: bool) -> int:
        self.count += 1
        writer.add(
            "HL",
            str(self.count),
            None if parent is None else str(parent),
            level,
            "1" if has_children else "0",
        )
        return self.count


# --- 270 ---------------------------------------------------------------------------------


def _write_inquiry(writer: _Writer, inquiry: EligibilityInquiry, path: str) -> str:
    _require(bool(inquiry.service_inquiries), f"{path}.service_inquiries", "needs at least one EQ")
    _write_header(writer, "270", "13", inquiry, path)
    levels = _Levels()
    source = levels.add(writer, None, codes.LEVEL_SOURCE, True)
    _write_entity(
        writer, inquiry.information_source, codes.SOURCE_ENTITIES, f"{path}.information_source"
    )
    receiver = levels.add(writer, source, codes.LEVEL_RECEIVER, True)
    _write_receiver(writer, inquiry.information_receiver, (), f"{path}.information_receiver")
    has_dependent = inquiry.dependent is not None
    subscriber = levels.add(writer, receiver, codes.LEVEL_SUBSCRIBER, has_dependent)
    _write_member(writer, inquiry.subscriber, codes.SUBSCRIBER_ENTITY, (), f"{path}.subscriber")
    if inquiry.dependent is None:
        _write_service_inquiries(writer, inquiry.service_inquiries, f"{path}.service_inquiries")
    else:
        levels.add(writer, subscriber, codes.LEVEL_DEPENDENT, False)
        _write_member(writer, inquiry.dependent, codes.DEPENDENT_ENTITY, (), f"{path}.dependent")
        _write_service_inquiries(writer, inquiry.service_inquiries, f"{path}.service_inquiries")
    return inquiry.control_number


def _write_service_inquiries(
    writer: _Writer, inquiries: Sequence[ServiceInquiry], path: str
) -> None:
    for index, inquiry in enumerate(inquiries):
        here = f"{path}[{index}]"
        _require(
            bool(inquiry.service_types or inquiry.procedure),
            here,
            "needs service types or a procedure",
        )
        _check_service_types(inquiry.service_types, f"{here}.service_types")
        _check_code(
            inquiry.coverage_level,
            codes.COVERAGE_LEVELS,
            f"{here}.coverage_level",
            "a coverage level code",
        )
        writer.add(
            "EQ",
            writer.repeat(inquiry.service_types),
            writer.composite(inquiry.procedure),
            inquiry.coverage_level,
        )
        _write_industry_codes(writer, inquiry.industry_codes)
        _write_references(writer, inquiry.references)
        _write_dates(writer, inquiry.dates, f"{here}.dates")


# --- 271 ---------------------------------------------------------------------------------


def _write_response(writer: _Writer, response: EligibilityResponse, path: str) -> str:
    _require(bool(response.sources), f"{path}.sources", "needs at least one information source")
    _write_header(writer, "271", "11", response, path)
    levels = _Levels()
    for index, source in enumerate(response.sources):
        _write_source(writer, levels, source, f"{path}.sources[{index}]")
    return response.control_number


def _write_source(writer: _Writer, levels: _Levels, source: SourceLoop, path: str) -> None:
    hl = levels.add(writer, None, codes.LEVEL_SOURCE, bool(source.receivers))
    _write_entity(writer, source.entity, codes.SOURCE_ENTITIES, f"{path}.entity")
    _write_contacts(writer, source.contacts, f"{path}.contacts")
    _write_rejections(writer, source.rejections, f"{path}.rejections")
    for index, receiver in enumerate(source.receivers):
        _write_receiver_loop(writer, levels, hl, receiver, f"{path}.receivers[{index}]")


def _write_receiver_loop(
    writer: _Writer, levels: _Levels, parent: int, loop: ReceiverLoop, path: str
) -> None:
    hl = levels.add(writer, parent, codes.LEVEL_RECEIVER, bool(loop.subscribers))
    _write_receiver(writer, loop.receiver, loop.rejections, path)
    for index, subscriber in enumerate(loop.subscribers):
        here = f"{path}.subscribers[{index}]"
        subscriber_hl = levels.add(writer, hl, codes.LEVEL_SUBSCRIBER, bool(subscriber.dependents))
        _write_patient(writer, subscriber, codes.SUBSCRIBER_ENTITY, here)
        for position, dependent in enumerate(subscriber.dependents):
            there = f"{here}.dependents[{position}]"
            _require(
                not dependent.dependents, f"{there}.dependents", "a dependent has no dependents"
            )
            levels.add(writer, subscriber_hl, codes.LEVEL_DEPENDENT, False)
            _write_patient(writer, dependent, codes.DEPENDENT_ENTITY, there)


def _write_patient(writer: _Writer, patient: PatientResponse, entity_code: str, path: str) -> None:
    _write_member(writer, patient.member, entity_code, patient.rejections, path)
    for index, benefit in enumerate(patient.benefits):
        _write_benefit(writer, benefit, f"{path}.benefits[{index}]")


def _write_benefit(writer: _Writer, benefit: Benefit, path: str) -> None:
    _check_code(benefit.code, codes.ELIGIBILITY_CODES, f"{path}.code", "an eligibility code (EB01)")
    _check_code(
        benefit.coverage_level,
        codes.COVERAGE_LEVELS,
        f"{path}.coverage_level",
        "a coverage level code",
    )
    _check_service_types(benefit.service_types, f"{path}.service_types")
    _check_code(
        benefit.authorization_required,
        codes.YES_NO_UNKNOWN,
        f"{path}.authorization_required",
        "Y, N or U",
    )
    _check_code(
        benefit.in_plan_network, codes.NETWORK_INDICATORS, f"{path}.in_plan_network", "Y, N, U or W"
    )
    _require(
        benefit.quantity is None or benefit.quantity_qualifier is not None,
        f"{path}.quantity",
        "needs quantity_qualifier (EB09)",
    )
    writer.add(
        "EB",
        benefit.code,
        benefit.coverage_level,
        writer.repeat(benefit.service_types),
        benefit.insurance_type,
        benefit.plan_description,
        benefit.time_period,
        _number(benefit.amount),
        _number(benefit.percent),
        benefit.quantity_qualifier,
        _number(benefit.quantity),
        benefit.authorization_required,
        benefit.in_plan_network,
        writer.composite(benefit.procedure),
    )
    for delivery in benefit.service_deliveries:
        _write_service_delivery(writer, delivery)
    _write_references(writer, benefit.references)
    _write_dates(writer, benefit.dates, f"{path}.dates")
    _write_rejections(writer, benefit.rejections, f"{path}.rejections")
    for message in benefit.messages:
        writer.add("MSG", message)
    _write_industry_codes(writer, benefit.industry_codes)
    if benefit.related_entities:
        writer.add("LS", "2120")
        for index, related in enumerate(benefit.related_entities):
            _write_related(writer, related, f"{path}.related_entities[{index}]")
        writer.add("LE", "2120")


def _write_service_delivery(writer: _Writer, delivery: ServiceDelivery) -> None:
    writer.add(
        "HSD",
        delivery.quantity_qualifier,
        _number(delivery.quantity),
        delivery.unit,
        _number(delivery.sample_selection_modulus),
        delivery.time_period,
        _number(delivery.period_count),
        delivery.frequency,
        delivery.pattern_time,
    )


def _write_related(writer: _Writer, related: RelatedEntity, path: str) -> None:
    _write_entity(writer, related.entity, None, f"{path}.entity")
    _write_address(writer, related.address, f"{path}.address")
    _write_contacts(writer, related.contacts, f"{path}.contacts")
    _write_provider(writer, related.provider)


# --- shared segments ---------------------------------------------------------------------


def _write_entity(
    writer: _Writer, entity: Entity, allowed: Collection[str] | None, path: str
) -> None:
    if allowed is not None:
        _check_code(
            entity.entity_code,
            allowed,
            f"{path}.entity_code",
            f"one of {', '.join(sorted(allowed))}",
        )
    _check_code(
        entity.entity_type, ("1", "2"), f"{path}.entity_type", "1 (person) or 2 (non-person)"
    )
    _require(
        (entity.id_qualifier is None) == (entity.identifier is None),
        f"{path}.identifier",
        "identifier and id_qualifier go together",
    )
    writer.add(
        "NM1",
        entity.entity_code,
        entity.entity_type,
        entity.name,
        entity.first_name,
        entity.middle_name,
        None,
        entity.suffix,
        entity.id_qualifier,
        entity.identifier,
    )


def _write_receiver(
    writer: _Writer, receiver: InformationReceiver, rejections: Sequence[Rejection], path: str
) -> None:
    _write_entity(writer, receiver.entity, codes.RECEIVER_ENTITIES, f"{path}.entity")
    _write_references(writer, receiver.references)
    _write_address(writer, receiver.address, f"{path}.address")
    _write_rejections(writer, rejections, f"{path}.rejections")
    _write_provider(writer, receiver.provider)


def _write_member(
    writer: _Writer, member: Member, entity_code: str, rejections: Sequence[Rejection], path: str
) -> None:
    for trace in member.trace_numbers:
        _write_trace(writer, trace, f"{path}.trace_numbers")
    _write_entity(writer, member.entity, (entity_code,), f"{path}.entity")
    _write_references(writer, member.references)
    _write_address(writer, member.address, f"{path}.address")
    _write_rejections(writer, rejections, f"{path}.rejections")
    _write_provider(writer, member.provider)
    _check_code(member.gender, codes.GENDERS, f"{path}.gender", "F, M or U")
    if member.birth_date is not None or member.gender is not None:
        birth = None if member.birth_date is None else _ccyymmdd(member.birth_date)
        writer.add("DMG", None if birth is None else "D8", birth, member.gender)
    relationship = member.relationship
    if relationship is not None:
        writer.add(
            "INS",
            "Y" if relationship.is_subscriber else "N",
            relationship.code,
            relationship.maintenance_type,
            relationship.maintenance_reason,
            *([None] * 12),
            relationship.birth_sequence,
        )
    _write_dates(writer, member.dates, f"{path}.dates")


def _write_trace(writer: _Writer, trace: TraceNumber, path: str) -> None:
    _check_code(trace.trace_type, ("1", "2"), f"{path}.trace_type", "1 (current) or 2 (referenced)")
    writer.add("TRN", trace.trace_type, trace.reference, trace.originator, trace.secondary)


def _write_references(writer: _Writer, references: Sequence[Reference]) -> None:
    for ref in references:
        writer.add("REF", ref.qualifier, ref.identifier, ref.description)


def _write_address(writer: _Writer, address: Address | None, path: str) -> None:
    if address is None:
        return
    _require(len(address.street) <= _MAX_STREET_LINES, f"{path}.street", "holds at most two lines")
    n4 = (
        address.city,
        address.state,
        address.postal_code,
        address.country_code,
        address.country_subdivision,
    )
    _require(bool(address.street) or any(v is not None for v in n4), path, "is empty; use None")
    if address.street:
        writer.add("N3", *address.street)
    if any(value is not None for value in n4):
        city, state, postal, country, subdivision = n4
        writer.add("N4", city, state, postal, country, None, None, subdivision)


def _write_provider(writer: _Writer, provider: ProviderInfo | None) -> None:
    if provider is not None:
        writer.add("PRV", provider.code, provider.qualifier, provider.identifier)


def _write_contacts(writer: _Writer, contacts: Sequence[Contact], path: str) -> None:
    for index, contact in enumerate(contacts):
        _require(
            len(contact.numbers) <= _MAX_PER_NUMBERS,
            f"{path}[{index}].numbers",
            "holds at most three",
        )
        pairs = [item for number in contact.numbers for item in (number.qualifier, number.number)]
        writer.add("PER", contact.function, contact.name, *pairs)


def _write_rejections(writer: _Writer, rejections: Sequence[Rejection], path: str) -> None:
    for index, rejection in enumerate(rejections):
        here = f"{path}[{index}]"
        _check_pattern(
            rejection.reason_code,
            _REJECT_REASON,
            f"{here}.reason_code",
            "a 2-character reject reason code",
        )
        _check_code(
            rejection.follow_up_code,
            codes.FOLLOW_UP_ACTIONS,
            f"{here}.follow_up_code",
            "a follow-up action code",
        )
        writer.add(
            "AAA",
            "Y" if rejection.valid_request else "N",
            None,
            rejection.reason_code,
            rejection.follow_up_code,
        )


def _write_dates(writer: _Writer, dates: Sequence[DatePeriod], path: str) -> None:
    for index, period in enumerate(dates):
        _check_pattern(
            period.qualifier,
            _DATE_QUALIFIER,
            f"{path}[{index}].qualifier",
            "a 3-digit date qualifier",
        )
        if period.end is None:
            writer.add("DTP", period.qualifier, "D8", _ccyymmdd(period.start))
        else:
            writer.add(
                "DTP", period.qualifier, "RD8", f"{_ccyymmdd(period.start)}-{_ccyymmdd(period.end)}"
            )


def _write_industry_codes(writer: _Writer, industry_codes: Sequence[IndustryCode]) -> None:
    for item in industry_codes:
        writer.add("III", item.qualifier, item.code)


def _check_service_types(service_types: Sequence[str], path: str) -> None:
    for index, value in enumerate(service_types):
        _check_pattern(
            value, _SERVICE_TYPE, f"{path}[{index}]", "a service type code (1-2 capitals or digits)"
        )
