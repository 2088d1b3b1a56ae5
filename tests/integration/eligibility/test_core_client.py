"""The CORE client against the payer simulator: every roster outcome, both transports,
authentication, retries, deadlines and the circuit breaker."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from deploy.certs import DevPki
from eligibility_svc.breaker import BreakerState, CircuitBreaker
from eligibility_svc.config import BreakerConfig, ClientConfig
from eligibility_svc.core_client import ClearinghouseClient, ExchangeFailure, ExchangeResult
from eligibility_svc.domain import (
    CheckCommand,
    CheckStatus,
    CoverageState,
    ErrorKind,
    Outcome,
    Person,
    RejectionLevel,
)
from eligibility_svc.exchange import build_inquiry, outcome_of
from eligibility_svc.payer_sim import PayerSimulator
from eligibility_svc.routing import PayerRoute, ProviderIdentity, Transport
from tests.integration.eligibility.conftest import NPI, ORGANIZATION, route_to, wait_for

PROVIDER = ProviderIdentity(ORGANIZATION, "RIVERSIDE CLINIC", NPI)


async def ask(
    client: ClearinghouseClient,
    route: PayerRoute,
    member_id: str,
    *,
    service_type: str = "30",
    birth_date: date | None = None,
    deadline_s: float = 2.0,
    reference: str = "REF0001",
) -> tuple[ExchangeResult, Outcome]:
    command = CheckCommand(
        ORGANIZATION,
        "pat-1",
        route.payer_id,
        member_id,
        service_type=service_type,
        patient=Person("SMITH", "JOHN", birth_date=birth_date),
    )
    inquiry = build_inquiry(
        command,
        route=route,
        provider=PROVIDER,
        service_date=date(2026, 3, 2),
        reference="REF0001",
        control_number=42,
        now=datetime.now(UTC),
    )
    result = await client.exchange(
        route, inquiry.x12, reference=reference, deadline=time.monotonic() + deadline_s
    )
    outcome = outcome_of(result, service_type, exchange_id=None, received_at=datetime.now(UTC))
    return result, outcome


def state_of(breaker: CircuitBreaker) -> BreakerState:
    # A call, so that type checkers do not narrow the property across awaits.
    return breaker.state


@pytest.fixture
async def patient_client() -> AsyncIterator[ClearinghouseClient]:
    """A client whose circuit never opens, to see each outcome on its own."""
    made = ClearinghouseClient(ClientConfig(breaker=BreakerConfig(failure_threshold=1000)))
    await made.start()
    try:
        yield made
    finally:
        await made.close()


@pytest.mark.parametrize("transport", [Transport.SOAP, Transport.MIME])
async def test_active_member_gets_coverage_and_cost_sharing(
    simulator: PayerSimulator,
    pki: DevPki,
    patient_client: ClearinghouseClient,
    transport: Transport,
) -> None:
    result, outcome = await ask(
        patient_client, route_to(simulator, pki, transport), "SIMA00001", service_type="98"
    )
    assert result.failure is None
    assert result.http_status == 200
    assert result.attempts == 1
    assert simulator.stats.by_transport[transport.value] == 1
    assert outcome.status is CheckStatus.ACTIVE
    assert outcome.plan is not None
    assert (outcome.plan.name, outcome.plan.group_number, outcome.plan.group_name) == (
        "SILVER PPO 2000",
        "GRP7788",
        "ACME WIDGETS INC",
    )
    assert outcome.plan.insurance_type == "PR"
    assert outcome.plan.coverage_start == date(2026, 1, 1)
    office = outcome.benefits[0]
    assert office.service_type == "98"
    assert office.coverage is CoverageState.COVERED
    assert [(a.amount, a.network, a.period) for a in office.copayments] == [
        (Decimal("25.00"), "Y", "27"),
        (Decimal("50.00"), "N", "27"),
    ]
    plan_wide = next(b for b in outcome.benefits if b.service_type == "30")
    assert [a.percent for a in plan_wide.coinsurance] == [Decimal("0.2")]
    assert [(a.amount, a.period) for a in plan_wide.deductibles] == [
        (Decimal("1500.00"), "23"),
        (Decimal("500.00"), "29"),
    ]
    assert [a.amount for a in plan_wide.out_of_pocket] == [Decimal("5000.00")]
    assert outcome.messages == ("OUT OF POCKET INCLUDES DEDUCTIBLE",)


@pytest.mark.parametrize("transport", [Transport.SOAP, Transport.MIME])
async def test_roster_outcomes_over_both_transports(
    simulator: PayerSimulator,
    pki: DevPki,
    patient_client: ClearinghouseClient,
    transport: Transport,
) -> None:
    route = route_to(simulator, pki, transport)
    _, inactive = await ask(patient_client, route, "SIMI00002")
    _, not_covered = await ask(patient_client, route, "SIMN00003", service_type="AL")
    _, covered = await ask(patient_client, route, "SIMN00003", service_type="30")
    _, unknown = await ask(patient_client, route, "ZZZ999999")
    _, invalid = await ask(patient_client, route, "12")
    _, wrong_birth = await ask(patient_client, route, "SIMA00001", birth_date=date(1999, 1, 1))
    _, unable = await ask(patient_client, route, "SIMU00004")

    assert inactive.status is CheckStatus.INACTIVE
    assert inactive.plan is not None
    assert inactive.plan.coverage_end == date(2025, 12, 31)
    assert inactive.benefits[0].coverage is CoverageState.NOT_ACTIVE

    assert not_covered.status is CheckStatus.INACTIVE
    assert not_covered.benefits[0].service_type == "AL"
    assert not_covered.benefits[0].coverage is CoverageState.NOT_COVERED
    assert covered.status is CheckStatus.ACTIVE

    for outcome, code in ((unknown, "75"), (invalid, "72"), (wrong_birth, "71")):
        assert outcome.status is CheckStatus.NOT_FOUND
        assert [(r.level, r.code, r.follow_up_code) for r in outcome.rejections] == [
            (RejectionLevel.SUBSCRIBER, code, "C")
        ]
        assert outcome.plan is None
        assert outcome.benefits == ()

    assert unable.status is CheckStatus.ERROR
    assert unable.error is not None
    assert unable.error.kind is ErrorKind.PAYER_REJECTED
    assert unable.error.retryable
    assert [(r.level, r.code) for r in unable.rejections] == [(RejectionLevel.SOURCE, "42")]
    assert simulator.stats.requests == 7


@pytest.mark.parametrize("transport", [Transport.SOAP, Transport.MIME])
async def test_payer_failures_become_typed_errors(
    simulator: PayerSimulator,
    pki: DevPki,
    patient_client: ClearinghouseClient,
    transport: Transport,
) -> None:
    route = route_to(simulator, pki, transport)
    unavailable, unavailable_outcome = await ask(patient_client, route, "SIMD00005")
    garbage, garbage_outcome = await ask(patient_client, route, "SIMG00007")
    bad_x12, bad_x12_outcome = await ask(patient_client, route, "SIMX00008")
    # 503 means "not accepted": retried (twice by default), then reported.
    assert unavailable.failure is ExchangeFailure.UNAVAILABLE
    assert (unavailable.attempts, unavailable.http_status) == (3, 503)
    assert unavailable_outcome.error is not None
    assert unavailable_outcome.error.kind is ErrorKind.PAYER_UNAVAILABLE
    assert garbage.failure is ExchangeFailure.INVALID_RESPONSE
    assert garbage.attempts == 1
    assert garbage_outcome.error is not None
    assert garbage_outcome.error.kind is ErrorKind.INVALID_RESPONSE
    assert garbage.response_payload is not None  # kept for the audit trail
    assert bad_x12.failure is ExchangeFailure.INVALID_RESPONSE
    assert "271 could not be parsed" in bad_x12.description
    assert bad_x12_outcome.status is CheckStatus.ERROR
    assert simulator.stats.by_outcome["http503"] == 3


@pytest.mark.parametrize("transport", [Transport.SOAP, Transport.MIME])
async def test_wrong_password_is_refused(
    simulator: PayerSimulator,
    pki: DevPki,
    patient_client: ClearinghouseClient,
    transport: Transport,
) -> None:
    route = route_to(simulator, pki, transport, password="not-the-password")
    result, outcome = await ask(patient_client, route, "SIMA00001")
    assert result.failure is ExchangeFailure.UNAVAILABLE
    assert result.http_status == 401
    assert result.attempts == 1
    expected = "FailedAuthentication" if transport is Transport.SOAP else "UnAuthorized"
    assert expected in result.description
    assert "not-the-password" not in result.description
    assert outcome.status is CheckStatus.ERROR
    assert simulator.stats.by_outcome["unauthorized"] == 1


async def test_answer_to_another_inquiry_is_not_accepted(
    simulator: PayerSimulator, pki: DevPki, client: ClearinghouseClient
) -> None:
    # The simulator echoes BHT03 "REF0001"; we claim to have sent "REF0002".
    result, outcome = await ask(client, route_to(simulator, pki), "SIMA00001", reference="REF0002")
    assert result.failure is ExchangeFailure.INVALID_RESPONSE
    assert "BHT03" in result.description
    assert outcome.status is CheckStatus.ERROR


async def test_payer_that_never_answers_costs_no_more_than_the_deadline(
    simulator: PayerSimulator, pki: DevPki, client: ClearinghouseClient
) -> None:
    started = time.monotonic()
    result, outcome = await ask(client, route_to(simulator, pki), "SIMT00006", deadline_s=0.4)
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 0.5
    assert result.failure is ExchangeFailure.TIMEOUT
    # Sent and unanswered: not retried (the payer may be working on it).
    assert result.attempts == 1
    assert outcome.error is not None
    assert outcome.error.kind is ErrorKind.PAYER_TIMEOUT
    assert simulator.stats.requests == 1


async def test_refused_connection_is_retried_within_the_deadline(
    simulator: PayerSimulator, pki: DevPki, client: ClearinghouseClient
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    route = route_to(simulator, pki, endpoint=f"https://127.0.0.1:{closed_port}/core/soap")
    result, _ = await ask(client, route, "SIMA00001")
    assert result.failure is ExchangeFailure.UNAVAILABLE
    assert result.attempts == 3
    assert "could not connect" in result.description


async def test_circuit_opens_after_failures_and_closes_after_recovery(
    simulator: PayerSimulator, pki: DevPki, client: ClearinghouseClient
) -> None:
    route = route_to(simulator, pki)
    breaker = client.breaker(route.payer_id)
    for _ in range(3):
        result, _ = await ask(client, route, "SIMG00007")
        assert result.failure is ExchangeFailure.INVALID_RESPONSE
    assert state_of(breaker) is BreakerState.OPEN
    sent = simulator.stats.requests

    refused, refused_outcome = await ask(client, route, "SIMA00001")
    assert refused.failure is ExchangeFailure.CIRCUIT_OPEN
    assert refused.attempts == 0
    assert refused_outcome.error is not None
    assert refused_outcome.error.kind is ErrorKind.CIRCUIT_OPEN
    assert simulator.stats.requests == sent  # nothing reached the payer

    async def half_open() -> bool:
        return state_of(breaker) is BreakerState.HALF_OPEN

    await wait_for(half_open, timeout_s=2.0, what="the cool-down to end")
    # The probe fails: open again, for another cool-down.
    probe, _ = await ask(client, route, "SIMG00007")
    assert probe.failure is ExchangeFailure.INVALID_RESPONSE
    assert state_of(breaker) is BreakerState.OPEN

    await wait_for(half_open, timeout_s=2.0, what="the second cool-down to end")
    recovered, outcome = await ask(client, route, "SIMA00001")
    assert recovered.failure is None
    assert outcome.status is CheckStatus.ACTIVE
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0
