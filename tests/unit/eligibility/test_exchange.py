"""The X12 side of a check: the 270 we send, the outcome a 271 means, the simulator's rules."""

from __future__ import annotations

import random
import statistics
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from eligibility_svc.domain import (
    CheckCommand,
    CheckStatus,
    CoverageState,
    ErrorKind,
    Outcome,
    Person,
    RejectionLevel,
)
from eligibility_svc.exchange import build_inquiry, outcome_of_response
from eligibility_svc.payer_sim import Behavior, LatencyModel, Roster, builtin_roster, decide
from eligibility_svc.routing import PayerRoute, ProviderIdentity, Transport
from eligibility_svc.x12 import build_271, interchange_for, parse_270, parse_271
from tests.unit.x12.samples import requires_samples, sample

NOW = datetime(2026, 3, 2, 14, 5, 33, tzinfo=UTC)
ROUTE = PayerRoute(
    payer_id="SIMPAYER",
    endpoint="https://127.0.0.1/core/soap",
    transport=Transport.SOAP,
    sender_id="MEDSCHED",
    receiver_id="SIMPAYER",
    username="u",
    password="p",
    payer_name="SIMULATED HEALTH PLAN",
    payer_identifier="SIM001",
)
PROVIDER = ProviderIdentity("org-1", "RIVERSIDE CLINIC", "1234567893")


def inquiry_for(command: CheckCommand) -> str:
    return build_inquiry(
        command,
        route=ROUTE,
        provider=PROVIDER,
        service_date=date(2026, 3, 2),
        reference="6f1c0e2a",
        control_number=77,
        now=NOW,
    ).x12


def test_270_for_a_subscriber_names_payer_provider_patient_and_service() -> None:
    command = CheckCommand(
        "org-1",
        "pat-1",
        "SIMPAYER",
        "SIMA00001",
        service_type="98",
        patient=Person("SMITH", "JOHN", birth_date=date(1980, 1, 15), sex="M"),
    )
    (inquiry,) = parse_270(inquiry_for(command)).transactions
    assert inquiry.reference == "6f1c0e2a"
    assert inquiry.information_source.identifier == "SIM001"
    assert inquiry.information_receiver.entity.identifier == "1234567893"
    subscriber = inquiry.subscriber
    assert (subscriber.entity.name, subscriber.entity.first_name) == ("SMITH", "JOHN")
    assert (subscriber.entity.id_qualifier, subscriber.entity.identifier) == ("MI", "SIMA00001")
    assert (subscriber.birth_date, subscriber.gender) == (date(1980, 1, 15), "M")
    assert [(d.qualifier, d.start) for d in subscriber.dates] == [("291", date(2026, 3, 2))]
    assert subscriber.trace_numbers[0].reference == "6f1c0e2a"
    assert inquiry.dependent is None
    assert inquiry.service_inquiries[0].service_types == ("98",)


def test_270_for_a_dependent_puts_the_patient_under_the_policy_holder() -> None:
    command = CheckCommand(
        "org-1",
        "pat-2",
        "SIMPAYER",
        "SIMA00001",
        patient=Person("SMITH", "ANNA", birth_date=date(2015, 5, 5)),
        subscriber=Person("SMITH", "JOHN"),
    )
    (inquiry,) = parse_270(inquiry_for(command)).transactions
    assert inquiry.subscriber.entity.identifier == "SIMA00001"
    assert inquiry.subscriber.entity.first_name == "JOHN"
    assert inquiry.dependent is not None
    assert inquiry.dependent.entity.first_name == "ANNA"
    assert inquiry.dependent.entity.identifier is None
    assert inquiry.patient.birth_date == date(2015, 5, 5)


def simulated(member_id: str, service_type: str = "30") -> tuple[Behavior, bytes | None]:
    command = CheckCommand("org-1", "pat-1", "SIMPAYER", member_id, service_type=service_type)
    (inquiry,) = parse_270(inquiry_for(command)).transactions
    decision = decide(inquiry, Roster.of(builtin_roster()), NOW)
    if decision.response is None:
        return decision.behavior, None
    interchange = interchange_for(
        [decision.response],
        sender_id="SIMPAYER",
        receiver_id="MEDSCHED",
        control_number=1,
        created=NOW,
    )
    return decision.behavior, build_271(interchange).encode()


def outcome_for(member_id: str, service_type: str = "30") -> Outcome:
    _, x12 = simulated(member_id, service_type)
    assert x12 is not None
    (response,) = parse_271(x12).transactions
    return outcome_of_response(response, service_type, exchange_id="e", responded_at=NOW)


def test_simulator_rules_give_each_roster_outcome() -> None:
    assert outcome_for("SIMA00001").status is CheckStatus.ACTIVE
    inactive = outcome_for("SIMI00002")
    assert inactive.status is CheckStatus.INACTIVE
    assert inactive.benefits[0].coverage is CoverageState.NOT_ACTIVE
    not_covered = outcome_for("SIMN00003", "AL")
    assert (not_covered.status, not_covered.benefits[0].coverage) == (
        CheckStatus.INACTIVE,
        CoverageState.NOT_COVERED,
    )
    for member_id, code in (("NOSUCH123", "75"), ("X-1", "72")):
        outcome = outcome_for(member_id)
        assert outcome.status is CheckStatus.NOT_FOUND
        assert [(r.level, r.code) for r in outcome.rejections] == [
            (RejectionLevel.SUBSCRIBER, code)
        ]
    unable = outcome_for("SIMU00004")
    assert unable.error is not None
    assert (unable.error.kind, unable.error.retryable) == (ErrorKind.PAYER_REJECTED, True)
    for member_id, behavior in (
        ("SIMD00005", Behavior.HTTP_503),
        ("SIMT00006", Behavior.TIMEOUT),
        ("SIMG00007", Behavior.GARBAGE),
        ("SIMX00008", Behavior.BAD_X12),
    ):
        assert simulated(member_id) == (behavior, None)


@requires_samples
def test_shared_sample_271_becomes_the_normalized_outcome() -> None:
    (response,) = parse_271(sample("271_subscriber_active_plan_copays_lfh.edi")).transactions
    outcome = outcome_of_response(response, "98", exchange_id=None, responded_at=NOW)
    assert outcome.status is CheckStatus.ACTIVE
    assert outcome.plan is not None
    assert outcome.plan.name == "GOLD 123 PLAN"
    assert outcome.plan.coverage_start == date(2006, 1, 1)
    office = outcome.benefits[0]
    assert office.service_type == "98"
    assert [(a.amount, a.network, a.period) for a in office.copayments] == [
        (Decimal("10.00"), "Y", "27"),
        (Decimal("30.00"), "N", "27"),
    ]
    assert {b.service_type for b in outcome.benefits} >= {"1", "30", "33", "98", "UC"}


@requires_samples
def test_shared_sample_with_payer_level_rejection_is_a_payer_error() -> None:
    (response,) = parse_271(sample("271_source_name_aaa79_oopfactory.edi")).transactions
    outcome = outcome_of_response(response, "30", exchange_id=None, responded_at=NOW)
    assert outcome.status is CheckStatus.ERROR
    assert outcome.error is not None
    assert outcome.error.kind is ErrorKind.PAYER_REJECTED
    assert "79" in outcome.error.description
    assert outcome.rejections[0].level is RejectionLevel.SOURCE


def test_latency_model_has_the_requested_mean_and_a_long_tail() -> None:
    model = LatencyModel(1.5, 0.6, random.Random(3))
    samples = sorted(model.sample() for _ in range(20_000))
    assert statistics.fmean(samples) == pytest.approx(1.5, rel=0.05)
    assert samples[int(0.99 * len(samples))] > 2.5 * statistics.median(samples)
    assert max(samples) <= 20.0
