"""The 271 summary decides ACTIVE / INACTIVE / NOT_FOUND / ERROR by the documented rules."""

from __future__ import annotations

from datetime import date, time
from decimal import Decimal

from eligibility_svc.x12 import (
    Benefit,
    DatePeriod,
    EligibilityResponse,
    EligibilityStatus,
    Entity,
    InformationReceiver,
    Member,
    PatientResponse,
    ReceiverLoop,
    Reference,
    Rejection,
    SourceLoop,
    summarize,
)

PAYER = Entity("PR", "2", "ACME HEALTH PLAN", id_qualifier="PI", identifier="77777")
CLINIC = InformationReceiver(Entity("1P", "2", "RIVERSIDE CLINIC"))
SUBSCRIBER = Member(Entity("IL", "1", "SMITH", "JOHN", id_qualifier="MI", identifier="W1"))
DEPENDENT = Member(Entity("03", "1", "SMITH", "ANNA"))


def response(
    *subscribers: PatientResponse,
    source_rejections: tuple[Rejection, ...] = (),
    receiver_rejections: tuple[Rejection, ...] = (),
) -> EligibilityResponse:
    receiver = ReceiverLoop(CLINIC, receiver_rejections, subscribers)
    return EligibilityResponse(
        control_number="0001",
        reference="REF",
        created_date=date(2026, 3, 1),
        created_time=time(9, 30),
        sources=(SourceLoop(PAYER, rejections=source_rejections, receivers=(receiver,)),),
    )


def subscriber(*benefits: Benefit, rejections: tuple[Rejection, ...] = ()) -> PatientResponse:
    return PatientResponse(SUBSCRIBER, rejections, benefits)


def test_active_coverage_for_the_service_type() -> None:
    summary = summarize(response(subscriber(Benefit("1", service_types=("98",)))), "98")

    assert summary.status is EligibilityStatus.ACTIVE
    assert summary.reasons == ("EB01 1 (Active Coverage) for service type 98",)


def test_service_type_specific_inactive_beats_plan_wide_active() -> None:
    patient = subscriber(Benefit("1", service_types=("30",)), Benefit("6", service_types=("33",)))

    assert summarize(response(patient), "33").status is EligibilityStatus.INACTIVE
    assert summarize(response(patient), "98").status is EligibilityStatus.ACTIVE


def test_non_covered_service_is_inactive_even_with_an_active_plan() -> None:
    patient = subscriber(Benefit("1", service_types=("30",)), Benefit("I", service_types=("AL",)))

    summary = summarize(response(patient), "AL")

    assert summary.status is EligibilityStatus.INACTIVE
    assert summary.reasons == ("EB01 I (Non-Covered) for service type AL",)


def test_coverage_without_service_type_applies_when_nothing_more_specific_exists() -> None:
    summary = summarize(response(subscriber(Benefit("7"))), "98")

    assert summary.status is EligibilityStatus.INACTIVE
    assert summary.reasons == (
        "EB01 7 (Inactive - Pending Eligibility Update) for all services (no service type named)",
    )


def test_active_entry_wins_over_an_inactive_one_for_the_same_service() -> None:
    patient = subscriber(Benefit("6", service_types=("30",)), Benefit("1", service_types=("30",)))

    summary = summarize(response(patient))

    assert summary.status is EligibilityStatus.ACTIVE
    assert summary.coverage == (Benefit("1", service_types=("30",)),)


def test_no_coverage_information_is_an_error() -> None:
    summary = summarize(response(subscriber(Benefit("P"), Benefit("B", amount=Decimal(5)))))

    assert summary.status is EligibilityStatus.ERROR
    assert summary.reasons == ("no coverage information (EB01 1-8) for service type 30",)


def test_rejected_coverage_entry_is_not_evidence_of_coverage_but_another_one_is() -> None:
    rejected = Benefit("1", service_types=("30",), rejections=(Rejection(False, "57", "C"),))
    clean = Benefit("1", service_types=("30",), plan_description="SILVER")

    assert summarize(response(subscriber(rejected))).status is EligibilityStatus.ERROR
    summary = summarize(response(subscriber(rejected, clean)))
    assert summary.status is EligibilityStatus.ACTIVE
    assert summary.plan_description == "SILVER"


def test_subscriber_not_found_applies_to_the_dependent_below_it() -> None:
    patient = PatientResponse(
        SUBSCRIBER,
        rejections=(Rejection(True, "72", "N"),),
        dependents=(PatientResponse(DEPENDENT, benefits=(Benefit("1", service_types=("30",)),)),),
    )

    summary = summarize(response(patient))

    assert summary.status is EligibilityStatus.NOT_FOUND
    assert summary.patient_level == "dependent"
    assert summary.rejections == (Rejection(True, "72", "N"),)


def test_identity_rejection_mixed_with_payer_trouble_is_an_error() -> None:
    patient = subscriber(rejections=(Rejection(False, "73", "C"), Rejection(True, "42", "R")))

    assert summarize(response(patient)).status is EligibilityStatus.ERROR


def test_source_rejection_wins_over_everything_below() -> None:
    down = Rejection(True, "42", "R")
    summary = summarize(
        response(subscriber(Benefit("1", service_types=("30",))), source_rejections=(down,))
    )

    assert summary.status is EligibilityStatus.ERROR
    assert summary.reasons == (
        "information source level rejected: 42 Unable to Respond at Current Time "
        "(follow-up R: Resubmission Allowed)",
    )


def test_receiver_rejection_is_an_error() -> None:
    summary = summarize(response(subscriber(), receiver_rejections=(Rejection(False, "51", "C"),)))

    assert summary.status is EligibilityStatus.ERROR
    assert summary.reasons[0].startswith("information receiver level rejected: 51 Provider Not")


def test_unknown_reject_code_is_kept_and_treated_as_an_error() -> None:
    summary = summarize(response(subscriber(rejections=(Rejection(False, "ZZ"),))))

    assert summary.status is EligibilityStatus.ERROR
    assert summary.reasons == ("patient level rejected: ZZ unknown reject reason",)


def test_several_patients_in_one_response_are_ambiguous() -> None:
    summary = summarize(response(subscriber(), subscriber()))

    assert summary.status is EligibilityStatus.ERROR
    assert summary.reasons == ("the response carries 2 patients; a real-time answer carries one",)


def test_details_group_dates_and_cost_sharing_for_the_service_type() -> None:
    patient = PatientResponse(
        Member(
            SUBSCRIBER.entity,
            references=(Reference("18", "PLAN9"), Reference("6P", "GRP-100", "ACME EMPLOYEES")),
            dates=(DatePeriod("291", date(2026, 1, 1), date(2026, 12, 31)),),
        ),
        benefits=(
            Benefit("1", service_types=("30",), plan_description="SILVER PPO"),
            Benefit("B", service_types=("98",), amount=Decimal("25.00"), in_plan_network="Y"),
            Benefit("A", service_types=("98",), percent=Decimal("0.20")),
            Benefit("C", coverage_level="IND", time_period="23", amount=Decimal("1500")),
            Benefit("G", coverage_level="FAM", time_period="29", amount=Decimal("4000.50")),
            Benefit("B", service_types=("UC",), amount=Decimal("75.00")),
        ),
    )

    summary = summarize(response(patient), "98")

    assert summary.status is EligibilityStatus.ACTIVE
    assert summary.plan_description == "SILVER PPO"
    assert summary.group_number == "GRP-100"
    assert summary.plan_number == "PLAN9"
    assert (summary.coverage_begin, summary.coverage_end) == (date(2026, 1, 1), date(2026, 12, 31))
    assert [b.amount for b in summary.copays] == [Decimal("25.00")]
    assert [b.percent for b in summary.coinsurance] == [Decimal("0.20")]
    assert [b.amount for b in summary.deductibles] == [Decimal("1500")]
    assert [b.amount for b in summary.out_of_pocket] == [Decimal("4000.50")]


def test_dependent_inherits_the_subscriber_group_and_plan_dates() -> None:
    patient = PatientResponse(
        Member(
            SUBSCRIBER.entity,
            references=(Reference("1L", "POLICY-7"),),
            dates=(DatePeriod("346", date(2025, 7, 1)), DatePeriod("347", date(2026, 6, 30))),
        ),
        dependents=(PatientResponse(DEPENDENT, benefits=(Benefit("1", service_types=("30",)),)),),
    )

    summary = summarize(response(patient))

    assert summary.group_number == "POLICY-7"
    assert summary.plan_number is None
    assert (summary.coverage_begin, summary.coverage_end) == (date(2025, 7, 1), date(2026, 6, 30))
