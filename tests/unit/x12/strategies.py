"""Hypothesis strategies for 270/271 models whose values the builders can write."""

from __future__ import annotations

import string
from dataclasses import replace
from datetime import date, time
from decimal import Decimal
from typing import TypeVar

from hypothesis import strategies as st

from eligibility_svc.x12 import (
    Address,
    Benefit,
    Contact,
    ContactNumber,
    DatePeriod,
    Delimiters,
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
    Relationship,
    ServiceDelivery,
    ServiceInquiry,
    SourceLoop,
    TraceNumber,
    codes,
)

T = TypeVar("T")

# The X12 basic character set (capitals, digits, space and these specials), without the
# delimiters any strategy below uses.
BASIC_CHARACTERS = string.ascii_uppercase + string.digits + " !\"&'()+,-./;?="
CODE_CHARACTERS = string.ascii_uppercase + string.digits

DELIMITER_SETS = (
    Delimiters(element="*", repetition="^", component=":", segment="~"),
    Delimiters(element="|", repetition="{", component=">", segment="\n"),
    Delimiters(element="\x1d", repetition="\x1f", component="\x1e", segment="\x1c"),
)


def texts(max_size: int = 20) -> st.SearchStrategy[str]:
    return (
        st.text(BASIC_CHARACTERS, min_size=1, max_size=max_size)
        .map(lambda value: value.strip(" "))
        .filter(bool)
    )


def optional(strategy: st.SearchStrategy[T]) -> st.SearchStrategy[T | None]:
    return st.none() | strategy


def code_values(min_size: int = 1, max_size: int = 2) -> st.SearchStrategy[str]:
    return st.text(CODE_CHARACTERS, min_size=min_size, max_size=max_size)


def small_tuples(
    strategy: st.SearchStrategy[T], max_size: int = 2
) -> st.SearchStrategy[tuple[T, ...]]:
    return st.lists(strategy, max_size=max_size).map(tuple)


dates = st.dates(min_value=date(1900, 1, 1), max_value=date(2099, 12, 31))
# X12 times carry at most hundredths of a second.
times = st.builds(
    time,
    hour=st.integers(0, 23),
    minute=st.integers(0, 59),
    second=st.integers(0, 59),
    microsecond=st.integers(0, 99).map(lambda hundredths: hundredths * 10_000),
)
amounts = st.decimals(
    min_value=Decimal("-99999.99"),
    max_value=Decimal("99999.99"),
    places=2,
    allow_nan=False,
    allow_infinity=False,
)
service_types = small_tuples(st.from_regex(r"[A-Z0-9]{1,2}", fullmatch=True), max_size=3)


def _entity(
    code: str,
    kind: str,
    names: tuple[str | None, str | None, str | None, str | None],
    identifier: tuple[str, str] | None,
) -> Entity:
    name, first_name, middle_name, suffix = names
    return Entity(
        code,
        kind,
        name,
        first_name,
        middle_name,
        suffix,
        id_qualifier=None if identifier is None else identifier[0],
        identifier=None if identifier is None else identifier[1],
    )


def entities(entity_codes: st.SearchStrategy[str]) -> st.SearchStrategy[Entity]:
    return st.builds(
        _entity,
        entity_codes,
        st.sampled_from(["1", "2"]),
        st.tuples(optional(texts()), optional(texts()), optional(texts(5)), optional(texts(5))),
        st.none() | st.tuples(code_values(2, 2), texts(20)),
    )


addresses = st.builds(
    Address,
    street=small_tuples(texts(30)),
    city=optional(texts()),
    state=optional(code_values(2, 2)),
    postal_code=optional(st.from_regex(r"[0-9]{5,9}", fullmatch=True)),
    country_code=optional(code_values(2, 3)),
    country_subdivision=optional(code_values(1, 3)),
).filter(
    lambda a: (
        bool(a.street)
        or any(
            v is not None
            for v in (a.city, a.state, a.postal_code, a.country_code, a.country_subdivision)
        )
    )
)
references = st.builds(Reference, code_values(2, 3), texts(30), optional(texts()))
providers = st.builds(
    ProviderInfo, code_values(1, 3), optional(code_values(3, 3)), optional(texts(10))
)
contacts = st.builds(
    Contact,
    code_values(2, 2),
    optional(texts()),
    small_tuples(st.builds(ContactNumber, code_values(2, 2), texts(15)), max_size=3),
)
traces = st.builds(
    TraceNumber, st.sampled_from(["1", "2"]), texts(30), optional(texts(10)), optional(texts(10))
)
date_periods = st.builds(
    DatePeriod, st.from_regex(r"[0-9]{3}", fullmatch=True), dates, optional(dates)
)
relationships = st.builds(
    Relationship,
    st.booleans(),
    code_values(2, 2),
    optional(code_values(3, 3)),
    optional(code_values(2, 2)),
    optional(st.from_regex(r"[0-9]{1,3}", fullmatch=True)),
)
industry_codes = st.builds(IndustryCode, code_values(2, 2), code_values(1, 3))
rejections = st.builds(
    Rejection,
    st.booleans(),
    st.from_regex(r"[A-Z0-9]{2}", fullmatch=True),
    optional(st.sampled_from(sorted(codes.FOLLOW_UP_ACTIONS))),
)


def members(entity_code: str) -> st.SearchStrategy[Member]:
    return st.builds(
        Member,
        entity=entities(st.just(entity_code)),
        trace_numbers=small_tuples(traces),
        references=small_tuples(references),
        address=optional(addresses),
        provider=optional(providers),
        birth_date=optional(dates),
        gender=optional(st.sampled_from(sorted(codes.GENDERS))),
        relationship=optional(relationships),
        dates=small_tuples(date_periods),
    )


receivers = st.builds(
    InformationReceiver,
    entity=entities(st.sampled_from(sorted(codes.RECEIVER_ENTITIES))),
    references=small_tuples(references),
    address=optional(addresses),
    provider=optional(providers),
)
service_inquiries = st.builds(
    ServiceInquiry,
    service_types=service_types,
    procedure=small_tuples(code_values(1, 5), max_size=3),
    coverage_level=optional(st.sampled_from(sorted(codes.COVERAGE_LEVELS))),
    industry_codes=small_tuples(industry_codes),
    references=small_tuples(references),
    dates=small_tuples(date_periods),
).filter(lambda inquiry: bool(inquiry.service_types or inquiry.procedure))

inquiries = st.builds(
    EligibilityInquiry,
    control_number=st.from_regex(r"[0-9A-Z]{4,9}", fullmatch=True),
    reference=texts(30),
    created_date=dates,
    created_time=times,
    information_source=entities(st.sampled_from(sorted(codes.SOURCE_ENTITIES))),
    information_receiver=receivers,
    subscriber=members(codes.SUBSCRIBER_ENTITY),
    service_inquiries=st.lists(service_inquiries, min_size=1, max_size=2).map(tuple),
    dependent=optional(members(codes.DEPENDENT_ENTITY)),
    transaction_type=optional(code_values(2, 2)),
)

service_deliveries = st.builds(
    ServiceDelivery,
    quantity_qualifier=optional(code_values(2, 2)),
    quantity=optional(amounts),
    unit=optional(code_values(2, 2)),
    sample_selection_modulus=optional(amounts),
    time_period=optional(code_values(1, 2)),
    period_count=optional(amounts),
    frequency=optional(code_values(1, 1)),
    pattern_time=optional(code_values(1, 1)),
)
related_entities = st.builds(
    RelatedEntity,
    entity=entities(code_values(2, 3)),
    address=optional(addresses),
    contacts=small_tuples(contacts),
    provider=optional(providers),
)


def _quantity_needs_its_qualifier(benefit: Benefit) -> Benefit:
    # EB10 is only written (and read) together with its qualifier EB09.
    if benefit.quantity_qualifier is None:
        return replace(benefit, quantity=None)
    return benefit


benefits = st.builds(
    Benefit,
    quantity_qualifier=optional(code_values(2, 2)),
    quantity=optional(amounts),
    code=st.sampled_from(sorted(codes.ELIGIBILITY_CODES)),
    coverage_level=optional(st.sampled_from(sorted(codes.COVERAGE_LEVELS))),
    service_types=service_types,
    insurance_type=optional(code_values(1, 3)),
    plan_description=optional(texts(40)),
    time_period=optional(st.sampled_from(sorted(codes.TIME_PERIODS))),
    amount=optional(amounts),
    percent=optional(st.decimals(min_value=0, max_value=1, places=2)),
    authorization_required=optional(st.sampled_from(sorted(codes.YES_NO_UNKNOWN))),
    in_plan_network=optional(st.sampled_from(sorted(codes.NETWORK_INDICATORS))),
    procedure=small_tuples(code_values(1, 5), max_size=3),
    service_deliveries=small_tuples(service_deliveries, max_size=1),
    references=small_tuples(references, max_size=1),
    dates=small_tuples(date_periods, max_size=1),
    rejections=small_tuples(rejections, max_size=1),
    messages=small_tuples(texts(60), max_size=1),
    industry_codes=small_tuples(industry_codes, max_size=1),
    related_entities=small_tuples(related_entities, max_size=1),
).map(_quantity_needs_its_qualifier)
dependents = st.builds(
    PatientResponse,
    member=members(codes.DEPENDENT_ENTITY),
    rejections=small_tuples(rejections, max_size=1),
    benefits=small_tuples(benefits),
)
subscribers = st.builds(
    PatientResponse,
    member=members(codes.SUBSCRIBER_ENTITY),
    rejections=small_tuples(rejections, max_size=1),
    benefits=small_tuples(benefits),
    dependents=small_tuples(dependents, max_size=1),
)
receiver_loops = st.builds(
    ReceiverLoop,
    receiver=receivers,
    rejections=small_tuples(rejections),
    subscribers=small_tuples(subscribers),
)
source_loops = st.builds(
    SourceLoop,
    entity=entities(st.sampled_from(sorted(codes.SOURCE_ENTITIES))),
    contacts=small_tuples(contacts),
    rejections=small_tuples(rejections),
    receivers=small_tuples(receiver_loops),
)
responses = st.builds(
    EligibilityResponse,
    control_number=st.from_regex(r"[0-9A-Z]{4,9}", fullmatch=True),
    reference=texts(30),
    created_date=dates,
    created_time=times,
    sources=st.lists(source_loops, min_size=1, max_size=1).map(tuple),
    transaction_type=optional(code_values(2, 2)),
)

headers = st.builds(
    InterchangeHeader,
    sender_qualifier=code_values(2, 2),
    sender_id=texts(15),
    receiver_qualifier=code_values(2, 2),
    receiver_id=texts(15),
    created_date=st.dates(min_value=date(2000, 1, 1), max_value=date(2099, 12, 31)),
    created_time=st.builds(time, st.integers(0, 23), st.integers(0, 59)),
    control_number=st.integers(0, 999_999_999),
    usage=st.sampled_from(["P", "T"]),
    acknowledgment_requested=st.booleans(),
    authorization_qualifier=code_values(2, 2),
    authorization=st.just("") | texts(10),
    security_qualifier=code_values(2, 2),
    security=st.just("") | texts(10),
)


def interchanges(
    transactions: st.SearchStrategy[T], max_transactions: int = 2
) -> st.SearchStrategy[Interchange[T]]:
    groups = st.builds(
        FunctionalGroup,
        sender_code=texts(15),
        receiver_code=texts(15),
        created_date=dates,
        created_time=times,
        control_number=st.integers(1, 999_999_999),
        transactions=st.lists(transactions, min_size=1, max_size=max_transactions).map(tuple),
    )
    return st.builds(
        Interchange,
        header=headers,
        groups=st.lists(groups, min_size=1, max_size=2).map(tuple),
    )
