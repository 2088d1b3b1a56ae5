"""Malformed input gets a located, PHI-free error of the right kind, never a crash."""

from __future__ import annotations

import pytest

from common.errors import MedschedError
from eligibility_svc.x12 import (
    UnsupportedVersion,
    X12ElementError,
    X12EnvelopeError,
    X12Error,
    X12StructureError,
    parse_270,
    parse_271,
    parse_x12,
)
from tests.unit.x12.documents import (
    INQUIRY_270,
    PHI_VALUES,
    RESPONSE_271,
    edi,
    inserted,
    replaced,
    without,
)


def error_of(text: str, parse: object = parse_271) -> X12Error:
    assert callable(parse)
    with pytest.raises(X12Error) as caught:
        parse(text)
    message = str(caught.value)
    for value in PHI_VALUES:
        assert value not in message
    return caught.value


def test_unknown_eligibility_code_names_segment_element_and_code() -> None:
    error = error_of(edi(replaced(RESPONSE_271, 14, "EB*ZZ*IND*30")))

    assert isinstance(error, X12ElementError)
    assert str(error) == "segment 14 (EB): element EB01: expected an eligibility code, found 'ZZ'"
    assert (error.ordinal, error.segment_id, error.element) == (14, "EB", "EB01")


def test_x12_errors_are_domain_errors_mapped_to_invalid_argument() -> None:
    error = error_of(edi(replaced(RESPONSE_271, 14, "EB*ZZ")))

    assert isinstance(error, MedschedError)
    assert error.grpc_code_name == "INVALID_ARGUMENT"


def test_invalid_birth_date_is_reported_without_the_date() -> None:
    error = error_of(edi(replaced(RESPONSE_271, 12, "DMG*D8*19631319*M")))

    assert str(error) == (
        "segment 12 (DMG): element DMG02: expected a date CCYYMMDD, "
        "found a value that is not a valid date"
    )
    assert "19631319" not in str(error)


def test_name_in_a_code_position_is_described_by_length_only() -> None:
    error = error_of(edi(replaced(RESPONSE_271, 11, "NM1*SMITH*1*JOHN****MI*W123456789")))

    assert str(error) == (
        "segment 11 (NM1): element NM101: expected the entity code IL (insured or subscriber), "
        "found a value of 5 characters"
    )


def test_non_numeric_amount() -> None:
    error = error_of(edi(replaced(RESPONSE_271, 15, "EB*B*IND*98***27*25,00")))

    assert str(error) == (
        "segment 15 (EB): element EB07: expected a monetary amount (a decimal number), "
        "found a non-number"
    )


def test_service_type_repetitions_are_checked_one_by_one() -> None:
    error = error_of(edi(replaced(RESPONSE_271, 14, "EB*1*IND*30^SILVER")))

    assert str(error) == (
        "segment 14 (EB): element EB03: expected a service type code, found a value of 6 characters"
    )


def test_unknown_follow_up_action_code() -> None:
    error = error_of(edi(inserted(RESPONSE_271, 12, "AAA*N**72*Q")))

    assert str(error) == (
        "segment 12 (AAA): element AAA04: expected a follow-up action code, found 'Q'"
    )


def test_hl_pointing_to_a_missing_parent() -> None:
    error = error_of(edi(replaced(RESPONSE_271, 9, "HL*3*7*22*0")))

    assert isinstance(error, X12ElementError)
    assert str(error) == (
        "segment 9 (HL): element HL02: expected the id of an earlier information receiver "
        "level (HL03 21), found '7', which no earlier HL has"
    )


def test_hl_with_the_wrong_kind_of_parent() -> None:
    error = error_of(edi(replaced(RESPONSE_271, 9, "HL*3*1*22*0")))

    assert str(error) == (
        "segment 9 (HL): element HL02: expected the id of an earlier information receiver "
        "level (HL03 21), found the id of level 20 (information source)"
    )


def test_unknown_hierarchical_level() -> None:
    error = error_of(edi(replaced(RESPONSE_271, 9, "HL*3*2*24*0")))

    assert str(error) == (
        "segment 9 (HL): element HL03: expected a hierarchical level code 20, 21, 22 or 23, "
        "found '24'"
    )


def test_duplicate_hierarchical_id() -> None:
    error = error_of(edi(replaced(RESPONSE_271, 9, "HL*2*2*22*0")))

    assert str(error) == (
        "segment 9 (HL): element HL01: expected a new hierarchical id; segment 7 uses it already"
    )


def test_segment_that_belongs_to_no_loop_here() -> None:
    error = error_of(edi(inserted(RESPONSE_271, 12, "EQ*30")))

    assert isinstance(error, X12StructureError)
    assert str(error) == (
        "segment 12 (EQ): EQ is not allowed here; expected one of TRN, NM1, REF, N3, N4, PRV, "
        "DMG, INS, HI, DTP, MPI, AAA, EB in loop 2000C/2100C (subscriber) of a 271"
    )


def test_patient_segment_after_eb_is_out_of_place() -> None:
    error = error_of(edi(inserted(RESPONSE_271, 15, "DMG*D8*19630519*M")))

    assert str(error) == (
        "segment 15 (DMG): DMG is not allowed here; expected one of EB, HSD, REF, DTP, AAA, "
        "MSG, III, LS in loop 2110C (after EB)"
    )


def test_second_nm1_in_a_loop() -> None:
    error = error_of(edi(inserted(RESPONSE_271, 12, "NM1*IL*1*SMITH*JOHN")))

    assert str(error) == (
        "segment 12 (NM1): a second NM1 in loop 2000C/2100C (subscriber); expected at most one"
    )


def test_subscriber_loop_without_its_name() -> None:
    error = error_of(edi(without(RESPONSE_271, 11)))

    assert str(error) == (
        "segment 9 (HL): expected NM1 naming the subscriber in loop 2000C/2100C (subscriber)"
    )


def test_ls_without_le() -> None:
    segments = inserted(RESPONSE_271, 16, "LS*2120")
    segments.insert(16, "NM1*P3*1*JONES*MARCUS")

    error = error_of(edi(segments))

    assert str(error) == "segment 16 (LS): expected LE*2120 closing this LS before the loop ends"


def test_segment_inside_2120_that_is_not_allowed_there() -> None:
    segments = inserted(RESPONSE_271, 16, "LS*2120")
    segments.insert(16, "MSG*CALL US")

    error = error_of(edi(segments))

    assert str(error) == (
        "segment 17 (MSG): MSG is not allowed here; expected one of NM1 "
        "in loop 2120 opened by LS at segment 16"
    )


def test_missing_bht() -> None:
    error = error_of(edi(without(RESPONSE_271, 4)))

    assert str(error) == (
        "segment 4 (HL): expected BHT (beginning of hierarchical transaction) right after ST"
    )


def test_transaction_without_hierarchy() -> None:
    error = error_of(edi((*RESPONSE_271[:4], "SE*3*0001", *RESPONSE_271[16:])))

    assert str(error) == "segment 5 (SE): expected HL (the information source level) after BHT"


def test_missing_se_is_noticed_at_the_group_trailer() -> None:
    error = error_of(edi(without(RESPONSE_271, 16)))

    assert isinstance(error, X12EnvelopeError)
    assert str(error) == (
        "segment 16 (GE): expected SE closing the transaction set started at segment 3"
    )


def test_truncated_interchange() -> None:
    error = error_of(edi(RESPONSE_271[:9]))

    assert str(error) == (
        "expected SE closing the transaction set started at segment 3 after segment 9 (HL), "
        "found end of data"
    )


def test_data_after_iea() -> None:
    error = error_of(edi((*RESPONSE_271, "GS*HB*A*B*20260301*0930*43*X*005010X279A1")))

    assert str(error) == "segment 19 (GS): expected nothing after the interchange trailer IEA"


def test_invalid_usage_indicator() -> None:
    isa = RESPONSE_271[0].replace("*P*:", "*X*:")

    error = error_of(edi((isa, *RESPONSE_271[1:])))

    assert str(error) == (
        "segment 1 (ISA): element ISA15: expected usage indicator P or T, found 'X'"
    )


def test_271_parser_refuses_a_270() -> None:
    error = error_of(edi(INQUIRY_270))

    assert str(error) == "segment 3 (ST): element ST01: expected transaction set 271, found '270'"


def test_other_transaction_sets_are_refused_by_the_generic_parser() -> None:
    error = error_of(edi(replaced(RESPONSE_271, 3, "ST*837*0001*005010X279A1")), parse_x12)

    assert str(error) == (
        "segment 3 (ST): element ST01: expected transaction set 270 or 271, found '837'"
    )


def test_another_5010_guide_is_an_unsupported_version_not_4010() -> None:
    error = error_of(
        edi(replaced(RESPONSE_271, 2, "GS*HB*PAYER*SUBMITTER*20260301*0930*42*X*005010X222A1"))
    )

    assert isinstance(error, UnsupportedVersion)
    assert error.is_4010 is False
    assert str(error) == (
        "segment 2 (GS): element GS08: expected the 270/271 version 005010X279A1 "
        "(or 005010X279), found '005010X222A1'"
    )


def test_st03_names_4010_inside_a_5010_group() -> None:
    error = error_of(edi(replaced(RESPONSE_271, 3, "ST*271*0001*004010X092A1")))

    assert isinstance(error, UnsupportedVersion)
    assert error.is_4010 is True
    assert (error.segment_id, error.element) == ("ST", "ST03")


def test_isa12_decides_when_gs08_and_st03_are_both_empty() -> None:
    isa = RESPONSE_271[0].replace("*00501*", "*00401*")
    gs = "GS*HB*PAYER*SUBMITTER*20260301*0930*42*X"
    segments = (isa, gs, "ST*271*0001", *RESPONSE_271[3:])

    error = error_of(edi(segments))

    assert isinstance(error, UnsupportedVersion)
    assert error.is_4010 is True
    assert str(error).startswith("segment 1 (ISA): element ISA12: this is an X12 4010 file")


def test_missing_version_everywhere_in_a_5010_interchange() -> None:
    gs = "GS*HB*PAYER*SUBMITTER*20260301*0930*42*X"

    error = error_of(edi((RESPONSE_271[0], gs, "ST*271*0001", *RESPONSE_271[3:])))

    assert str(error) == (
        "segment 3 (ST): element ST03: expected the version 005010X279A1 in ST03 or GS08, "
        "found nothing"
    )


def test_270_with_a_second_subscriber_is_refused() -> None:
    segments = (*INQUIRY_270[:13], "HL*4*2*22*0", "NM1*IL*1*DOE*JANE****MI*X1", "EQ*30")

    error = error_of(edi((*segments, *INQUIRY_270[13:])), parse_270)

    assert str(error) == (
        "segment 14 (HL): a second subscriber level in one 270 transaction set is not "
        "supported (a real-time inquiry carries one patient)"
    )


def test_270_without_eq() -> None:
    error = error_of(edi(without(INQUIRY_270, 13)), parse_270)

    assert str(error) == (
        "segment 9 (HL): expected at least one EQ (eligibility or benefit inquiry) "
        "in the subscriber loop"
    )


def test_270_eq_on_the_subscriber_when_a_dependent_follows() -> None:
    segments = (*INQUIRY_270[:8], "HL*3*2*22*1", *INQUIRY_270[9:13])
    dependent = ("HL*4*3*23*0", "NM1*03*1*SMITH*ANNA", "EQ*30")

    error = error_of(edi((*segments, *dependent, *INQUIRY_270[13:])), parse_270)

    assert str(error) == (
        "segment 13 (EQ): EQ is not allowed in the subscriber loop when a dependent loop "
        "follows; the inquiry belongs in loop 2110D"
    )


def test_trailer_disagreements_are_warnings_not_errors() -> None:
    segments = list(RESPONSE_271)
    segments[15] = "SE*99*0002"
    segments[16] = "GE*3*41"
    segments[17] = "IEA*2*000000041"

    interchange = parse_271(edi(segments))

    assert interchange.warnings == (
        "segment 16 (SE): element SE01 says 99; there are 14 segments",
        "segment 16 (SE): element SE02 does not match the control number in ST02",
        "segment 17 (GE): element GE01 says 3; there are 1 transaction sets",
        "segment 17 (GE): element GE02 does not match the control number in GS06",
        "segment 18 (IEA): element IEA01 says 2; there are 1 functional groups",
        "segment 18 (IEA): element IEA02 does not match the control number in ISA13",
    )
