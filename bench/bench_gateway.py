"""Gateway overhead: the same availability search over REST (gateway) and over direct gRPC.

A child process serves a stand-in `AvailabilityService` (a fixed page of 20 results, so the
service costs the same on both paths) over mutual TLS, and the real gateway in front of it
over HTTPS (TLS 1.3, development issuer token, no rate limiter). The parent process sends
the brief's search at a fixed concurrency, first directly over gRPC, then through the
gateway, and prints latency percentiles and throughput for both (not a test).

    .venv/bin/python -m bench.bench_gateway                    # 3,000 requests each, 16 in flight
    .venv/bin/python -m bench.bench_gateway --requests 500 --concurrency 4   # quick look

The load generator shares the machine's cores with the servers, as in the project's other
benchmarks; compare the two paths with each other, not with another machine's numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import ssl
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
from google.protobuf import timestamp_pb2

from common import grpc_client
from common.auth import PrincipalSigner, Role
from common.grpc_server import Registration, create_server
from common.tls import https_server_context
from deploy.certs import DevPki, ensure_dev_pki
from deploy.health import operator_channel_credentials
from gateway.app import GatewayParts, create_app, start_site
from gateway.auth import StaticKeys, TokenPolicy, TokenVerifier
from gateway.backends import Backends, service_targets
from gateway.config import packaged_descriptor_set
from gateway.descriptors import load_api_file
from gateway.dev_issuer import DEV_AUDIENCE, DEV_ISSUER, dev_principal, load_or_create
from gateway.openapi import build_openapi
from medsched.availability.v1 import availability_service_pb2 as availability_pb2
from medsched.availability.v1 import availability_service_pb2_grpc as availability_grpc

QUERY = (
    "specialty=cardiology&location=40.7,-74.0&radius=10mi&insurance=bcbs_ppo"
    "&from=2025-02-01&to=2025-02-14&limit=20"
)
PRINCIPAL_KEY = bytes(range(32))
SERVICE = "medsched.availability.v1.AvailabilityService"


class FixedAvailability(availability_grpc.AvailabilityServiceServicer):
    """Answers every search with the same 20 results."""

    def __init__(self) -> None:
        start = timestamp_pb2.Timestamp(seconds=1738592100)
        slots = [
            availability_pb2.AvailableSlot(
                slot_id=f"slot-{i}",
                provider=availability_pb2.ProviderSummary(
                    provider_id=f"prov-{i}", display_name="Dr. Example", specialties=["cardiology"]
                ),
                location=availability_pb2.LocationSummary(
                    location_id="loc-1", display_name="Midtown Cardiology"
                ),
                start_time=start,
                end_time=start,
                local_start_time="2025-02-03T09:15:00-05:00",
                local_end_time="2025-02-03T09:30:00-05:00",
                time_zone="America/New_York",
            )
            for i in range(20)
        ]
        self._page = availability_pb2.SearchAvailabilityResponse(slots=slots)

    async def SearchAvailability(  # noqa: N802 (generated servicer method name)
        self, request: availability_pb2.SearchAvailabilityRequest, context: Any
    ) -> availability_pb2.SearchAvailabilityResponse:
        del request, context
        return self._page


@dataclass(frozen=True)
class Endpoints:
    grpc_address: str
    gateway_url: str
    token: str


def _serve(folder: str, ready: Any) -> None:
    """Child process: the stand-in service and the gateway, until terminated."""
    from common.grpc_server import run

    run(_serve_async(Path(folder), ready))


async def _serve_async(folder: Path, ready: Any) -> None:
    pki = ensure_dev_pki(folder / "pki")
    service = await create_server(
        service_name="availability",
        listen="127.0.0.1:0",
        tls=pki.tls_files("svc-availability"),
        servicers=[
            Registration.of(
                availability_grpc.add_AvailabilityServiceServicer_to_server,
                FixedAvailability(),
                SERVICE,
            )
        ],
        principal_verifier=PrincipalSigner(PRINCIPAL_KEY),
    )
    await service.start()
    await service.set_serving()
    api = load_api_file(packaged_descriptor_set())
    gateway_tls = pki.tls_files("gateway", require_client_cert=False)
    backends = Backends(
        service_targets(api, {"availability": service.address}),
        lambda address: grpc_client.channel(address, tls=gateway_tls),
    )
    issuer = load_or_create(folder / "dev-issuer")
    parts = GatewayParts(
        api=api,
        backends=backends,
        verifier=TokenVerifier(
            StaticKeys(issuer.jwks()), TokenPolicy(issuer=DEV_ISSUER, audience=DEV_AUDIENCE)
        ),
        signer=PrincipalSigner(PRINCIPAL_KEY),
        limiter=None,
        openapi=build_openapi(api.restricted_to(backends.services)),
        backend_timeout_s=5.0,
        max_body_bytes=256 * 1024,
    )
    runner, port = await start_site(
        create_app(parts), "127.0.0.1:0", https_server_context(gateway_tls), grace_s=1.0
    )
    token = issuer.mint(dev_principal(Role.PATIENT, "pat-bench"), now=datetime.now(UTC))
    ready.put((service.address, f"https://127.0.0.1:{port}", token))
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await backends.close()
        await service.stop(0)


async def _measure(
    call: Callable[[], Awaitable[None]], requests: int, concurrency: int
) -> tuple[list[float], float]:
    latencies: list[float] = []
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    for _ in range(min(50, requests)):  # warm up connections and caches
        await call()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


def _summary(name: str, latencies: list[float], elapsed: float) -> dict[str, Any]:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)

    return {
        "path": name,
        "requests": len(ordered),
        "per_second": round(len(ordered) / elapsed),
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
    }


async def _run(endpoints: Endpoints, pki: DevPki, requests: int, concurrency: int) -> None:
    request = availability_pb2.SearchAvailabilityRequest(
        specialty="cardiology",
        location="40.7,-74.0",
        radius="10mi",
        insurance="bcbs_ppo",
        from_date="2025-02-01",
        to_date="2025-02-14",
        limit=20,
    )
    signer = PrincipalSigner(PRINCIPAL_KEY)
    principal = dev_principal(Role.PATIENT, "pat-bench")
    async with grpc.aio.secure_channel(
        endpoints.grpc_address, operator_channel_credentials(pki)
    ) as channel:
        stub = availability_grpc.AvailabilityServiceStub(channel)

        async def direct() -> None:
            metadata = (("x-medsched-principal", signer.sign(principal, now=datetime.now(UTC))),)
            await stub.SearchAvailability(request, timeout=5.0, metadata=metadata)

        grpc_result = _summary("gRPC direct", *await _measure(direct, requests, concurrency))

    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    headers = {"Authorization": f"Bearer {endpoints.token}"}
    url = f"{endpoints.gateway_url}/v1/availability?{QUERY}"
    connector = aiohttp.TCPConnector(limit=concurrency, ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def rest() -> None:
            async with session.get(url, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"gateway answered {response.status}")

        rest_result = _summary("REST gateway", *await _measure(rest, requests, concurrency))

    for result in (grpc_result, rest_result):
        print(json.dumps(result))
    overhead = round(rest_result["p50_ms"] - grpc_result["p50_ms"], 2)
    print(json.dumps({"gateway_overhead_p50_ms": overhead, "concurrency": concurrency}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medsched-bench-gateway-") as folder:
        pki = ensure_dev_pki(Path(folder) / "pki")
        spawn = multiprocessing.get_context("spawn")
        ready = spawn.Queue()
        child = spawn.Process(target=_serve, args=(folder, ready), daemon=True)
        child.start()
        try:
            grpc_address, gateway_url, token = ready.get(timeout=60)
            asyncio.run(
                _run(
                    Endpoints(grpc_address, gateway_url, token),
                    pki,
                    args.requests,
                    args.concurrency,
                )
            )
        finally:
            child.terminate()
            child.join(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
