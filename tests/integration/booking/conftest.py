"""Fixtures for the booking tests: the clinic, the real eligibility service and payer simulator
behind gRPC, and the booking service behind its own gRPC server, called with signed principals.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import redis.asyncio as aioredis
from google.protobuf.message import Message

from booking_svc.eligibility import GrpcEligibility
from booking_svc.holds import HoldStore
from booking_svc.main import BOOKING_SERVICE
from booking_svc.server import BookingServicer
from booking_svc.service import BookingConfig, BookingService
from common.auth import PRINCIPAL_METADATA_KEY, Principal, PrincipalSigner, Role
from common.crypto import BlindIndex, FieldCipher, KeyRing
from common.db import Pool, open_pool
from common.grpc_client import channel
from common.grpc_server import Registration, ServerHandle, create_server
from common.migrations import migrate
from deploy.certs import DevPki, ensure_dev_pki
from eligibility_svc.cache import EligibilityCache
from eligibility_svc.config import BreakerConfig, ClientConfig, EligibilityConfig
from eligibility_svc.core_client import ClearinghouseClient
from eligibility_svc.main import ELIGIBILITY_SERVICE
from eligibility_svc.payer_sim import (
    PayerSimulator,
    SimulatorConfig,
    builtin_roster,
    server_ssl_context,
)
from eligibility_svc.payer_sim.roster import Roster
from eligibility_svc.routing import PayerRoute, ProviderIdentity, RoutingTable, Transport
from eligibility_svc.server import EligibilityServicer
from eligibility_svc.service import EligibilityService
from medsched.booking.v1 import booking_service_pb2_grpc
from medsched.eligibility.v1 import eligibility_service_pb2_grpc
from tests.integration.booking.world import NPI, PAYER_ID, Clinic, build_clinic

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def booking_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return ensure_dev_pki(tmp_path_factory.mktemp("booking-pki"))


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[Pool]:
    for schema, package in (
        ("availability", "availability_svc"),
        ("eligibility", "eligibility_svc"),
        ("booking", "booking_svc"),
    ):
        await migrate(database_url, schema, ROOT / package / "migrations")
    db_pool = await open_pool(database_url, min_size=2, max_size=20, name="test-booking")
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


@pytest.fixture
async def clinic(pool: Pool) -> Clinic:
    return await build_clinic(pool)


@dataclass
class Booking:
    """The running pieces a booking test drives and inspects."""

    clinic: Clinic
    pool: Pool
    redis: aioredis.Redis
    service: BookingService
    cipher: FieldCipher
    signer: PrincipalSigner
    simulator: PayerSimulator
    channel: grpc.aio.Channel
    # Where the booking server listens, for tests that open channels of their own.
    address: str = ""
    # The keyed-hash index the booking service uses (member id digests of verifications).
    blind_index: BlindIndex | None = None

    def patient(self, patient_id: str) -> Principal:
        return Principal(subject=f"user-{patient_id}", role=Role.PATIENT, patient_id=patient_id)

    def staff(self, organization_id: str | None = None) -> Principal:
        org = organization_id or str(self.clinic.organization_id)
        return Principal(subject="staff-1", role=Role.STAFF, organization_ids=frozenset({org}))

    async def call(
        self,
        method: str,
        request: Message,
        response: type[Any],
        principal: Principal | None,
        *,
        within_s: float = 10.0,
    ) -> Any:
        """Call `BookingService/<method>` over gRPC as `principal`."""
        stub = self.channel.unary_unary(
            f"/{BOOKING_SERVICE}/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=response.FromString,
        )
        metadata: tuple[tuple[str, str], ...] = ()
        if principal is not None:
            metadata = (
                (PRINCIPAL_METADATA_KEY, self.signer.sign(principal, now=datetime.now(UTC))),
            )
        return await stub(request, timeout=within_s, metadata=metadata)


async def start_payer(pki: DevPki, latency_mean_s: float = 0.01) -> PayerSimulator:
    simulator = PayerSimulator(
        SimulatorConfig(
            roster=Roster.of(builtin_roster()),
            latency_mean_s=latency_mean_s,
            latency_sigma=0.2,
            seed=11,
        )
    )
    context = server_ssl_context(str(pki.cert("payer-sim")), str(pki.key("payer-sim")))
    await simulator.start("127.0.0.1", 0, context)
    return simulator


@pytest.fixture
async def booking(
    pool: Pool,
    redis: aioredis.Redis,
    clinic: Clinic,
    booking_pki: DevPki,
    unique: str,
) -> AsyncIterator[Booking]:
    async with running_booking(pool, redis, clinic, booking_pki, unique) as running:
        yield running


@asynccontextmanager
async def running_booking(
    pool: Pool,
    redis: aioredis.Redis,
    clinic: Clinic,
    pki: DevPki,
    unique: str,
    *,
    payer_latency_s: float = 0.01,
    config: BookingConfig | None = None,
) -> AsyncIterator[Booking]:
    """Payer simulator -> eligibility (gRPC) -> booking (gRPC), all on free ports."""
    signer = PrincipalSigner(secrets.token_bytes(32))
    cipher = FieldCipher(KeyRing.generate("test1"))
    blind_index = BlindIndex(secrets.token_bytes(32))
    async with (
        running_eligibility(
            pool, redis, clinic, pki, unique, signer, payer_latency_s=payer_latency_s
        ) as eligibility_server,
        _booking_server(
            pool, redis, clinic, eligibility_server, signer, cipher, blind_index, config
        ) as running,
    ):
        yield running


@asynccontextmanager
async def _booking_server(
    pool: Pool,
    redis: aioredis.Redis,
    clinic: Clinic,
    eligibility_server: EligibilityServer,
    signer: PrincipalSigner,
    cipher: FieldCipher,
    blind_index: BlindIndex,
    config: BookingConfig | None,
) -> AsyncIterator[Booking]:
    elig_channel = channel(eligibility_server.address, tls=None)
    service = BookingService(
        pool=pool,
        holds=HoldStore(redis),
        eligibility=GrpcEligibility(elig_channel, signer),
        cipher=cipher,
        blind_index=blind_index,
        config=config or BookingConfig(),
    )
    server: ServerHandle = await create_server(
        service_name="booking",
        listen="127.0.0.1:0",
        tls=None,
        servicers=[
            Registration.of(
                booking_service_pb2_grpc.add_BookingServiceServicer_to_server,
                BookingServicer(lambda: service, blind_index),
                BOOKING_SERVICE,
            )
        ],
        principal_verifier=signer,
    )
    await server.start()
    await server.set_serving()
    booking_channel = channel(server.address, tls=None)
    try:
        yield Booking(
            clinic,
            pool,
            redis,
            service,
            cipher,
            signer,
            eligibility_server.simulator,
            booking_channel,
            address=server.address,
            blind_index=blind_index,
        )
    finally:
        await booking_channel.close(None)
        await server.stop(1.0)
        await elig_channel.close(None)


@dataclass
class EligibilityServer:
    """The payer simulator and the eligibility service behind a gRPC server, nothing else."""

    address: str
    simulator: PayerSimulator


@asynccontextmanager
async def running_eligibility(
    pool: Pool,
    redis: aioredis.Redis,
    clinic: Clinic,
    pki: DevPki,
    unique: str,
    signer: PrincipalSigner,
    *,
    payer_latency_s: float = 0.01,
) -> AsyncIterator[EligibilityServer]:
    """Payer simulator -> eligibility (gRPC) on a free port, for a booking service run as
    its own process (which reaches it through MEDSCHED_SERVICE_ADDRS). Callers' principals
    are verified with `signer`, the key the booking process forwards them under."""
    cipher = FieldCipher(KeyRing.generate("elig1"))
    blind_index = BlindIndex(secrets.token_bytes(32))
    simulator = await start_payer(pki, payer_latency_s)
    client = ClearinghouseClient(ClientConfig(breaker=BreakerConfig(failure_threshold=50)))
    await client.start()
    route = PayerRoute(
        payer_id=PAYER_ID,
        endpoint=f"{simulator.base_url}/core/soap",
        transport=Transport.SOAP,
        sender_id="MEDSCHED",
        receiver_id=PAYER_ID,
        username="medsched",
        password="medsched-dev-password",
        payer_name="SIMULATED HEALTH PLAN",
        payer_identifier="SIM001",
        ca_file=pki.ca_cert,
    )
    routes = RoutingTable(
        {PAYER_ID: route},
        {
            str(clinic.organization_id): ProviderIdentity(
                str(clinic.organization_id), "CLINIC", NPI, "America/New_York"
            )
        },
    )
    eligibility = EligibilityService(
        pool=pool,
        cache=EligibilityCache(redis, cipher, blind_index, prefix=f"test:{unique}:elig"),
        cipher=cipher,
        blind_index=blind_index,
        client=client,
        routes=routes,
        config=EligibilityConfig(payer_timeout_s=5.0, default_wait_s=2.0),
    )
    server: ServerHandle = await create_server(
        service_name="eligibility",
        listen="127.0.0.1:0",
        tls=None,
        servicers=[
            Registration.of(
                eligibility_service_pb2_grpc.add_EligibilityServiceServicer_to_server,
                EligibilityServicer(lambda: eligibility),
                ELIGIBILITY_SERVICE,
            )
        ],
        principal_verifier=signer,
    )
    await server.start()
    await server.set_serving()
    try:
        yield EligibilityServer(server.address, simulator)
    finally:
        await server.stop(1.0)
        await eligibility.close(grace_s=1.0)
        await client.close()
        await simulator.stop()
