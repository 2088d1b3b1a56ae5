"""Every shared 271 sample normalizes to the coverage, amounts and rejections it carries."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, time
from decimal import Decimal

from eligibility_svc.x12 import (
    Address,
    Benefit,
    DatePeriod,
    EligibilityResponse,
    EligibilityStatus,
    Entity,
    PatientResponse,
    Rejection,
    RelatedEntity,
    Relationship,
    TraceNumber,
    parse_271,
    summarize,
)
from tests.unit.x12.samples import requires_samples, sample

pytestmark = requires_samples

BROAD_SERVICES = ("1", "33", "35", "47", "86", "88", "98", "AL", "MH", "UC")
KANSAS_CITY = Address(("15197 BROADWAY AVENUE", "APT 215"), "KANSAS CITY", "MO", "64108")
PRIMARY_CARE_JONES = RelatedEntity(
    Entity("P3", "1", "JONES", "MARCUS", id_qualifier="SV", identifier="0202034")
)


def only_response(name: str) -> EligibilityResponse:
    interchange = parse_271(sample(name))
    assert len(interchange.transactions) == 1
    return interchange.transactions[0]


def only_patient(response: EligibilityResponse) -> PatientResponse:
    (context,) = response.patients()
    return context.patient


def gold_plan_benefits(copay_in: Decimal, copay_out: Decimal) -> tuple[Benefit, ...]:
    """The TR3 'GOLD 123 PLAN' benefits, without the 2120 loop (its position varies)."""
    return (
        Benefit("1", service_types=("30",), plan_description="GOLD 123 PLAN"),
        Benefit("L"),
        Benefit("1", service_types=BROAD_SERVICES),
        Benefit(
            "B",
            service_types=BROAD_SERVICES,
            insurance_type="HM",
            plan_description="GOLD 123 PLAN",
            time_period="27",
            amount=copay_in,
            in_plan_network="Y",
        ),
        Benefit(
            "B",
            service_types=BROAD_SERVICES,
            insurance_type="HM",
            plan_description="GOLD 123 PLAN",
            time_period="27",
            amount=copay_out,
            in_plan_network="N",
        ),
    )


def without_related(benefits: tuple[Benefit, ...]) -> tuple[Benefit, ...]:
    return tuple(replace(b, related_entities=()) for b in benefits)


def test_minimal_active_response_is_active_for_plan_coverage() -> None:
    interchange = parse_271(sample("271_active_minimal_dc_medicaid_x12edittools.edi"))

    # The sample's GS01 says HS although a 271 belongs in an HB group: tolerated, reported.
    assert interchange.warnings == (
        "segment 2 (GS): element GS01 is not HB (the functional group of a 271)",
    )
    (response,) = interchange.transactions
    assert response.reference == "20001234"
    patient = only_patient(response)
    assert patient.member.entity.identifier == "000123450"
    assert patient.member.trace_numbers == (TraceNumber("2", "TRACE0001", "9877281234"),)
    assert patient.benefits == (
        Benefit("1", service_types=("30",), dates=(DatePeriod("291", date(2026, 4, 12)),)),
    )
    summary = summarize(response)
    assert summary.status is EligibilityStatus.ACTIVE
    assert summary.reasons == ("EB01 1 (Active Coverage) for service type 30",)


def test_active_response_with_amounts_and_free_text_message() -> None:
    interchange = parse_271(sample("271_active_with_msg_edicli.edi"))

    assert "segment 16 (SE): element SE01 says 15; there are 14 segments" in interchange.warnings
    (response,) = interchange.transactions
    assert response.transaction_type == "RT"
    active, copay = only_patient(response).benefits
    assert (active.code, active.coverage_level, active.service_types) == ("1", "IND", ("30",))
    assert active.amount == Decimal("100.00")
    assert (copay.code, copay.service_types, copay.amount) == ("B", ("1",), Decimal("25.00"))
    assert copay.messages == ("MEMBER IS ELIGIBLE FOR BENEFITS",)
    # EB10 'Y' has no EB09 qualifier, so no quantity is invented from it.
    assert copay.quantity is None
    assert copay.authorization_required == "Y"
    summary = summarize(response)
    assert summary.status is EligibilityStatus.ACTIVE
    assert summary.messages == ("MEMBER IS ELIGIBLE FOR BENEFITS",)
    assert summarize(response, "1").copays == (copay,)


def test_benefit_level_aaa_after_eb_makes_that_coverage_a_rejected_answer() -> None:
    response = only_response("271_dependent_aaa70_after_eb_oopfactory.edi")

    (context,) = response.patients()
    assert context.dependent is not None
    assert context.dependent.member.entity == Entity("03", "1", "smith", "mary")
    assert context.dependent.member.dates == (DatePeriod("346", date(2006, 1, 1)),)
    (benefit,) = context.dependent.benefits
    assert benefit.plan_description == "bronze 123 plan"
    assert benefit.rejections == (Rejection(False, "70", "C"),)
    assert benefit.rejections[0].reason == "Inconsistent with Patient's Gender"
    assert benefit.rejections[0].follow_up == "Please Correct and Resubmit"
    summary = summarize(response)
    assert summary.status is EligibilityStatus.ERROR
    assert summary.rejections == (Rejection(False, "70", "C"),)
    assert summary.patient_level == "dependent"


def test_dependent_response_on_one_line_with_gt_repetitions() -> None:
    response = only_response("271_dependent_active_gt_repetition_badx12.edi")

    (context,) = response.patients()
    assert context.subscriber.member.entity.identifier == "123456789"
    assert context.subscriber.member.address == KANSAS_CITY
    assert context.subscriber.benefits == ()
    dependent = context.patient
    assert dependent.member.relationship == Relationship(False, "19")
    assert dependent.member.birth_date == date(1998, 10, 14)
    assert without_related(dependent.benefits) == gold_plan_benefits(Decimal(10), Decimal(30))
    # LS/LE after the last EB belongs to that EB (2120 nests under the preceding 2110).
    assert dependent.benefits[-1].related_entities == (PRIMARY_CARE_JONES,)
    summary = summarize(response)
    assert summary.status is EligibilityStatus.ACTIVE
    assert summary.plan_description == "GOLD 123 PLAN"
    assert summary.coverage_begin == date(2006, 1, 1)


def test_dependent_response_with_benefits_on_the_dependent() -> None:
    response = only_response("271_dependent_active_lfh.edi")

    assert response.sources[0].entity.identifier == "841610001"
    dependent = only_patient(response)
    assert dependent.member.entity == Entity("03", "1", "SMITH", "MARY")
    assert dependent.member.trace_numbers == (TraceNumber("2", "93175-012547", "9877281234"),)
    assert dependent.member.gender == "F"
    assert without_related(dependent.benefits) == gold_plan_benefits(
        Decimal("10.00"), Decimal("30.00")
    )
    # Here the 2120 loop follows EB*L: the primary care provider.
    assert dependent.benefits[1].related_entities == (PRIMARY_CARE_JONES,)
    summary = summarize(response)
    assert summary.status is EligibilityStatus.ACTIVE
    assert summary.patient_level == "dependent"
    in_network, out_of_network = summarize(response, "98").copays
    assert (in_network.amount, in_network.in_network) == (Decimal("10.00"), True)
    assert (out_of_network.amount, out_of_network.in_network) == (Decimal("30.00"), False)


def test_dependent_name_aaa58_wins_over_the_eb_that_follows() -> None:
    response = only_response("271_dependent_name_aaa58_oopfactory.edi")

    dependent = only_patient(response)
    assert dependent.rejections == (Rejection(False, "58", "C"),)
    assert dependent.rejections[0].reason == "Invalid/Missing Date-of-Birth"
    assert dependent.benefits == (
        Benefit("1", service_types=("30",), plan_description="bronze 123 plan"),
    )
    summary = summarize(response)
    assert summary.status is EligibilityStatus.NOT_FOUND
    assert summary.reasons == (
        "patient level rejected: 58 Invalid/Missing Date-of-Birth "
        "(follow-up C: Please Correct and Resubmit)",
    )


def test_copay_with_calendar_year_period() -> None:
    response = only_response("271_multiple_eb_copay_x12edittools.edi")

    patient = only_patient(response)
    assert patient.member.entity.first_name == "BENEFITS"
    assert patient.member.birth_date == date(1991, 4, 1)
    active, copay = patient.benefits
    assert active == Benefit("1", service_types=("30",))
    assert copay.amount == Decimal("5.00")
    assert copay.time_period == "23"
    assert copay.dates == (DatePeriod("291", date(2026, 4, 12)),)
    summary = summarize(response)
    assert summary.status is EligibilityStatus.ACTIVE
    assert summary.copays == (copay,)


def test_receiver_level_rejections_without_subscriber_are_an_error() -> None:
    response = only_response("271_receiver_multiple_aaa_oopfactory.edi")

    (receiver,) = response.sources[0].receivers
    assert [r.reason_code for r in receiver.rejections] == ["43", "44", "45", "47"]
    assert receiver.rejections[1].reason == "Invalid/Missing Provider Name"
    assert receiver.subscribers == ()
    summary = summarize(response)
    assert summary.status is EligibilityStatus.ERROR
    assert summary.reasons[0] == (
        "rejected: 43 Invalid/Missing Provider Identification "
        "(follow-up C: Please Correct and Resubmit)"
    )


def test_provider_ineligible_for_inquiries_at_receiver_level() -> None:
    response = only_response("271_receiver_rejected_aaa50_badx12.edi")

    (receiver,) = response.sources[0].receivers
    assert receiver.rejections == (Rejection(True, "50", "N"),)
    assert receiver.rejections[0].reason == "Provider Ineligible for Inquiries"
    assert receiver.rejections[0].follow_up == "Resubmission Not Allowed"
    assert summarize(response).status is EligibilityStatus.ERROR


def test_source_level_aaa79_with_no_receiver() -> None:
    response = only_response("271_source_name_aaa79_oopfactory.edi")

    (source,) = response.sources
    assert source.entity.name == "ABC COMPANY"
    assert source.rejections == (Rejection(False, "79", "C"),)
    assert source.receivers == ()
    summary = summarize(response)
    assert summary.status is EligibilityStatus.ERROR
    assert summary.rejections == (Rejection(False, "79", "C"),)


def test_payer_unable_to_respond_at_subscriber_level_is_an_error() -> None:
    interchange = parse_271(sample("271_subscriber_aaa42_eb_p_masked_georgiosd_oopfactory.edi"))

    assert interchange.groups[0].created_time == time(10, 39, 29)
    (response,) = interchange.transactions
    assert response.reference == "6A9402DB-1857-43D3-8396-1DF01A7E3440"
    assert response.created_time == time(10, 39, 27, 600000)
    patient = only_patient(response)
    assert patient.rejections == (Rejection(True, "42", "R"),)
    assert patient.rejections[0].follow_up == "Resubmission Allowed"
    assert patient.benefits == (Benefit("P"),)
    summary = summarize(response)
    assert summary.status is EligibilityStatus.ERROR
    assert summary.reasons == (
        "patient level rejected: 42 Unable to Respond at Current Time "
        "(follow-up R: Resubmission Allowed)",
    )


def test_aaa_at_source_receiver_and_subscriber_levels_without_benefits() -> None:
    response = only_response("271_subscriber_aaa_no_benefits_oopfactory.edi")

    (context,) = response.patients()
    assert [r.reason_code for r in context.source.rejections] == ["80", "79", "79", "80"]
    assert [r.reason_code for r in context.receiver.rejections] == ["41", "41"]
    assert context.subscriber.rejections == (Rejection(True, "42", "Y"),)
    assert context.subscriber.benefits == ()
    assert context.subscriber.member.address == KANSAS_CITY
    summary = summarize(response)
    assert summary.status is EligibilityStatus.ERROR
    assert summary.reasons[0] == (
        "information source level rejected: 80 No Response received - Transaction Terminated "
        "(follow-up P: Please Resubmit Original Transaction)"
    )


def test_subscriber_response_with_gt_repetition_and_version_without_a1() -> None:
    response = only_response("271_subscriber_active_gt_repetition_badx12.edi")

    patient = only_patient(response)
    assert patient.member.dates == (DatePeriod("346", date(2006, 1, 1)),)
    assert without_related(patient.benefits) == gold_plan_benefits(Decimal(10), Decimal(30))
    assert patient.benefits[-1].related_entities == (PRIMARY_CARE_JONES,)
    summary = summarize(response)
    assert summary.status is EligibilityStatus.ACTIVE
    assert summary.coverage == (patient.benefits[0],)


def test_active_plan_with_copays_in_and_out_of_network() -> None:
    response = only_response("271_subscriber_active_plan_copays_lfh.edi")

    patient = only_patient(response)
    assert patient.member.entity == Entity(
        "IL", "1", "SMITH", "JOHN", id_qualifier="MI", identifier="123456789"
    )
    assert patient.member.birth_date == date(1963, 5, 19)
    assert without_related(patient.benefits) == gold_plan_benefits(
        Decimal("10.00"), Decimal("30.00")
    )
    assert patient.benefits[1].related_entities == (PRIMARY_CARE_JONES,)
    plan = summarize(response)
    assert plan.status is EligibilityStatus.ACTIVE
    assert plan.plan_description == "GOLD 123 PLAN"
    assert plan.coverage_begin == date(2006, 1, 1)
    office_visit = summarize(response, "98")
    assert office_visit.status is EligibilityStatus.ACTIVE
    assert office_visit.reasons == ("EB01 1 (Active Coverage) for service type 98",)
    assert [c.amount for c in office_visit.copays] == [Decimal("10.00"), Decimal("30.00")]
    # A service type the payer did not list falls back to the plan-wide answer (30).
    assert summarize(response, "PT").reasons == (
        "EB01 1 (Active Coverage) for service type 30 (the plan as a whole)",
    )


def test_subscriber_not_found_with_aaa72_and_aaa75() -> None:
    response = only_response("271_subscriber_name_aaa72_75_oopfactory.edi")

    patient = only_patient(response)
    assert patient.rejections == (Rejection(False, "72", "C"), Rejection(False, "75", "C"))
    assert patient.rejections[1].reason == "Subscriber/Insured Not Found"
    # N4 without a city: the address keeps what is there.
    assert patient.member.address == Address(
        ("15197 BROADWAY AVENUE", "APT 215"), None, "MO", "64108"
    )
    assert summarize(response).status is EligibilityStatus.NOT_FOUND


def test_rejected_subscriber_with_invalid_member_id() -> None:
    response = only_response("271_subscriber_rejected_aaa72_x12edittools.edi")

    patient = only_patient(response)
    assert patient.member.entity.name == "DOE"
    assert patient.rejections == (Rejection(False, "72", "C"),)
    assert patient.rejections[0].reason == "Invalid/Missing Subscriber/Insured ID"
    assert patient.benefits == ()
    summary = summarize(response)
    assert summary.status is EligibilityStatus.NOT_FOUND
    assert summary.patient_level == "subscriber"
