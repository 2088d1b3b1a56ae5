"""Fixtures for the eligibility tests: the payer simulator over TLS, a migrated schema, the service.

The simulator runs in-process on a free port with the development PKI's `payer-sim`
certificate, answering in about 10 ms (not the default 1.5 s). Tests that need other
behaviour build their own with `start_simulator`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from common.crypto import BlindIndex, FieldCipher, KeyRing
from common.db import Pool, open_pool
from common.migrations import migrate
from deploy.certs import DevPki, ensure_dev_pki
from eligibility_svc.cache import EligibilityCache
from eligibility_svc.config import BreakerConfig, ClientConfig, EligibilityConfig
from eligibility_svc.core_client import ClearinghouseClient
from eligibility_svc.payer_sim import (
    PayerSimulator,
    RosterMember,
    SimulatorConfig,
    builtin_roster,
    server_ssl_context,
)
from eligibility_svc.payer_sim.roster import Roster
from eligibility_svc.routing import PayerRoute, ProviderIdentity, RoutingTable, Transport
from eligibility_svc.service import EligibilityService

MIGRATIONS = Path(__file__).resolve().parents[3] / "eligibility_svc" / "migrations"
PAYER_ID = "SIMPAYER"
ORGANIZATION = "org-riverside"
NPI = "1234567893"
# A member answering slowly (300 ms), for the PENDING path.
SLOW_MEMBER = RosterMember("SIMS00009", "HILL", "ROSE", date(1988, 8, 8), "F", latency_s=0.3)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return ensure_dev_pki(tmp_path_factory.mktemp("eligibility-pki"))


async def start_simulator(pki: DevPki, **overrides: object) -> PayerSimulator:
    """A simulator on 127.0.0.1:0 over TLS; `overrides` replace `SimulatorConfig` fields."""
    members: Sequence[RosterMember] = (*builtin_roster(), SLOW_MEMBER)
    base = SimulatorConfig(
        roster=Roster.of(members), latency_mean_s=0.01, latency_sigma=0.3, seed=7
    )
    simulator = PayerSimulator(replace(base, **overrides))  # type: ignore[arg-type]
    context = server_ssl_context(str(pki.cert("payer-sim")), str(pki.key("payer-sim")))
    await simulator.start("127.0.0.1", 0, context)
    return simulator


@pytest.fixture
async def simulator(pki: DevPki) -> AsyncIterator[PayerSimulator]:
    running = await start_simulator(pki)
    try:
        yield running
    finally:
        await running.stop()


def route_to(
    simulator: PayerSimulator,
    pki: DevPki,
    transport: Transport = Transport.SOAP,
    *,
    password: str = "medsched-dev-password",
    endpoint: str | None = None,
) -> PayerRoute:
    path = "/core/soap" if transport is Transport.SOAP else "/core/mime"
    return PayerRoute(
        payer_id=PAYER_ID,
        endpoint=endpoint or simulator.base_url + path,
        transport=transport,
        sender_id="MEDSCHED",
        receiver_id="SIMPAYER",
        username="medsched",
        password=password,
        payer_name="SIMULATED HEALTH PLAN",
        payer_identifier="SIM001",
        ca_file=pki.ca_cert,
    )


def routing_table(route: PayerRoute) -> RoutingTable:
    provider = ProviderIdentity(ORGANIZATION, "RIVERSIDE CLINIC", NPI, "America/New_York")
    return RoutingTable({route.payer_id: route}, {ORGANIZATION: provider})


@pytest.fixture
async def client() -> AsyncIterator[ClearinghouseClient]:
    made = ClearinghouseClient(
        ClientConfig(breaker=BreakerConfig(failure_threshold=3, cooldown_s=0.3))
    )
    await made.start()
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    await migrate(database_url, "eligibility", MIGRATIONS)
    db_pool = await open_pool(database_url, min_size=2, max_size=12, name="test-eligibility")
    try:
        yield db_pool
    finally:
        await db_pool.close()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.from_url(redis_url)
    try:
        yield connection
    finally:
        await connection.aclose()


@dataclass
class Harness:
    """A service wired to the simulator, with everything a test inspects."""

    service: EligibilityService
    simulator: PayerSimulator
    client: ClearinghouseClient
    cipher: FieldCipher
    blind_index: BlindIndex
    pool: Pool
    redis: aioredis.Redis
    prefix: str


def make_service(
    *,
    pool: Pool,
    redis: aioredis.Redis,
    client: ClearinghouseClient,
    route: PayerRoute,
    cipher: FieldCipher,
    blind_index: BlindIndex,
    prefix: str,
    config: EligibilityConfig | None = None,
) -> EligibilityService:
    return EligibilityService(
        pool=pool,
        cache=EligibilityCache(redis, cipher, blind_index, prefix=prefix),
        cipher=cipher,
        blind_index=blind_index,
        client=client,
        routes=routing_table(route),
        config=config or EligibilityConfig(payer_timeout_s=2.0, default_wait_s=2.0),
    )


@pytest.fixture
async def harness(
    pool: Pool,
    redis: aioredis.Redis,
    simulator: PayerSimulator,
    client: ClearinghouseClient,
    pki: DevPki,
    unique: str,
) -> AsyncIterator[Harness]:
    cipher = FieldCipher(KeyRing.generate("test1"))
    blind_index = BlindIndex(secrets.token_bytes(32))
    prefix = f"test:{unique}:eligibility"
    service = make_service(
        pool=pool,
        redis=redis,
        client=client,
        route=route_to(simulator, pki),
        cipher=cipher,
        blind_index=blind_index,
        prefix=prefix,
    )
    try:
        yield Harness(service, simulator, client, cipher, blind_index, pool, redis, prefix)
    finally:
        await service.close(grace_s=2.0)


async def wait_for(
    condition: Callable[[], Awaitable[bool]], *, timeout_s: float = 5.0, what: str = "condition"
) -> None:
    """Poll `condition` until it holds; fail after `timeout_s`."""
    give_up = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)
