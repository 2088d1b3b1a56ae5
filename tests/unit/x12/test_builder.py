"""The builders always write a valid envelope and refuse values they cannot write."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

import pytest

from eligibility_svc.x12 import (
    Benefit,
    DatePeriod,
    Delimiters,
    EligibilityInquiry,
    EligibilityResponse,
    Entity,
    InformationReceiver,
    Member,
    PatientResponse,
    ReceiverLoop,
    ServiceInquiry,
    SourceLoop,
    X12BuildError,
    build_270,
    build_271,
    interchange_for,
    parse_270,
    tokenize,
)

CREATED = datetime(2026, 3, 1, 9, 30, 45, 500000)
PAYER = Entity("PR", "2", "ACME HEALTH PLAN", id_qualifier="PI", identifier="77777")
CLINIC = InformationReceiver(
    Entity("1P", "2", "RIVERSIDE CLINIC", id_qualifier="XX", identifier="1234567893")
)
SUBSCRIBER = Member(
    Entity("IL", "1", "SMITH", "JOHN", id_qualifier="MI", identifier="W123456789"),
    birth_date=date(1963, 5, 19),
    gender="M",
    dates=(DatePeriod("291", date(2026, 3, 1)),),
)
INQUIRY = EligibilityInquiry(
    control_number="0001",
    reference="REF42",
    created_date=date(2026, 3, 1),
    created_time=time(9, 30),
    information_source=PAYER,
    information_receiver=CLINIC,
    subscriber=SUBSCRIBER,
    service_inquiries=(ServiceInquiry(service_types=("30", "98")),),
)
RESPONSE = EligibilityResponse(
    control_number="0001",
    reference="REF42",
    created_date=date(2026, 3, 1),
    created_time=time(9, 31, 5, 250000),
    sources=(
        SourceLoop(
            PAYER,
            receivers=(
                ReceiverLoop(
                    CLINIC,
                    subscribers=(
                        PatientResponse(
                            SUBSCRIBER,
                            benefits=(
                                Benefit("1", "IND", ("30",), plan_description="SILVER"),
                                Benefit("B", service_types=("98",), amount=Decimal("25.00")),
                            ),
                        ),
                    ),
                ),
            ),
        ),
    ),
)


def envelope_270(*inquiries: EligibilityInquiry, control_number: int = 905) -> str:
    interchange = interchange_for(
        list(inquiries),
        sender_id="CLINIC",
        receiver_id="PAYER",
        control_number=control_number,
        created=CREATED,
    )
    return build_270(interchange)


def test_270_has_a_fixed_width_isa_and_matching_control_numbers() -> None:
    text = envelope_270(INQUIRY)
    segments = text.split("~")

    assert segments[0] == (
        "ISA*00*          *00*          *ZZ*CLINIC         *ZZ*PAYER          "
        "*260301*0930*^*00501*000000905*0*P*:"
    )
    assert len(segments[0]) + 1 == 106
    assert segments[1] == "GS*HS*CLINIC*PAYER*20260301*0930*905*X*005010X279A1"
    assert segments[2] == "ST*270*0001*005010X279A1"
    assert segments[3] == "BHT*0022*13*REF42*20260301*0930"
    assert segments[-4:] == ["SE*12*0001", "GE*1*905", "IEA*1*000000905", ""]


def test_270_writes_the_hierarchy_and_the_patient() -> None:
    segments = envelope_270(INQUIRY).split("~")

    assert segments[4:13] == [
        "HL*1**20*1",
        "NM1*PR*2*ACME HEALTH PLAN*****PI*77777",
        "HL*2*1*21*1",
        "NM1*1P*2*RIVERSIDE CLINIC*****XX*1234567893",
        "HL*3*2*22*0",
        "NM1*IL*1*SMITH*JOHN****MI*W123456789",
        "DMG*D8*19630519*M",
        "DTP*291*D8*20260301",
        "EQ*30^98",
    ]


def test_dependent_inquiry_gets_a_child_level_and_the_eq_loop() -> None:
    dependent = Member(Entity("03", "1", "SMITH", "ANNA"), birth_date=date(2015, 7, 1))
    segments = envelope_270(replace(INQUIRY, dependent=dependent)).split("~")

    assert segments[8] == "HL*3*2*22*1"
    assert segments[12:16] == [
        "HL*4*3*23*0",
        "NM1*03*1*SMITH*ANNA",
        "DMG*D8*20150701",
        "EQ*30^98",
    ]


def test_se_counts_every_segment_of_each_transaction_and_ge_counts_transactions() -> None:
    second = replace(INQUIRY, control_number="0002", reference="REF43")
    tokens = tokenize(envelope_270(INQUIRY, second))

    ids = [s.id for s in tokens.segments]
    st_positions = [i for i, segment_id in enumerate(ids) if segment_id == "ST"]
    se_positions = [i for i, segment_id in enumerate(ids) if segment_id == "SE"]
    for start, end in zip(st_positions, se_positions, strict=True):
        se = tokens.segments[end]
        assert int(se.get(1)) == end - start + 1
        assert se.get(2) == tokens.segments[start].get(2)
    ge = tokens.segments[-2]
    assert (ge.id, ge.get(1), ge.get(2)) == ("GE", "2", "905")


def test_configured_delimiters_are_declared_in_the_isa() -> None:
    delimiters = Delimiters(element="|", repetition="{", component=">", segment="\n")
    interchange = interchange_for(
        [INQUIRY], sender_id="CLINIC", receiver_id="PAYER", control_number=1, created=CREATED
    )

    text = build_270(interchange, delimiters)

    first_line = text.split("\n")[0]
    assert first_line.endswith("|{|00501|000000001|0|P|>")
    assert "EQ|30{98\n" in text
    assert parse_270(text).transactions == (INQUIRY,)


def test_line_breaks_follow_each_terminator() -> None:
    interchange = interchange_for(
        [INQUIRY], sender_id="CLINIC", receiver_id="PAYER", control_number=1, created=CREATED
    )

    text = build_270(interchange, line_breaks=True)

    assert text.count("~\n") == 16
    assert parse_270(text).transactions == (INQUIRY,)


def test_271_writes_hb_group_response_bht_and_benefits() -> None:
    interchange = interchange_for(
        [RESPONSE], sender_id="PAYER", receiver_id="CLINIC", control_number=7, created=CREATED
    )

    segments = build_271(interchange).split("~")

    assert segments[1].startswith("GS*HB*PAYER*CLINIC*")
    assert segments[3] == "BHT*0022*11*REF42*20260301*09310525"
    assert segments[12:14] == ["EB*1*IND*30**SILVER", "EB*B**98****25.00"]
    assert segments[14] == "SE*13*0001"


def test_interchange_for_truncates_the_timestamp_to_minutes() -> None:
    interchange = interchange_for(
        [INQUIRY], sender_id="A", receiver_id="B", control_number=1, created=CREATED
    )

    assert interchange.header.created_time == time(9, 30)
    assert interchange.groups[0].created_time == time(9, 30)


def build_error(inquiry: EligibilityInquiry, **header: Any) -> X12BuildError:
    interchange = interchange_for(
        [inquiry], sender_id="CLINIC", receiver_id="PAYER", control_number=1, created=CREATED
    )
    interchange = replace(interchange, header=replace(interchange.header, **header))
    with pytest.raises(X12BuildError) as caught:
        build_270(interchange)
    return caught.value


def test_value_holding_a_delimiter_is_refused_by_field_path_without_the_value() -> None:
    subscriber = replace(SUBSCRIBER, entity=replace(SUBSCRIBER.entity, name="SMITH~JONES"))

    error = build_error(replace(INQUIRY, subscriber=subscriber))

    assert str(error) == (
        "interchange.groups[0].transactions[0].subscriber.entity.name: "
        "contains one of the delimiters"
    )
    assert "SMITH" not in str(error)


def test_empty_and_space_padded_values_are_refused() -> None:
    empty = replace(INQUIRY, reference="")
    padded = replace(INQUIRY, reference=" REF")

    assert build_error(empty).problem == "is empty; use None for an absent value"
    assert build_error(padded).problem == (
        "has leading or trailing spaces, which X12 does not keep"
    )


def test_isa_limits_are_enforced() -> None:
    assert build_error(INQUIRY, sender_id="A" * 16).field_path == "interchange.header.sender_id"
    assert build_error(INQUIRY, created_time=time(9, 30, 1)).problem == (
        "ISA10 holds hours and minutes only"
    )
    assert build_error(INQUIRY, control_number=1_000_000_000).field_path == (
        "interchange.header.control_number"
    )
    assert build_error(INQUIRY, usage="X").problem == "expected P (production) or T (test)"


def test_codes_the_parser_would_refuse_are_refused() -> None:
    bad_code = replace(RESPONSE.sources[0].receivers[0].subscribers[0], benefits=(Benefit("ZZ"),))
    response = replace(
        RESPONSE,
        sources=(
            replace(
                RESPONSE.sources[0],
                receivers=(replace(RESPONSE.sources[0].receivers[0], subscribers=(bad_code,)),),
            ),
        ),
    )
    interchange = interchange_for(
        [response], sender_id="PAYER", receiver_id="CLINIC", control_number=1, created=CREATED
    )

    with pytest.raises(X12BuildError) as caught:
        build_271(interchange)

    assert str(caught.value) == (
        "interchange.groups[0].transactions[0].sources[0].receivers[0].subscribers[0]"
        ".benefits[0].code: expected an eligibility code (EB01)"
    )


def test_quantity_without_its_qualifier_is_refused() -> None:
    benefit = Benefit("F", quantity=Decimal(3))
    patient = PatientResponse(SUBSCRIBER, benefits=(benefit,))
    response = replace(
        RESPONSE,
        sources=(SourceLoop(PAYER, receivers=(ReceiverLoop(CLINIC, subscribers=(patient,)),)),),
    )
    interchange = interchange_for(
        [response], sender_id="PAYER", receiver_id="CLINIC", control_number=1, created=CREATED
    )

    with pytest.raises(X12BuildError, match=r"benefits\[0\]\.quantity: needs quantity_qualifier"):
        build_271(interchange)


def test_inquiry_without_service_inquiries_is_refused() -> None:
    error = build_error(replace(INQUIRY, service_inquiries=()))

    assert error.field_path == "interchange.groups[0].transactions[0].service_inquiries"


def test_times_finer_than_hundredths_are_refused() -> None:
    error = build_error(replace(INQUIRY, created_time=time(9, 30, 1, 123)))

    assert error.problem == "X12 times carry at most hundredths of a second"


def test_unusable_delimiters_are_refused() -> None:
    interchange = interchange_for(
        [INQUIRY], sender_id="CLINIC", receiver_id="PAYER", control_number=1, created=CREATED
    )

    with pytest.raises(X12BuildError) as same:
        build_270(interchange, Delimiters(element="*", repetition="*", component=":", segment="~"))
    with pytest.raises(X12BuildError) as no_repetition:
        build_270(interchange, Delimiters(repetition=None))
    with pytest.raises(X12BuildError) as letter:
        build_270(interchange, Delimiters(element="E"))

    assert str(same.value) == "delimiters: the four separators must all differ"
    assert no_repetition.value.problem == "5010 needs a repetition separator (ISA11)"
    assert letter.value.problem == "element separator must not be a letter, digit or space"
