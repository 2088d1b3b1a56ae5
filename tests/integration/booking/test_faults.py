"""Booking survives its own process dying, and its database connections dying, mid-booking.

The booking service runs as its own process (`python -m booking_svc.main`, configured by
environment variables as `medsched up` configures it) against an in-process eligibility
service whose payer simulator answers slowly, so that bookings sit in open transactions
(granules locked, appointment not yet committed) while they wait for the payer. Then either
the process is SIGKILLed and started again, or PostgreSQL terminates the process's backends.
Every client retries its booking intent with the same request and idempotency key until it
gets an answer. Each intent must end with exactly one appointment or a clean refusal, and the
tables must hold no orphans (`check_booking_invariants`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from booking_svc.main import BOOKING_SERVICE
from common.auth import PrincipalSigner
from common.db import Pool
from deploy.certs import DevPki
from deploy.embedded import free_port
from medsched.booking.v1 import appointment_pb2, booking_service_pb2
from tests.integration.booking.conftest import running_eligibility
from tests.integration.booking.test_concurrency import (
    RACE_REASONS,
    BookCall,
    Start,
    book_call,
    book_request,
    call_book,
    check_booking_invariants,
    contended_starts,
    live_appointments,
    refusal_reasons,
    scalar,
)
from tests.integration.booking.world import Clinic

A = appointment_pb2.Appointment
B = booking_service_pb2
ROOT = Path(__file__).resolve().parents[3]
APPLICATION_NAME = "medsched-booking"  # the booking process's pool (common.runtime)
# The payer takes about this long, well inside the booking's 2 s budget: long enough for
# many bookings to be waiting in open transactions when the fault strikes.
PAYER_LATENCY_S = 0.8
# Channel options: reconnect quickly once the restarted process listens again.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
)
# Final answers: an appointment, a lost race, or the payer not answering in time.
CLEAN_REFUSALS = {
    grpc.StatusCode.ABORTED: RACE_REASONS,
    grpc.StatusCode.FAILED_PRECONDITION: frozenset({"ELIGIBILITY_UNVERIFIED"}),
}


def key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass
class BookingProcess:
    """`python -m booking_svc.main` on a fixed address, started, killed and started again."""

    env: dict[str, str]
    address: str
    log: Path
    process: asyncio.subprocess.Process | None = None
    starts: int = 0

    async def start(self) -> None:
        self.starts += 1
        with self.log.open("ab") as output:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "booking_svc.main",
                env=self.env,
                cwd=ROOT,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
            )
        give_up = time.monotonic() + 60
        async with grpc.aio.insecure_channel(self.address) as ch:
            health = health_pb2_grpc.HealthStub(ch)
            while True:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health.Check(
                        health_pb2.HealthCheckRequest(service=BOOKING_SERVICE), timeout=1.0
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                if self.process.returncode is not None or time.monotonic() > give_up:
                    pytest.fail(f"the booking process did not start; its log ends:\n{self.tail()}")
                await asyncio.sleep(0.1)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), timeout=20)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@asynccontextmanager
async def booking_process(
    pool: Pool,
    redis: aioredis.Redis,
    clinic: Clinic,
    pki: DevPki,
    unique: str,
    urls: tuple[str, str, str],
    folder: Path,
) -> AsyncIterator[tuple[BookingProcess, PrincipalSigner]]:
    principal_key = secrets.token_bytes(32)
    signer = PrincipalSigner(principal_key)
    async with running_eligibility(
        pool, redis, clinic, pki, unique, signer, payer_latency_s=PAYER_LATENCY_S
    ) as eligibility:
        address = f"127.0.0.1:{free_port()}"
        env = {
            "MEDSCHED_DATABASE_URL": urls[0],
            "MEDSCHED_NATS_URL": urls[1],
            "MEDSCHED_REDIS_URL": urls[2],
            "MEDSCHED_GRPC_LISTEN": address,
            "MEDSCHED_SERVICE_ADDRS": f"eligibility={eligibility.address}",
            "MEDSCHED_ENCRYPTION_KEYS": f"k1:{key()}",
            "MEDSCHED_ENCRYPTION_ACTIVE_KEY": "k1",
            "MEDSCHED_HASH_KEY": key(),
            "MEDSCHED_PRINCIPAL_KEY": base64.b64encode(principal_key).decode(),
            "MEDSCHED_SHUTDOWN_GRACE_S": "2",
        }
        process = BookingProcess(env, address, folder / "booking.log")
        await process.start()
        try:
            yield process, signer
        finally:
            await process.stop()


@pytest.fixture
async def booking_proc(
    pool: Pool,
    redis: aioredis.Redis,
    clinic: Clinic,
    booking_pki: DevPki,
    unique: str,
    database_url: str,
    nats_url: str,
    redis_url: str,
    tmp_path: Path,
) -> AsyncIterator[tuple[BookingProcess, PrincipalSigner]]:
    async with booking_process(
        pool,
        redis,
        clinic,
        booking_pki,
        unique,
        (database_url, nats_url, redis_url),
        tmp_path,
    ) as running:
        yield running


# ---- clients that retry ----------------------------------------------------------------------


@dataclass
class Intent:
    """One booking intent: one request and key, sent until it gets a final answer."""

    start: int
    request: B.BookAppointmentRequest
    result: A | grpc.aio.AioRpcError | None = None
    retried: list[str] = field(default_factory=list)

    def final(self, result: A | grpc.aio.AioRpcError) -> bool:
        if isinstance(result, A):
            return True
        if result.code() == grpc.StatusCode.ALREADY_EXISTS:
            return True  # never expected: the same request with its key is not "different"
        allowed = CLEAN_REFUSALS.get(result.code())
        reasons = refusal_reasons(result)
        return allowed is not None and bool(reasons) and set(reasons) <= allowed

    async def settle(self, call: BookCall, signer: PrincipalSigner, give_up_at: float) -> None:
        while True:
            result = await call_book(call, signer, self.request, 5.0)
            if self.final(result) or time.monotonic() > give_up_at:
                self.result = result
                return
            assert isinstance(result, grpc.aio.AioRpcError)
            self.retried.append(result.code().name)
            await asyncio.sleep(0.05)


def intents_for(clinic: Clinic, starts: Sequence[Start], per_start: int) -> list[Intent]:
    """`per_start` intents per start time, each a different insured patient with its own key."""
    return [
        Intent(index, book_request(clinic, start, f"i{index}-{n}", plan=True))
        for index, start in enumerate(starts)
        for n in range(per_start)
    ]


async def open_transactions(pool: Pool) -> int:
    """The booking process's backends inside a transaction right now."""
    return await scalar(
        pool,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = %s AND xact_start IS NOT NULL",
        (APPLICATION_NAME,),
    )


async def when_transactions_open(pool: Pool, at_least: int, within_s: float = 20.0) -> int:
    give_up = time.monotonic() + within_s
    while (found := await open_transactions(pool)) < at_least:
        assert time.monotonic() < give_up, "bookings never waited in open transactions"
        await asyncio.sleep(0.01)
    return found


async def run_with_fault(
    address: str,
    signer: PrincipalSigner,
    intents: Sequence[Intent],
    fault: Callable[[], Awaitable[None]],
) -> None:
    """Send every intent at once (and keep retrying them) while `fault` strikes."""
    channels = [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in range(4)]
    give_up_at = time.monotonic() + 90
    try:
        sending = [
            asyncio.create_task(intent.settle(book_call(channels[n % 4]), signer, give_up_at))
            for n, intent in enumerate(intents)
        ]
        await fault()
        await asyncio.gather(*sending)
    finally:
        for ch in channels:
            await ch.close(None)


async def check_outcomes(pool: Pool, intents: Sequence[Intent]) -> Counter[str]:
    """Every intent ended cleanly and the database agrees with what each client was told."""
    outcomes: Counter[str] = Counter()
    unsettled = []
    for intent in intents:
        result = intent.result
        if isinstance(result, A):
            outcomes["booked"] += 1
        elif result is not None and intent.final(result):
            assert result.code() != grpc.StatusCode.ALREADY_EXISTS, result.details()
            outcomes[f"{result.code().name} {'+'.join(refusal_reasons(result))}"] += 1
        else:
            unsettled.append((intent.request.patient_id, result))
    assert unsettled == []
    stored = await live_appointments(pool)
    by_patient: dict[str, list[str]] = {}
    for appointment_id, (patient_id, _) in stored.items():
        by_patient.setdefault(patient_id, []).append(str(appointment_id))
    for intent in intents:
        told = intent.result
        expected = [told.appointment_id] if isinstance(told, A) else []
        assert by_patient.get(intent.request.patient_id, []) == expected, intent.retried
    per_start = Counter(i.start for i in intents if isinstance(i.result, A))
    assert [start for start, n in per_start.items() if n > 1] == []
    assert len(stored) == outcomes["booked"]
    await check_booking_invariants(pool)
    return outcomes


# ---- the tests --------------------------------------------------------------------------------


async def test_process_killed_mid_booking_then_restarted(
    booking_proc: tuple[BookingProcess, PrincipalSigner], clinic: Clinic, pool: Pool
) -> None:
    process, signer = booking_proc
    starts = contended_starts(clinic, 30, providers=(0, 1))
    intents = intents_for(clinic, starts, per_start=2)
    seen_open: list[int] = []

    async def kill_and_restart() -> None:
        seen_open.append(await when_transactions_open(pool, at_least=5))
        await process.kill()
        await process.start()

    await run_with_fault(process.address, signer, intents, kill_and_restart)
    outcomes = await check_outcomes(pool, intents)
    assert process.starts == 2
    assert seen_open[0] >= 5
    # The kill cut calls short, and their retries (same key) got final answers.
    cut = [i for i in intents if i.retried]
    assert cut, "no call was in flight when the process died"
    assert outcomes["booked"] > 0
    # Nothing committed by the killed process is left locked or half-written.
    assert await scalar(pool, "SELECT count(*) FROM availability.slots WHERE status = 'HELD'") == 0


async def test_database_connections_terminated_mid_booking(
    booking_proc: tuple[BookingProcess, PrincipalSigner], clinic: Clinic, pool: Pool
) -> None:
    process, signer = booking_proc
    starts = contended_starts(clinic, 30, providers=(0, 1))
    intents = intents_for(clinic, starts, per_start=2)
    terminated: list[int] = []

    async def terminate_backends() -> None:
        for _ in range(3):
            await when_transactions_open(pool, at_least=3)
            terminated.append(
                await scalar(
                    pool,
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid)"
                    " FROM pg_stat_activity WHERE datname = current_database()"
                    " AND application_name = %s) killed",
                    (APPLICATION_NAME,),
                )
            )
            await asyncio.sleep(0.3)

    await run_with_fault(process.address, signer, intents, terminate_backends)
    await check_outcomes(pool, intents)
    assert min(terminated) >= 3
    assert [i for i in intents if i.retried], "no booking was cut short"
    # The process lived through it and still books.
    assert process.process is not None
    assert process.process.returncode is None
    # A lost database connection is a dependency failure worth retrying (UNAVAILABLE, as for
    # any DependencyUnavailable), not an unexpected server error (INTERNAL): clients and the
    # gateway retry UNAVAILABLE, and INTERNAL is logged as a bug.
    seen = Counter(code for intent in intents for code in intent.retried)
    assert set(seen) <= {"UNAVAILABLE"}, seen
