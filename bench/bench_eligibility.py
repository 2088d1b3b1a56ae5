"""Benchmark of eligibility checks over gRPC against the payer simulator (not a test).

Measures the service and its gRPC server (mutual TLS) in this process, the payer simulator in
its own, on real PostgreSQL and Redis (embedded ones in a temporary folder unless URLs are
given):

1. cache hits: sequential `CheckEligibility` calls answered from the cache (target p99 < 5 ms);
2. live checks: each asks the payer, which answers after a *fixed* simulated latency, so the
   service's own cost is the measured time minus that latency (target p99 < 50 ms), one at a
   time and with several in flight;
3. a payer that never answers: the call must come back PENDING within its gRPC deadline.

    .venv/bin/python -m bench.bench_eligibility
    .venv/bin/python -m bench.bench_eligibility --hits 5000 --live 500 --concurrency 20

The gRPC client shares the process and its cores with the server, so its own overhead is
part of every figure (as a booking service's would be).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import statistics
import sys
import tempfile
import time
import uuid
from asyncio.subprocess import Process
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import psycopg
import redis.asyncio as aioredis
from psycopg import sql

from common.auth import PrincipalSigner
from common.crypto import BlindIndex, FieldCipher, KeyRing
from common.db import open_pool
from common.grpc_client import channel
from common.grpc_server import Registration, create_server, run
from common.migrations import migrate
from deploy.certs import DevPki, ensure_dev_pki
from deploy.embedded import start_infra
from eligibility_svc.cache import EligibilityCache
from eligibility_svc.config import ClientConfig, EligibilityConfig
from eligibility_svc.core_client import ClearinghouseClient
from eligibility_svc.main import ELIGIBILITY_SERVICE
from eligibility_svc.payer_sim.app import DEV_CREDENTIALS
from eligibility_svc.routing import PayerRoute, ProviderIdentity, RoutingTable, Transport
from eligibility_svc.server import EligibilityServicer
from eligibility_svc.service import EligibilityService
from medsched.eligibility.v1 import (
    eligibility_pb2,
    eligibility_service_pb2,
    eligibility_service_pb2_grpc,
)

MIGRATIONS = Path(__file__).resolve().parents[1] / "eligibility_svc" / "migrations"
ORGANIZATION = "org-bench"
PAYER = "SIMPAYER"
Request = eligibility_service_pb2.CheckEligibilityRequest
Check = eligibility_pb2.EligibilityCheck


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples_ms)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {
        "n": len(ordered),
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "max_ms": round(ordered[-1], 2),
        "mean_ms": round(statistics.fmean(ordered), 2),
    }


def request(patient: str, member_id: str = "SIMA00001", **fields: Any) -> Request:
    made = Request(
        organization_id=ORGANIZATION,
        patient_id=patient,
        payer_id=PAYER,
        member_id=member_id,
        service_type_code="98",
        service_date="2026-03-02",
        **fields,
    )
    made.patient_demographics.name.family_name = "SMITH"
    made.patient_demographics.name.given_name = "JOHN"
    return made


async def timed(
    check: grpc.aio.UnaryUnaryMultiCallable[Request, Check], message: Request, timeout_s: float
) -> tuple[float, Check]:
    """Milliseconds from starting the call to having its answer, and the answer."""
    started = time.perf_counter()
    result = await check(message, timeout=timeout_s)
    return (time.perf_counter() - started) * 1000, result


async def fresh_database(admin_url: str, base_url: str) -> str:
    name = f"bench_eligibility_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return base_url.rsplit("/", 1)[0] + "/" + name


async def bench(args: argparse.Namespace, database_url: str, redis_url: str, folder: Path) -> None:
    pki = ensure_dev_pki(folder / "pki")
    await migrate(database_url, "eligibility", MIGRATIONS)
    latency_s = args.payer_latency_ms / 1000
    simulator, soap_url = await start_simulator(pki, args.payer_latency_ms)
    route = PayerRoute(
        payer_id=PAYER,
        endpoint=soap_url,
        transport=Transport.SOAP,
        sender_id="MEDSCHED",
        receiver_id="SIMPAYER",
        username="medsched",
        password=DEV_CREDENTIALS.password,
        payer_name="SIMULATED HEALTH PLAN",
        payer_identifier="SIM001",
        ca_file=pki.ca_cert,
    )
    routes = RoutingTable(
        {PAYER: route}, {ORGANIZATION: ProviderIdentity(ORGANIZATION, "CLINIC", "1234567893")}
    )
    pool = await open_pool(database_url, min_size=4, max_size=16, name="bench-eligibility")
    redis = aioredis.from_url(redis_url)
    client = ClearinghouseClient(ClientConfig())
    await client.start()
    cipher = FieldCipher(KeyRing.generate("bench"))
    index = BlindIndex(secrets.token_bytes(32))
    service = EligibilityService(
        pool=pool,
        cache=EligibilityCache(redis, cipher, index, prefix=f"bench:{uuid.uuid4().hex[:8]}"),
        cipher=cipher,
        blind_index=index,
        client=client,
        routes=routes,
        config=EligibilityConfig(payer_timeout_s=5.0),
    )
    handle = await create_server(
        service_name="eligibility",
        listen="127.0.0.1:0",
        tls=pki.tls_files("svc-eligibility", require_client_cert=True),
        servicers=[
            Registration.of(
                eligibility_service_pb2_grpc.add_EligibilityServiceServicer_to_server,
                EligibilityServicer(lambda: service),
                ELIGIBILITY_SERVICE,
            )
        ],
        principal_verifier=PrincipalSigner(secrets.token_bytes(32)),
    )
    await handle.start()
    await handle.set_serving()
    ch = channel(handle.address, tls=pki.tls_files("svc-booking"))
    check: grpc.aio.UnaryUnaryMultiCallable[Request, Check] = ch.unary_unary(
        f"/{ELIGIBILITY_SERVICE}/CheckEligibility", Request.SerializeToString, Check.FromString
    )
    results: dict[str, Any] = {
        "payer_latency_ms": args.payer_latency_ms,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        results["cache_hit"] = await cache_hits(check, args.hits)
        results["live_sequential"] = await live_checks(check, args.live, 1, latency_s, "seq")
        results["live_concurrent"] = await live_checks(
            check, args.live, args.concurrency, latency_s, "conc"
        )
        results["never_answers"] = await silent_payer(check, args.deadline_ms / 1000)
    finally:
        await ch.close(None)
        await handle.stop(0)
        await service.close(grace_s=1.0)
        await client.close()
        await redis.aclose()
        await pool.close()
        simulator.send_signal(signal.SIGTERM)
        await simulator.wait()
    print(json.dumps(results, indent=2))


async def start_simulator(pki: DevPki, latency_ms: float) -> tuple[Process, str]:
    """The payer simulator in its own process (its CPU is the payer's, not ours)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "eligibility_svc.payer_sim",
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(pki.cert("payer-sim")),
        "--tls-key",
        str(pki.key("payer-sim")),
        "--latency-mean-ms",
        str(latency_ms),
        "--latency-sigma",
        "0",
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    announced = json.loads(await asyncio.wait_for(process.stdout.readline(), timeout=30))
    return process, str(announced["soap_url"])


async def cache_hits(
    check: grpc.aio.UnaryUnaryMultiCallable[Request, Check], count: int
) -> dict[str, Any]:
    warm = await check(request("pat-hot"), timeout=5)
    assert warm.status == eligibility_pb2.ACTIVE, warm
    for _ in range(50):  # connection and code paths warm
        await check(request("pat-hot"), timeout=5)
    samples = []
    for _ in range(count):
        elapsed, answer = await timed(check, request("pat-hot"), 5.0)
        assert answer.source == eligibility_pb2.CACHE
        samples.append(elapsed)
    return percentiles(samples)


async def live_checks(
    check: grpc.aio.UnaryUnaryMultiCallable[Request, Check],
    count: int,
    concurrency: int,
    latency_s: float,
    label: str,
) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)
    overheads: list[float] = []
    totals: list[float] = []

    async def one(n: int) -> None:
        async with gate:
            elapsed, answer = await timed(check, request(f"pat-{label}-{n}"), 10.0)
        assert answer.status == eligibility_pb2.ACTIVE
        assert answer.source == eligibility_pb2.PAYER
        totals.append(elapsed)
        overheads.append(elapsed - latency_s * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(count)))
    wall = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "total": percentiles(totals),
        "overhead_over_payer_latency": percentiles(overheads),
        "checks_per_s": round(count / wall, 1),
    }


async def silent_payer(
    check: grpc.aio.UnaryUnaryMultiCallable[Request, Check], deadline_s: float
) -> dict[str, Any]:
    samples = []
    for n in range(5):
        elapsed, answer = await timed(check, request(f"pat-silent-{n}", "SIMT00006"), deadline_s)
        assert answer.status == eligibility_pb2.PENDING
        samples.append(elapsed)
    return {
        "deadline_ms": deadline_s * 1000,
        "status": "PENDING",
        "max_elapsed_ms": round(max(samples), 2),
        "within_deadline": max(samples) < deadline_s * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hits", type=int, default=2000, help="cache-hit calls")
    parser.add_argument("--live", type=int, default=200, help="live checks")
    parser.add_argument("--concurrency", type=int, default=10, help="live checks in flight")
    parser.add_argument("--payer-latency-ms", type=float, default=100.0)
    parser.add_argument("--deadline-ms", type=float, default=1000.0)
    parser.add_argument("--database-url", help="PostgreSQL admin URL (default: embedded)")
    parser.add_argument("--redis-url", help="Redis URL (default: embedded)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medsched-bench-eligibility-") as tmp:
        folder = Path(tmp)
        if args.database_url and args.redis_url:
            run(_with_urls(args, args.database_url, args.redis_url, folder))
            return
        infra = start_infra(folder / "infra", durable=False)
        try:
            run(_with_urls(args, infra.database_url, infra.redis_url, folder))
        finally:
            infra.stop()


async def _with_urls(
    args: argparse.Namespace, admin_url: str, redis_url: str, folder: Path
) -> None:
    database_url = await fresh_database(admin_url, admin_url)
    await bench(args, database_url, redis_url, folder)


if __name__ == "__main__":
    main()
