"""Benchmark of eligibility checks over gRPC, with the service in its own process (not a test).

Three processes, as in production: the eligibility service started the way `medsched up`
starts it (`python -m eligibility_svc.main`, configured by environment variables: mutual TLS,
uvloop, metrics endpoint, outbox relay), the payer simulator, and this load generator (a
booking-like client: the project's gRPC channel with mTLS, on uvloop). PostgreSQL (with fsync
unless `--no-fsync`), NATS and Redis are embedded servers in a temporary folder unless URLs
are given.

Measured:

1. cache hits (target p99 < 5 ms): closed loop at each `--hit-concurrency` (calls in
   flight), then open loop at `--hit-rate` calls/s on a fixed schedule, the shape of real
   traffic, where each call finds the processes idle (latencies from the scheduled start,
   so falling behind counts, and from the actual send); each with the service process's
   CPU milliseconds per call (its idle CPU is measured first, for comparison). Beside them
   the floor: gRPC health checks on the same server and channel, one at a time and at the
   same rate (mTLS and the runtime around a trivial handler: what any call here costs);
2. live checks (target p99 < 50 ms over the payer's latency): each asks the payer, which
   answers after a *fixed* simulated latency, so the service's own cost is the measured time
   minus that latency; one at a time and `--concurrency` in flight;
3. a payer that never answers: the call must come back PENDING within its gRPC deadline.

    .venv/bin/python -m bench.bench_eligibility --hits 1000 --live 100 --concurrency 10
    .venv/bin/python -m bench.bench_eligibility --hits 2000 --hit-concurrency 1,8 --hit-rate 50

All three processes share the machine's cores (and on a development machine, whatever else
runs there): the load average before and after is printed with the results, since other
work on the machine moves the tail more than anything measured here.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
import uuid
from asyncio.subprocess import Process
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import psycopg
from grpc_health.v1 import health_pb2
from psycopg import sql

from common.grpc_client import channel
from common.grpc_server import run
from common.migrations import migrate
from deploy.certs import DevPki, ensure_dev_pki
from deploy.embedded import free_port, start_infra
from deploy.health import check_grpc_health
from eligibility_svc.main import ELIGIBILITY_SERVICE
from eligibility_svc.payer_sim.app import DEV_CREDENTIALS
from medsched.eligibility.v1 import eligibility_pb2, eligibility_service_pb2

REPOSITORY = Path(__file__).resolve().parents[1]
MIGRATIONS = REPOSITORY / "eligibility_svc" / "migrations"
ORGANIZATION = "org-bench"
PAYER = "SIMPAYER"
ACTIVE_MEMBER = "SIMA00001"
SILENT_MEMBER = "SIMT00006"
# Distinct patients whose answers are cached, called in turn (one hot key would flatter Redis).
HOT_PATIENTS = 32
Request = eligibility_service_pb2.CheckEligibilityRequest
Check = eligibility_pb2.EligibilityCheck
GetRequest = eligibility_service_pb2.GetEligibilityCheckRequest
CheckCall = grpc.aio.UnaryUnaryMultiCallable[Request, Check]
GetCall = grpc.aio.UnaryUnaryMultiCallable[GetRequest, Check]
HealthRequest = health_pb2.HealthCheckRequest
HealthReply = health_pb2.HealthCheckResponse
# grpc_health ships no type information (mypy sees Any).
HealthCall = grpc.aio.UnaryUnaryMultiCallable[Any, Any]


class BenchError(RuntimeError):
    """The system under test did not behave as the benchmark requires; numbers would lie."""


@dataclass(frozen=True)
class Urls:
    database: str
    nats: str
    redis: str


@dataclass(frozen=True)
class Calls:
    check: CheckCall
    get: GetCall
    health: HealthCall


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


def request(patient: str, member_id: str = ACTIVE_MEMBER) -> Request:
    made = Request(
        organization_id=ORGANIZATION,
        patient_id=patient,
        payer_id=PAYER,
        member_id=member_id,
        service_type_code="98",
        service_date="2026-03-02",
    )
    made.patient_demographics.name.family_name = "SMITH"
    made.patient_demographics.name.given_name = "JOHN"
    return made


async def timed(check: CheckCall, message: Request, timeout_s: float) -> tuple[float, Check]:
    """Milliseconds from starting the call to having its answer, and the answer."""
    started = time.perf_counter()
    result = await check(message, timeout=timeout_s)
    return (time.perf_counter() - started) * 1000, result


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise BenchError(what)


# --- the processes ---------------------------------------------------------------------------


async def fresh_database(admin_url: str) -> str:
    name = f"bench_eligibility_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return admin_url.rsplit("/", 1)[0] + "/" + name


async def start_simulator(pki: DevPki, latency_ms: float) -> tuple[Process, str]:
    """The payer simulator in its own process; returns it and its SOAP endpoint."""
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
    if process.stdout is None:
        raise BenchError("the simulator's output is not connected")
    announced = json.loads(await asyncio.wait_for(process.stdout.readline(), timeout=30))
    return process, str(announced["soap_url"])


def write_routes(folder: Path, soap_url: str, pki: DevPki) -> Path:
    path = folder / "eligibility-routes.json"
    routes = {
        "payers": [
            {
                "payer_id": PAYER,
                "endpoint": soap_url,
                "transport": "soap",
                "sender_id": "MEDSCHED",
                "receiver_id": PAYER,
                "username": "medsched",
                "password": DEV_CREDENTIALS.password,
                "payer_name": "SIMULATED HEALTH PLAN",
                "payer_identifier": "SIM001",
                "ca_file": str(pki.ca_cert),
            }
        ],
        "organizations": [
            {
                "organization_id": ORGANIZATION,
                "name": "BENCH CLINIC",
                "npi": "1234567893",
                "time_zone": "America/New_York",
            }
        ],
    }
    path.write_text(json.dumps(routes, indent=2))
    return path


def service_environment(
    urls: Urls, pki: DevPki, routes: Path, listen: str, payer_timeout_s: float
) -> dict[str, str]:
    """What `medsched up` gives the eligibility process, and nothing inherited from this shell."""

    def key() -> str:
        return base64.b64encode(secrets.token_bytes(32)).decode()

    return {
        "MEDSCHED_DATABASE_URL": urls.database,
        "MEDSCHED_NATS_URL": urls.nats,
        "MEDSCHED_REDIS_URL": urls.redis,
        "MEDSCHED_GRPC_LISTEN": listen,
        "MEDSCHED_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        "MEDSCHED_TLS_CA": str(pki.ca_cert),
        "MEDSCHED_TLS_CERT": str(pki.cert("svc-eligibility")),
        "MEDSCHED_TLS_KEY": str(pki.key("svc-eligibility")),
        "MEDSCHED_TLS_REQUIRE_CLIENT_CERT": "true",
        "MEDSCHED_ENCRYPTION_KEYS": f"bench1:{key()}",
        "MEDSCHED_ENCRYPTION_ACTIVE_KEY": "bench1",
        "MEDSCHED_HASH_KEY": key(),
        "MEDSCHED_PRINCIPAL_KEY": key(),
        "MEDSCHED_ELIGIBILITY_ROUTES": str(routes),
        "MEDSCHED_ELIGIBILITY_PAYER_TIMEOUT_S": str(payer_timeout_s),
    }


async def start_service(env: dict[str, str], log: Path) -> Process:
    with log.open("wb") as output:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "eligibility_svc.main",
            env=env,
            cwd=REPOSITORY,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
        )


async def wait_serving(address: str, pki: DevPki, process: Process, log: Path) -> None:
    give_up = time.monotonic() + 60
    while not await check_grpc_health(address, pki, timeout_s=1.0, service=ELIGIBILITY_SERVICE):
        if process.returncode is not None or time.monotonic() > give_up:
            raise BenchError(
                f"the eligibility service did not become ready; its log ends:\n{tail(log)}"
            )
        await asyncio.sleep(0.2)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


async def stop(process: Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout=20)
    except TimeoutError:
        process.kill()
        await process.wait()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process `pid` (Linux /proc); None where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command name: state is field 3 of stat(5), utime and stime fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the measurements ------------------------------------------------------------------------


async def with_service_cpu(
    pid: int, calls: int, measure: Awaitable[dict[str, Any]]
) -> dict[str, Any]:
    """`measure`'s result plus the service process's CPU milliseconds per call during it."""
    before, client_before = cpu_seconds(pid), time.process_time()
    result = await measure
    after, client_after = cpu_seconds(pid), time.process_time()
    if before is not None and after is not None:
        result["service_cpu_ms_per_call"] = round((after - before) * 1000 / calls, 3)
    result["client_cpu_ms_per_call"] = round((client_after - client_before) * 1000 / calls, 3)
    return result


async def warm_cache(calls: Calls, patients: Sequence[str]) -> str:
    """Fill the cache for `patients`; return the check id of one cache hit, read back later."""
    for patient in patients:
        answer = await calls.check(request(patient), timeout=10)
        expect(answer.status == eligibility_pb2.ACTIVE, f"warming answered {answer.status}")
    hit_id = ""
    for n in range(200):  # connections, code paths and the pool warm
        answer = await calls.check(request(patients[n % len(patients)]), timeout=5)
        expect(answer.source == eligibility_pb2.CACHE, "a warmed answer was not a cache hit")
        hit_id = answer.check_id
    return hit_id


async def health_call(health: HealthCall) -> None:
    reply = await health(HealthRequest(service=ELIGIBILITY_SERVICE), timeout=5.0)
    expect(reply.status == HealthReply.SERVING, "the service stopped serving")


async def hit_call(check: CheckCall, patient: str) -> None:
    answer = await check(request(patient), timeout=5.0)
    expect(answer.source == eligibility_pb2.CACHE, "a hit was answered by the payer")


async def closed_loop(
    call: Callable[[int], Awaitable[None]], count: int, in_flight: int
) -> dict[str, Any]:
    """`count` calls by `in_flight` callers, each making its next call when one returns."""
    samples: list[float] = []
    numbers = itertools.count()

    async def caller() -> None:
        while (n := next(numbers)) < count:
            started = time.perf_counter()
            await call(n)
            samples.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(in_flight)))
    wall = time.perf_counter() - started
    return {"in_flight": in_flight, **percentiles(samples), "calls_per_s": round(count / wall, 1)}


async def open_loop(
    call: Callable[[int], Awaitable[None]], count: int, rate: float
) -> dict[str, Any]:
    """`count` calls started on a fixed schedule of `rate` per second, whatever the answers do.

    `from_schedule` runs from the scheduled start: if the service or this process falls
    behind, the wait counts against the figures (no coordinated omission). It also holds
    this process's timer lateness (uvloop timers tick in milliseconds), so `from_send`,
    from the moment the call was actually made, is given too.
    """
    from_schedule: list[float] = []
    from_send: list[float] = []
    tasks: list[asyncio.Task[None]] = []

    async def one(n: int, due: float) -> None:
        sent = time.perf_counter()
        await call(n)
        done = time.perf_counter()
        from_schedule.append((done - due) * 1000)
        from_send.append((done - sent) * 1000)

    first = time.perf_counter() + 0.05
    for n in range(count):
        due = first + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n, due)))
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - first
    return {
        "offered_per_s": rate,
        "achieved_per_s": round(count / wall, 1),
        "from_schedule": percentiles(from_schedule),
        "from_send": percentiles(from_send),
    }


async def idle_service_cpu(pid: int, seconds: float) -> dict[str, Any]:
    """The service's own background CPU (relay, sweeper, timers) while nobody calls it."""
    before = cpu_seconds(pid)
    await asyncio.sleep(seconds)
    after = cpu_seconds(pid)
    if before is None or after is None:
        return {}
    return {"service_idle_cpu_ms_per_s": round((after - before) * 1000 / seconds, 2)}


async def live_checks(
    check: CheckCall, count: int, in_flight: int, latency_s: float, label: str
) -> dict[str, Any]:
    """`count` checks the cache cannot answer (distinct patients), `in_flight` at a time."""
    gate = asyncio.Semaphore(in_flight)
    overheads: list[float] = []
    totals: list[float] = []

    async def one(n: int) -> None:
        async with gate:
            elapsed, answer = await timed(check, request(f"{label}-{n}"), 10.0)
        expect(answer.status == eligibility_pb2.ACTIVE, f"a live check answered {answer.status}")
        expect(answer.source == eligibility_pb2.PAYER, "a live check was answered by the cache")
        totals.append(elapsed)
        overheads.append(elapsed - latency_s * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(count)))
    wall = time.perf_counter() - started
    return {
        "in_flight": in_flight,
        "total": percentiles(totals),
        "overhead_over_payer_latency": percentiles(overheads),
        "checks_per_s": round(count / wall, 1),
    }


async def silent_payer(check: CheckCall, deadline_s: float, label: str) -> dict[str, Any]:
    samples = []
    for n in range(5):
        elapsed, answer = await timed(check, request(f"{label}-{n}", SILENT_MEMBER), deadline_s)
        expect(answer.status == eligibility_pb2.PENDING, f"silent payer gave {answer.status}")
        samples.append(elapsed)
    return {
        "deadline_ms": deadline_s * 1000,
        "status": "PENDING",
        "max_elapsed_ms": round(max(samples), 2),
        "within_deadline": max(samples) < deadline_s * 1000,
    }


async def measure(calls: Calls, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    patients = [f"pat-{run_id}-hot-{n}" for n in range(HOT_PATIENTS)]
    hit_id = await warm_cache(calls, patients)
    count = args.hits

    def floor(n: int) -> Awaitable[None]:
        return health_call(calls.health)

    def hit(n: int) -> Awaitable[None]:
        return hit_call(calls.check, patients[n % len(patients)])

    results: dict[str, Any] = {**await idle_service_cpu(pid, 3.0)}
    results["floor_health_check_closed_loop"] = await with_service_cpu(
        pid, count, closed_loop(floor, count, 1)
    )
    results["cache_hit_closed_loop"] = [
        await with_service_cpu(pid, count, closed_loop(hit, count, in_flight))
        for in_flight in args.hit_concurrency
    ]
    if args.hit_rate > 0:
        results["floor_health_check_open_loop"] = await with_service_cpu(
            pid, count, open_loop(floor, count, args.hit_rate)
        )
        results["cache_hit_open_loop"] = await with_service_cpu(
            pid, count, open_loop(hit, count, args.hit_rate)
        )
    # The check a cache hit recorded can be read back (GetEligibilityCheck) once answered.
    stored = await calls.get(GetRequest(check_id=hit_id), timeout=5)
    expect(stored.source == eligibility_pb2.CACHE, "a cache hit's check could not be read back")
    latency_s = args.payer_latency_ms / 1000
    label = f"pat-{run_id}-live"
    results["live_sequential"] = await with_service_cpu(
        pid, args.live, live_checks(calls.check, args.live, 1, latency_s, label)
    )
    results["live_concurrent"] = await with_service_cpu(
        pid,
        args.live,
        live_checks(calls.check, args.live, args.concurrency, latency_s, label + "-c"),
    )
    results["never_answers"] = await silent_payer(
        calls.check, args.deadline_ms / 1000, f"pat-{run_id}-silent"
    )
    return results


async def bench(args: argparse.Namespace, urls: Urls, folder: Path) -> dict[str, Any]:
    pki = ensure_dev_pki(folder / "pki")
    await migrate(urls.database, "eligibility", MIGRATIONS)
    simulator, soap_url = await start_simulator(pki, args.payer_latency_ms)
    try:
        routes = write_routes(folder, soap_url, pki)
        address = f"127.0.0.1:{free_port()}"
        env = service_environment(urls, pki, routes, address, payer_timeout_s=5.0)
        log = folder / "eligibility.log"
        service = await start_service(env, log)
        try:
            print(f"eligibility service pid {service.pid} at {address}", file=sys.stderr)
            await wait_serving(address, pki, service, log)
            return await _measure_through(address, pki, service.pid, args)
        finally:
            await stop(service)
    finally:
        await stop(simulator)


async def _measure_through(
    address: str, pki: DevPki, pid: int, args: argparse.Namespace
) -> dict[str, Any]:
    # The booking service's identity and the project's client channel, as booking calls it.
    ch = channel(address, tls=pki.tls_files("svc-booking"))
    try:
        calls = Calls(
            check=ch.unary_unary(
                f"/{ELIGIBILITY_SERVICE}/CheckEligibility",
                Request.SerializeToString,
                Check.FromString,
            ),
            get=ch.unary_unary(
                f"/{ELIGIBILITY_SERVICE}/GetEligibilityCheck",
                GetRequest.SerializeToString,
                Check.FromString,
            ),
            health=ch.unary_unary(
                "/grpc.health.v1.Health/Check",
                HealthRequest.SerializeToString,
                HealthReply.FromString,
            ),
        )
        return await measure(calls, pid, args)
    finally:
        await ch.close(None)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def concurrency_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("want positive whole numbers, e.g. 1,8")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hits", type=int, default=2000, help="cache-hit calls per measurement")
    parser.add_argument(
        "--hit-concurrency",
        type=concurrency_list,
        default=[1, 8],
        help="cache-hit calls in flight, one closed-loop measurement each (e.g. 1,8)",
    )
    parser.add_argument(
        "--hit-rate", type=float, default=50.0, help="open-loop cache hits per second (0: skip)"
    )
    parser.add_argument("--live", type=int, default=200, help="live checks")
    parser.add_argument("--concurrency", type=int, default=10, help="live checks in flight")
    parser.add_argument("--payer-latency-ms", type=float, default=100.0)
    parser.add_argument("--deadline-ms", type=float, default=1000.0)
    parser.add_argument("--no-fsync", action="store_true", help="embedded servers without fsync")
    parser.add_argument("--database-url", help="PostgreSQL admin URL (default: embedded)")
    parser.add_argument("--nats-url", help="NATS URL with JetStream (default: embedded)")
    parser.add_argument("--redis-url", help="Redis URL (default: embedded)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medsched-bench-eligibility-") as tmp:
        folder = Path(tmp)
        if args.database_url and args.nats_url and args.redis_url:
            urls = Urls(args.database_url, args.nats_url, args.redis_url)
            report(args, lambda: _with_fresh_database(args, urls, folder))
            return
        infra = start_infra(folder / "infra", durable=not args.no_fsync)
        try:
            urls = Urls(infra.database_url, infra.nats_url, infra.redis_url)
            report(args, lambda: _with_fresh_database(args, urls, folder))
        finally:
            infra.stop()


def report(
    args: argparse.Namespace, work: Callable[[], Coroutine[Any, Any, dict[str, Any]]]
) -> None:
    results: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average_before": load_average(),
        "payer_latency_ms": args.payer_latency_ms,
        "fsync": not args.no_fsync,
    }
    results.update(run(work()))
    results["load_average_after"] = load_average()
    print(json.dumps(results, indent=2))


async def _with_fresh_database(
    args: argparse.Namespace, urls: Urls, folder: Path
) -> dict[str, Any]:
    database = await fresh_database(urls.database)
    return await bench(args, Urls(database, urls.nats, urls.redis), folder)


if __name__ == "__main__":
    main()
