"""Benchmark of booking through gRPC, with the services in their own processes (not a test).

Processes, as `medsched up` runs them: the booking service (`python -m booking_svc.main`),
the eligibility service (`python -m eligibility_svc.main`) and the payer simulator
(`python -m eligibility_svc.payer_sim`, by default at its own default latency: lognormal,
mean 1.5 s, sigma 0.6), each configured by environment variables; plaintext gRPC on
localhost between them (the payer link is TLS). PostgreSQL (fsync on unless `--no-fsync`),
NATS and Redis are embedded servers in a temporary folder. The clinic is the booking tests'
(`tests/integration/booking/world.py`: three providers, two sites, exam rooms, an
ultrasound), materialized for `--days` days. This process is the load generator.

Measured, milliseconds from sending `BookAppointment` to its answer:

1. `self_pay`: one booking at a time, no eligibility check (the database path alone);
2. `cached_eligibility`: one patient with a plan booking distinct start times one at a time;
   the first booking asks the payer and fills the eligibility cache, the rest are answered
   from it;
3. `slow_payer`: new insured patients, `--slow-in-flight` at a time, each check going to the
   payer at its latency: the booking budget is 2 s, so p99 must stay under 2,000 ms; a payer
   slower than the budget allows refuses the booking (ELIGIBILITY_UNVERIFIED) when the
   patient has no recent verification. Then the eligibility cache is emptied and the same
   patients book again: now a slow payer gives PENDING_VERIFICATION (recent verification).
   Each pair of runs at each `--slow-in-flight` (a booking holds a pool connection only
   for its own short transactions, never while the payer answers);
4. `contended`: `--clients` callers, all on `--contended-starts` start times (self-pay):
   attempts per second, almost all refused as taken;
5. `distinct`: `--clients` callers, each attempt on a start time of its own (self-pay):
   bookings per second.

Beside each: the booking process's CPU milliseconds per call, and the peaks of its pool's
connections in use and requests waiting for one (its metrics endpoint, sampled every 50 ms).
The load average before and after is printed: the 2 cores are shared by every process here
and whatever else runs.

    .venv/bin/python -m bench.bench_booking
    .venv/bin/python -m bench.bench_booking --sequential 100 --slow 100 --contended 1000 \
        --distinct 500       # a quicker look
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.bench_eligibility import (
    BenchError,
    Urls,
    concurrency_list,
    cpu_seconds,
    fresh_database,
    load_average,
    percentiles,
    stop,
    tail,
)
from booking_svc.main import BOOKING_SERVICE
from common.auth import PRINCIPAL_METADATA_KEY, Principal, PrincipalSigner, Role
from common.db import open_pool
from common.grpc_client import status_details
from common.grpc_server import run
from common.migrations import migrate
from deploy.certs import DevPki, ensure_dev_pki
from deploy.embedded import free_port, start_infra
from eligibility_svc.cache import PREFIX as ELIGIBILITY_CACHE_PREFIX
from eligibility_svc.main import ELIGIBILITY_SERVICE
from eligibility_svc.payer_sim.app import DEV_CREDENTIALS
from medsched.booking.v1 import appointment_pb2, booking_service_pb2
from tests.integration.booking.world import ACTIVE_MEMBER, NPI, PAYER_ID, PLAN, Clinic, build_clinic

REPOSITORY = Path(__file__).resolve().parents[1]
A = appointment_pb2.Appointment
Request = booking_service_pb2.BookAppointmentRequest
BookCall = grpc.aio.UnaryUnaryMultiCallable[Request, A]
Refusal = appointment_pb2.BookingRefusal
CALL_TIMEOUT_S = 10.0  # longer than the booking budget: the service's own limit is measured


# --- the processes -----------------------------------------------------------------------------


def secret_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


async def start_payer(pki: DevPki, mean_ms: float, sigma: float) -> tuple[Any, str]:
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
        str(mean_ms),
        "--latency-sigma",
        str(sigma),
        "--seed",
        "7",
        stdout=asyncio.subprocess.PIPE,
    )
    if process.stdout is None:
        raise BenchError("the simulator's output is not connected")
    announced = json.loads(await asyncio.wait_for(process.stdout.readline(), timeout=30))
    return process, str(announced["soap_url"])


def write_routes(folder: Path, soap_url: str, pki: DevPki, organization_id: str) -> Path:
    path = folder / "eligibility-routes.json"
    routes = {
        "payers": [
            {
                "payer_id": PAYER_ID,
                "endpoint": soap_url,
                "transport": "soap",
                "sender_id": "MEDSCHED",
                "receiver_id": PAYER_ID,
                "username": "medsched",
                "password": DEV_CREDENTIALS.password,
                "payer_name": "SIMULATED HEALTH PLAN",
                "payer_identifier": "SIM001",
                "ca_file": str(pki.ca_cert),
            }
        ],
        "organizations": [
            {
                "organization_id": organization_id,
                "name": "BENCH CLINIC",
                "npi": NPI,
                "time_zone": "America/New_York",
            }
        ],
    }
    path.write_text(json.dumps(routes, indent=2))
    return path


async def start_service(module: str, env: dict[str, str], log: Path) -> Any:
    with log.open("wb") as output:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            env=env,
            cwd=REPOSITORY,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
        )


async def wait_serving(address: str, service: str, process: Any, log: Path) -> None:
    give_up = time.monotonic() + 60
    async with grpc.aio.insecure_channel(address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                reply = await health.Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1.0
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if process.returncode is not None or time.monotonic() > give_up:
                raise BenchError(f"{service} did not become ready; its log ends:\n{tail(log)}")
            await asyncio.sleep(0.2)


# --- the load --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    provider: int
    days: int
    hour: int
    minute: int


def starts(days: int, providers: Sequence[int]) -> Iterator[Start]:
    """Distinct one-granule start times, from tomorrow on, 08:00-16:45 local."""
    for day in range(1, days):
        for granule in range(36):
            for provider in providers:
                yield Start(provider, day, 8 + granule // 4, 15 * (granule % 4))


@dataclass
class Loader:
    clinic: Clinic
    calls: Sequence[BookCall]  # one per channel, used in turn
    signer: PrincipalSigner
    pid: int
    metrics_url: str
    sent: int = 0

    def request(self, start: Start, patient: str, *, plan: bool) -> Request:
        clinic = self.clinic
        made = Request(
            slot_id=clinic.slot_id(
                clinic.providers[start.provider], clinic.start(start.days, start.hour, start.minute)
            ),
            visit_type_id=str(clinic.follow_up),
            patient_id=patient,
            visit_reason="annual check",
            idempotency_key=str(uuid.uuid4()),
        )
        if plan:
            made.insurance_plan_id = PLAN
            made.insurance_member_id = ACTIVE_MEMBER[0]
            made.patient_demographics.name.family_name = ACTIVE_MEMBER[1]
            made.patient_demographics.name.given_name = ACTIVE_MEMBER[2]
            made.patient_demographics.birth_date = ACTIVE_MEMBER[3]
        return made

    async def book(self, request: Request) -> tuple[float, str]:
        """Milliseconds to the answer, and the answer: a status or the refusal's reasons."""
        principal = Principal(
            subject=f"user-{request.patient_id}", role=Role.PATIENT, patient_id=request.patient_id
        )
        metadata = ((PRINCIPAL_METADATA_KEY, self.signer.sign(principal, now=datetime.now(UTC))),)
        call = self.calls[self.sent % len(self.calls)]
        self.sent += 1
        started = time.perf_counter()
        try:
            made = await call(request, timeout=CALL_TIMEOUT_S, metadata=metadata)
            outcome = A.Status.Name(made.status)
        except grpc.aio.AioRpcError as error:
            outcome = f"{error.code().name} {'+'.join(reasons(error))}".strip()
        return (time.perf_counter() - started) * 1000, outcome

    async def closed_loop(self, requests: Sequence[Request], in_flight: int) -> dict[str, Any]:
        """`requests` sent by `in_flight` callers, each sending its next when one returns."""
        samples: list[float] = []
        outcomes: Counter[str] = Counter()
        work = iter(requests)

        async def caller() -> None:
            for request in work:
                elapsed, outcome = await self.book(request)
                samples.append(elapsed)
                outcomes[outcome] += 1

        peaks: dict[str, float] = {}
        sampling = asyncio.create_task(sample_pool(self.metrics_url, peaks))
        cpu_before = cpu_seconds(self.pid)
        started = time.perf_counter()
        try:
            await asyncio.gather(*(caller() for _ in range(in_flight)))
        finally:
            sampling.cancel()
        wall = time.perf_counter() - started
        cpu_after = cpu_seconds(self.pid)
        result: dict[str, Any] = {
            "in_flight": in_flight,
            **percentiles(samples),
            "calls_per_s": round(len(requests) / wall, 1),
            "outcomes": dict(outcomes),
        }
        result.update({f"pool_{name}_peak": int(value) for name, value in peaks.items()})
        booked = outcomes["BOOKED"] + outcomes["PENDING_VERIFICATION"]
        result["bookings_per_s"] = round(booked / wall, 1)
        if cpu_before is not None and cpu_after is not None:
            result["service_cpu_ms_per_call"] = round(
                (cpu_after - cpu_before) * 1000 / len(requests), 2
            )
        return result


async def sample_pool(metrics_url: str, peaks: dict[str, float]) -> None:
    """Keep in `peaks` the largest booking pool gauges (in use, waiting) seen every 50 ms."""
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(metrics_url) as response:
                    text = await response.text()
            except aiohttp.ClientError:
                text = ""
            for line in text.splitlines():
                for name in ("in_use", "waiting"):
                    if line.startswith(f"medsched_db_pool_{name}"):
                        value = float(line.rsplit(" ", 1)[1])
                        peaks[name] = max(peaks.get(name, 0.0), value)
            await asyncio.sleep(0.05)


def reasons(error: grpc.aio.AioRpcError) -> list[str]:
    status = status_details(error)
    for detail in status.details if status is not None else ():
        refusal = Refusal()
        if detail.Unpack(refusal):
            return [Refusal.Reason.Name(v.reason) for v in refusal.violations]
    return []


async def forget_eligibility_answers(redis_url: str) -> int:
    """Empty the eligibility cache, so that the next checks go to the payer again."""
    client = aioredis.from_url(redis_url)
    removed = 0
    try:
        async for key in client.scan_iter(match=f"{ELIGIBILITY_CACHE_PREFIX}:*", count=1000):
            removed += int(await client.delete(key))
    finally:
        await client.aclose()
    return removed


async def measure(loader: Loader, args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:6]
    supply = (args.days - 1) * 36  # one-granule starts per provider
    if 20 + args.sequential + args.contended_starts + args.distinct > supply or (
        1 + args.sequential + 2 * args.slow * len(args.slow_in_flight) > 2 * supply
    ):
        raise BenchError(f"{args.days} days do not hold enough start times: raise --days")
    insured = starts(args.days, (0, 1))  # providers 0 and 1 accept the plan
    any_provider = starts(args.days, (2,))  # provider 2 for self-pay, a separate supply
    results: dict[str, Any] = {}

    # Warm connections and code paths.
    warm = [loader.request(next(any_provider), f"b{run_id}-warm", plan=False) for _ in range(20)]
    await loader.closed_loop(warm, 1)

    sequential = [
        loader.request(next(any_provider), f"b{run_id}-self", plan=False)
        for _ in range(args.sequential)
    ]
    results["self_pay"] = await loader.closed_loop(sequential, 1)

    patient = f"b{run_id}-cached"
    first_ms, first = await loader.book(loader.request(next(insured), patient, plan=True))
    cached = [loader.request(next(insured), patient, plan=True) for _ in range(args.sequential)]
    results["cached_eligibility"] = {
        "first_booking_ms": round(first_ms, 1),
        "first_booking": first,
        **await loader.closed_loop(cached, 1),
    }

    for in_flight in args.slow_in_flight:
        patients = [f"b{run_id}-slow{in_flight}-{n}" for n in range(args.slow)]
        fresh = [loader.request(next(insured), p, plan=True) for p in patients]
        new = await loader.closed_loop(fresh, in_flight)
        await forget_eligibility_answers(redis_url)
        again = [loader.request(next(insured), p, plan=True) for p in patients]
        verified = await loader.closed_loop(again, in_flight)
        results.setdefault("slow_payer_new_patients", []).append(new)
        results.setdefault("slow_payer_verified_patients", []).append(verified)

    hot = [next(any_provider) for _ in range(args.contended_starts)]
    contended = [
        loader.request(hot[n % len(hot)], f"b{run_id}-hot-{n}", plan=False)
        for n in range(args.contended)
    ]
    results["contended"] = {
        "starts": len(hot),
        **await loader.closed_loop(contended, args.clients),
    }
    distinct = [
        loader.request(next(any_provider), f"b{run_id}-d-{n}", plan=False)
        for n in range(args.distinct)
    ]
    results["distinct"] = await loader.closed_loop(distinct, args.clients)
    return results


# --- wiring ------------------------------------------------------------------------------------


def environment(urls: Urls, listen: str, keys: dict[str, str]) -> dict[str, str]:
    return {
        "MEDSCHED_DATABASE_URL": urls.database,
        "MEDSCHED_NATS_URL": urls.nats,
        "MEDSCHED_REDIS_URL": urls.redis,
        "MEDSCHED_GRPC_LISTEN": listen,
        **keys,
    }


async def bench(args: argparse.Namespace, urls: Urls, folder: Path) -> dict[str, Any]:
    pki = ensure_dev_pki(folder / "pki")
    for schema, package in (
        ("availability", "availability_svc"),
        ("eligibility", "eligibility_svc"),
        ("booking", "booking_svc"),
    ):
        await migrate(urls.database, schema, REPOSITORY / package / "migrations")
    pool = await open_pool(urls.database, name="bench-setup")
    try:
        clinic = await build_clinic(pool, days=args.days)
    finally:
        await pool.close()
    principal_key = secrets.token_bytes(32)
    keys = {
        "MEDSCHED_ENCRYPTION_KEYS": f"bench1:{secret_key()}",
        "MEDSCHED_ENCRYPTION_ACTIVE_KEY": "bench1",
        "MEDSCHED_HASH_KEY": secret_key(),
        "MEDSCHED_PRINCIPAL_KEY": base64.b64encode(principal_key).decode(),
    }
    payer, soap_url = await start_payer(pki, args.payer_latency_ms, args.payer_sigma)
    processes = [payer]
    try:
        eligibility_address = f"127.0.0.1:{free_port()}"
        eligibility_env = environment(urls, eligibility_address, keys)
        eligibility_env["MEDSCHED_ELIGIBILITY_ROUTES"] = str(
            write_routes(folder, soap_url, pki, str(clinic.organization_id))
        )
        eligibility_env["MEDSCHED_ELIGIBILITY_PAYER_TIMEOUT_S"] = "5"
        eligibility_log = folder / "eligibility.log"
        eligibility = await start_service("eligibility_svc.main", eligibility_env, eligibility_log)
        processes.append(eligibility)
        await wait_serving(eligibility_address, ELIGIBILITY_SERVICE, eligibility, eligibility_log)
        booking_address = f"127.0.0.1:{free_port()}"
        booking_env = environment(urls, booking_address, keys)
        booking_env["MEDSCHED_SERVICE_ADDRS"] = f"eligibility={eligibility_address}"
        metrics_address = f"127.0.0.1:{free_port()}"
        booking_env["MEDSCHED_METRICS_LISTEN"] = metrics_address
        booking_log = folder / "booking.log"
        booking = await start_service("booking_svc.main", booking_env, booking_log)
        processes.append(booking)
        await wait_serving(booking_address, BOOKING_SERVICE, booking, booking_log)
        print(f"booking pid {booking.pid} at {booking_address}", file=sys.stderr)
        channels = [grpc.aio.insecure_channel(booking_address) for _ in range(4)]
        try:
            calls = [
                ch.unary_unary(
                    f"/{BOOKING_SERVICE}/BookAppointment",
                    request_serializer=Request.SerializeToString,
                    response_deserializer=A.FromString,
                )
                for ch in channels
            ]
            loader = Loader(
                clinic,
                calls,
                PrincipalSigner(principal_key),
                booking.pid,
                f"http://{metrics_address}/metrics",
            )
            return await measure(loader, args, urls.redis)
        finally:
            for ch in channels:
                await ch.close(None)
    finally:
        for process in reversed(processes):
            await stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sequential", type=int, default=300, help="self-pay and cached runs")
    parser.add_argument("--slow", type=int, default=200, help="patients in the slow-payer runs")
    parser.add_argument(
        "--slow-in-flight",
        type=concurrency_list,
        default=[8, 20],
        help="bookings in flight in the slow-payer runs, one pair of runs each (e.g. 8,20)",
    )
    parser.add_argument("--payer-latency-ms", type=float, default=1500.0)
    parser.add_argument("--payer-sigma", type=float, default=0.6, help="lognormal shape")
    parser.add_argument("--contended", type=int, default=3000, help="attempts on few starts")
    parser.add_argument("--contended-starts", type=int, default=10)
    parser.add_argument("--distinct", type=int, default=2000, help="attempts on distinct starts")
    parser.add_argument("--clients", type=int, default=64, help="callers in the throughput runs")
    parser.add_argument("--days", type=int, default=90, help="days of granules materialized")
    parser.add_argument("--no-fsync", action="store_true", help="embedded servers without fsync")
    parser.add_argument("--log-dir", help="copy the services' logs here at the end")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medsched-bench-booking-") as tmp:
        folder = Path(tmp)
        infra = start_infra(folder / "infra", durable=not args.no_fsync)
        try:
            results: dict[str, Any] = {
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                "cpus": os.cpu_count(),
                "load_average_before": load_average(),
                "payer_latency_ms": args.payer_latency_ms,
                "payer_sigma": args.payer_sigma,
                "fsync": not args.no_fsync,
            }
            urls = Urls(infra.database_url, infra.nats_url, infra.redis_url)

            async def work() -> dict[str, Any]:
                database = await fresh_database(urls.database)
                return await bench(args, Urls(database, urls.nats, urls.redis), folder)

            results.update(run(work()))
            results["load_average_after"] = load_average()
            print(json.dumps(results, indent=2))
        finally:
            infra.stop()
            if args.log_dir:
                keep_logs(folder, Path(args.log_dir))


def keep_logs(folder: Path, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    for log in folder.glob("*.log"):
        shutil.copy(log, destination / log.name)


if __name__ == "__main__":
    main()
