"""Readers for individual 270/271 segments: one X12 segment in, one model value out."""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import date

from eligibility_svc.x12 import codes
from eligibility_svc.x12.elements import (
    ccyymmdd,
    code,
    fail,
    number,
    parse_date,
    required_code,
    required_text,
    text,
    yes_no,
)
from eligibility_svc.x12.errors import describe_found
from eligibility_svc.x12.model import (
    Benefit,
    Contact,
    ContactNumber,
    DatePeriod,
    Entity,
    IndustryCode,
    ProviderInfo,
    Reference,
    Rejection,
    Relationship,
    ServiceDelivery,
    ServiceInquiry,
    TraceNumber,
)
from eligibility_svc.x12.tokenizer import Segment

_SERVICE_TYPE = re.compile(r"[A-Z0-9]{1,2}")
_DATE_QUALIFIER = re.compile(r"[0-9]{3}")
_REJECT_REASON = re.compile(r"[A-Z0-9]{2}")
_RANGE_SEPARATOR = "-"
# PER carries up to three (qualifier, number) pairs in elements 3-8.
_PER_PAIRS = ((3, 4), (5, 6), (7, 8))


def entity(segment: Segment, allowed: Collection[str] | None, what: str) -> Entity:
    """NM1: the entity code must be one the loop allows (e.g. IL for a subscriber)."""
    entity_code = required_code(segment, 1, what, allowed)
    entity_type = required_code(
        segment, 2, "an entity type 1 (person) or 2 (non-person)", ("1", "2")
    )
    qualifier = code(segment, 8, "an identification code qualifier")
    identifier = text(segment, 9)
    if qualifier is not None and identifier is None:
        raise fail(segment, 9, "expected the identifier named by NM108, found nothing")
    if identifier is not None and qualifier is None:
        raise fail(segment, 8, "expected the qualifier of the identifier in NM109, found nothing")
    return Entity(
        entity_code=entity_code,
        entity_type=entity_type,
        name=text(segment, 3),
        first_name=text(segment, 4),
        middle_name=text(segment, 5),
        suffix=text(segment, 7),
        id_qualifier=qualifier,
        identifier=identifier,
    )


def reference(segment: Segment) -> Reference:
    return Reference(
        qualifier=required_code(segment, 1, "a reference identification qualifier"),
        identifier=required_text(segment, 2, "a reference identifier"),
        description=text(segment, 3),
    )


def provider(segment: Segment) -> ProviderInfo:
    return ProviderInfo(
        code=required_code(segment, 1, "a provider code"),
        qualifier=code(segment, 2, "a reference identification qualifier"),
        identifier=text(segment, 3),
    )


def contact(segment: Segment) -> Contact:
    numbers: list[ContactNumber] = []
    for qualifier_at, number_at in _PER_PAIRS:
        qualifier = code(segment, qualifier_at, "a communication number qualifier")
        if qualifier is None:
            continue
        numbers.append(
            ContactNumber(qualifier, required_text(segment, number_at, "a communication number"))
        )
    return Contact(
        function=required_code(segment, 1, "a contact function code"),
        name=text(segment, 2),
        numbers=tuple(numbers),
    )


def trace(segment: Segment) -> TraceNumber:
    return TraceNumber(
        trace_type=required_code(segment, 1, "a trace type code 1 or 2", ("1", "2")),
        reference=required_text(segment, 2, "a trace number"),
        originator=text(segment, 3),
        secondary=text(segment, 4),
    )


def date_period(segment: Segment) -> DatePeriod:
    """DTP with D8 (one date) or RD8 (CCYYMMDD-CCYYMMDD)."""
    qualifier = required_code(segment, 1, "a date qualifier")
    if not _DATE_QUALIFIER.fullmatch(qualifier):
        raise fail(
            segment, 1, f"expected a 3-digit date qualifier, found {describe_found(qualifier)}"
        )
    form = required_code(segment, 2, "a date format D8 or RD8", ("D8", "RD8"))
    if form == "D8":
        return DatePeriod(qualifier, ccyymmdd(segment, 3))
    start, end = date_range(segment, 3)
    return DatePeriod(qualifier, start, end)


def date_range(segment: Segment, position: int) -> tuple[date, date]:
    what = "a date range CCYYMMDD-CCYYMMDD"
    value = segment.get(position).strip(" ")
    first, separator, second = value.partition(_RANGE_SEPARATOR)
    if not separator:
        found = "nothing" if not value else "a value that is not a date range"
        raise fail(segment, position, f"expected {what}, found {found}")
    return (
        parse_date(segment, position, first, what),
        parse_date(segment, position, second, what),
    )


def demographics(segment: Segment) -> tuple[date | None, str | None]:
    """DMG: birth date (D8) and gender."""
    birth_date = None
    if segment.get(2).strip(" "):
        required_code(segment, 1, "the date format D8", ("D8",))
        birth_date = ccyymmdd(segment, 2)
    gender = code(segment, 3, "a gender code F, M or U", codes.GENDERS)
    return birth_date, gender


def relationship(segment: Segment) -> Relationship:
    return Relationship(
        is_subscriber=yes_no(segment, 1, "a subscriber indicator Y or N"),
        code=required_code(segment, 2, "an individual relationship code"),
        maintenance_type=code(segment, 3, "a maintenance type code"),
        maintenance_reason=code(segment, 4, "a maintenance reason code"),
        birth_sequence=text(segment, 17),
    )


def industry_code(segment: Segment) -> IndustryCode:
    return IndustryCode(
        qualifier=required_code(segment, 1, "a code list qualifier"),
        code=required_code(segment, 2, "an industry code"),
    )


def rejection(segment: Segment) -> Rejection:
    reason = required_code(segment, 3, "a reject reason code")
    if not _REJECT_REASON.fullmatch(reason):
        raise fail(
            segment, 3, f"expected a 2-character reject reason code, found {describe_found(reason)}"
        )
    return Rejection(
        valid_request=yes_no(segment, 1, "a valid request indicator Y or N"),
        reason_code=reason,
        follow_up_code=code(segment, 4, "a follow-up action code", codes.FOLLOW_UP_ACTIONS),
    )


def service_types(segment: Segment, position: int) -> tuple[str, ...]:
    """A repeated service type element (EB03, EQ01)."""
    values = segment.repeats(position)
    for value in values:
        if not _SERVICE_TYPE.fullmatch(value):
            raise fail(
                segment, position, f"expected a service type code, found {describe_found(value)}"
            )
    return values


def service_inquiry(segment: Segment) -> ServiceInquiry:
    """EQ: the loop's REF, DTP and III are added by the loop reader."""
    types = service_types(segment, 1)
    procedure = segment.components(2)
    if not types and not procedure:
        raise fail(
            segment, 1, "expected a service type code (or a procedure in EQ02), found nothing"
        )
    return ServiceInquiry(
        service_types=types,
        procedure=procedure,
        coverage_level=code(segment, 3, "a coverage level code", codes.COVERAGE_LEVELS),
    )


def benefit(segment: Segment, warnings: list[str]) -> Benefit:
    """EB: the loop's HSD, REF, DTP, AAA, MSG, III and 2120 entries are added later."""
    quantity_qualifier = code(segment, 9, "a quantity qualifier")
    if quantity_qualifier is None and segment.get(10).strip(" "):
        # EB10 is only meaningful with its qualifier; a stray value is dropped, not guessed at.
        warnings.append(
            f"segment {segment.ordinal} (EB): element EB10 has no qualifier in EB09; ignored"
        )
    return Benefit(
        code=required_code(segment, 1, "an eligibility code", codes.ELIGIBILITY_CODES),
        coverage_level=code(segment, 2, "a coverage level code", codes.COVERAGE_LEVELS),
        service_types=service_types(segment, 3),
        insurance_type=code(segment, 4, "an insurance type code"),
        plan_description=text(segment, 5),
        time_period=code(segment, 6, "a time period qualifier"),
        amount=number(segment, 7, "a monetary amount"),
        percent=number(segment, 8, "a percentage"),
        quantity_qualifier=quantity_qualifier,
        quantity=None if quantity_qualifier is None else number(segment, 10, "a quantity"),
        authorization_required=code(
            segment, 11, "an authorization indicator Y, N or U", codes.YES_NO_UNKNOWN
        ),
        in_plan_network=code(
            segment, 12, "an in-plan-network indicator Y, N, U or W", codes.NETWORK_INDICATORS
        ),
        procedure=segment.components(13),
    )


def service_delivery(segment: Segment) -> ServiceDelivery:
    return ServiceDelivery(
        quantity_qualifier=code(segment, 1, "a quantity qualifier"),
        quantity=number(segment, 2, "a quantity"),
        unit=code(segment, 3, "a unit or basis code"),
        sample_selection_modulus=number(segment, 4, "a sample selection modulus"),
        time_period=code(segment, 5, "a time period qualifier"),
        period_count=number(segment, 6, "a number of periods"),
        frequency=code(segment, 7, "a delivery frequency code"),
        pattern_time=code(segment, 8, "a delivery pattern time code"),
    )


def message(segment: Segment) -> str:
    return required_text(segment, 1, "free-form message text")
