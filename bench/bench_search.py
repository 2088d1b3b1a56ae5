"""Benchmark of the availability service's search at the brief's scale (not a test).

Loads a synthetic organisation into an embedded PostgreSQL with bulk COPY (5,000 providers,
300 locations in 8 clusters over a 120 x 120 mile metro, 40 uneven specialties, 50 plans,
90 days x 24 granules = 10.8 million granules, about 70% OPEN, room reservations), starts
`availability_svc` as its own process (plaintext gRPC on localhost) and measures:

1. start: time to SERVING, the index build time the service logs, its resident memory;
2. search latency at an offered rate (default 833/s, open loop) for `--seconds`;
3. saturation throughput of search, and of a no-op RPC (`grpc.health.v1.Health/Check`)
   on the same server, closed loop with many calls in flight;
4. freshness: a booking-like transaction (slot rows BOOKED + outbox event, committed) until
   the slot disappears from search, while the offered load runs; p50/p99 over `--probes`.
   By default the event goes through the booking schema's outbox and a relay in a process
   of its own, as a booking does (booking_svc relays its own outbox); `--probe-outbox
   availability` sends it through the search process's own relay instead, as a block made
   through schedule administration goes.

The load generator is a separate process (multiprocessing, grpc.aio, requests pre-serialized)
on the same 2 cores as the service, as the issue's targets assume.

    .venv/bin/python bench/bench_search.py                        # full scale, several minutes
    .venv/bin/python bench/bench_search.py --providers 300 --seconds 5 --probes 20  # quick look
    .venv/bin/python bench/bench_search.py --data-dir /tmp/medsched-bench   # keep and reuse data
    .venv/bin/python bench/bench_search.py --data-dir /tmp/medsched-bench --phases freshness \
        --freshness-rate 0         # the pipeline's own freshness, no other load
    .venv/bin/python bench/bench_search.py --data-dir /tmp/medsched-bench --processes 2
                                   # two search processes on one port (SO_REUSEPORT)
    .venv/bin/python bench/bench_search.py --data-dir /tmp/medsched-bench --phases freshness \
        --probe-outbox availability   # a block's path: the search process relays the event
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import math
import multiprocessing as mp
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import grpc.aio
import numpy as np
import numpy.typing as npt
import psycopg
from grpc_health.v1 import health_pb2

from availability_svc.roll_forward import ROLL_FORWARD_LOCK_KEY
from common.migrations import migrate
from common.outbox import add_event, relay_lock_key
from deploy.embedded import free_port, start_infra
from medsched.availability.v1 import availability_service_pb2 as pb
from medsched.events.v1 import envelope_pb2, slot_events_pb2

ZONE = "America/Chicago"
METRO_CENTER = (41.88, -87.63)
METRO_MILES = 120.0
MILES_PER_DEGREE_LAT = 69.05
GRANULE = timedelta(minutes=15)
SEARCH_METHOD = "/medsched.availability.v1.AvailabilityService/SearchAvailability"
HEALTH_METHOD = "/grpc.health.v1.Health/Check"
ROLL_FORWARD_LOCK = ROLL_FORWARD_LOCK_KEY
BOOKING_OUTBOX = "booking"
MIGRATIONS = Path(__file__).resolve().parents[1] / "availability_svc" / "migrations"
STATUSES = np.array(["OPEN", "BOOKED", "BLOCKED", "HELD"])
STATUS_SHARES = np.array([0.70, 0.20, 0.07, 0.03])


# ---- synthetic data --------------------------------------------------------------------------


@dataclass(frozen=True)
class Synthetic:
    organization: str
    locations: list[tuple[str, float, float]]
    specialties: list[str]
    specialty_weights: npt.NDArray[np.float64]
    plans: list[str]
    plan_shares: npt.NDArray[np.float64]


def zipf(n: int, exponent: float) -> npt.NDArray[np.float64]:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return np.asarray(weights / weights.sum(), dtype=np.float64)


def copy_rows(conn: psycopg.Connection[Any], table_and_columns: str, lines: Iterator[str]) -> None:
    with conn.cursor() as cursor, cursor.copy(f"COPY {table_and_columns} FROM STDIN") as copy:
        buffer = io.StringIO()
        for line in lines:
            buffer.write(line)
            if buffer.tell() > 4 << 20:
                copy.write(buffer.getvalue())
                buffer = io.StringIO()
        copy.write(buffer.getvalue())


def load_synthetic(url: str, providers: int, locations: int, days: int, seed: int) -> Synthetic:
    """Write the organisation with COPY; returns what the load generator needs."""
    rng = np.random.default_rng(seed)
    org = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    specialties = [f"spec_{k:02d}" for k in range(40)]
    plans = [f"plan_{k:02d}" for k in range(50)]
    specialty_weights, plan_shares = zipf(40, 0.9), zipf(50, 0.8)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO availability.organizations (id, display_name, time_zone)"
            " VALUES (%s, 'Bench Health', %s)",
            (org, ZONE),
        )
        for plan in plans:
            conn.execute(
                "INSERT INTO availability.insurance_plans (organization_id, plan_id,"
                " display_name, payer_id) VALUES (%s, %s, %s, 'PAYER')",
                (org, plan, plan),
            )
        places = metro_locations(rng, locations)
        copy_rows(
            conn,
            "availability.locations (id, organization_id, display_name, latitude, longitude,"
            " time_zone)",
            (
                f"{lid}\t{org}\tSite {n}\t{lat}\t{lon}\t{ZONE}\n"
                for n, (lid, lat, lon) in enumerate(places)
            ),
        )
        rooms = load_resources(conn, rng, org, places)
        visit_types = load_visit_types(conn, org)
        cluster_of = rng.integers(0, 8, size=locations)
        by_cluster = [np.flatnonzero(cluster_of == c) for c in range(8)]
        provider_rows: list[tuple[str, list[str], str]] = []
        for n in range(providers):
            provider = str(uuid.uuid4())
            home = int(rng.integers(locations))
            second = home
            if rng.random() < 0.15:
                second = int(rng.choice(by_cluster[cluster_of[home]]))
            spec = specialties[int(rng.choice(40, p=specialty_weights))]
            provider_rows.append((provider, sorted({places[home][0], places[second][0]}), spec))
            del n
        load_providers(conn, rng, org, provider_rows, plans, plan_shares, visit_types)
        started = time.perf_counter()
        granules = load_slots(conn, rng, org, provider_rows, days, rooms)
        print(
            f"  {granules:,} granules copied in {time.perf_counter() - started:.0f} s", flush=True
        )
        conn.execute("ANALYZE availability.slots")
    return Synthetic(org, places, specialties, specialty_weights, plans, plan_shares)


def metro_locations(rng: np.random.Generator, count: int) -> list[tuple[str, float, float]]:
    half = METRO_MILES / 2
    centers = rng.uniform(-half * 0.8, half * 0.8, size=(8, 2))
    cluster_of = rng.integers(0, 8, size=count)
    places = []
    for n in range(count):
        north, east = centers[cluster_of[n]] + rng.normal(0, 5.0, size=2)
        lat = METRO_CENTER[0] + float(np.clip(north, -half, half)) / MILES_PER_DEGREE_LAT
        lon = METRO_CENTER[1] + float(np.clip(east, -half, half)) / (
            MILES_PER_DEGREE_LAT * math.cos(math.radians(METRO_CENTER[0]))
        )
        places.append((str(uuid.uuid4()), lat, lon))
    return places


def load_resources(
    conn: psycopg.Connection[Any],
    rng: np.random.Generator,
    org: str,
    places: list[tuple[str, float, float]],
) -> dict[str, list[str]]:
    rooms: dict[str, list[str]] = {}
    lines = []
    for location, _, _ in places:
        rooms[location] = []
        for k in range(int(rng.integers(4, 9))):
            room = str(uuid.uuid4())
            rooms[location].append(room)
            lines.append(f"{room}\t{org}\t{location}\tExam {k}\tROOM\texam_room\n")
        for k in range(int(rng.integers(0, 3))):
            lines.append(
                f"{uuid.uuid4()}\t{org}\t{location}\tUltrasound {k}\tEQUIPMENT\tultrasound\n"
            )
    copy_rows(
        conn,
        "availability.resources (id, organization_id, location_id, display_name, category, kind)",
        iter(lines),
    )
    return rooms


def load_visit_types(conn: psycopg.Connection[Any], org: str) -> list[str]:
    ids = []
    for name, duration, needs in (
        ("Follow-up", 1, ()),
        ("Consultation", 2, (("exam_room", 1),)),
        ("New patient visit", 4, (("exam_room", 1),)),
        ("Echo", 2, (("ultrasound", 1),)),
    ):
        visit_type = str(uuid.uuid4())
        ids.append(visit_type)
        conn.execute(
            "INSERT INTO availability.visit_types (id, organization_id, display_name, specialty,"
            " duration_granules) VALUES (%s, %s, %s, 'any', %s)",
            (visit_type, org, name, duration),
        )
        for kind, count in needs:
            conn.execute(
                "INSERT INTO availability.visit_type_resource_needs (organization_id,"
                " visit_type_id, kind, category, count) VALUES (%s, %s, %s, 'ROOM', %s)",
                (org, visit_type, kind, count),
            )
    return ids


def load_providers(
    conn: psycopg.Connection[Any],
    rng: np.random.Generator,
    org: str,
    rows: list[tuple[str, list[str], str]],
    plans: list[str],
    plan_shares: npt.NDArray[np.float64],
    visit_types: list[str],
) -> None:
    providers, links, accepted, templates, offered = [], [], [], [], []
    for n, (provider, places, specialty) in enumerate(rows):
        languages = (
            ["en"]
            + (["es"] if rng.random() < 0.3 else [])
            + (["zh"] if rng.random() < 0.05 else [])
        )
        providers.append(
            f"{provider}\t{org}\tDr. {n}\t{{{specialty}}}\t{{{','.join(languages)}}}"
            f"\t{'t' if rng.random() < 0.8 else 'f'}\n"
        )
        for plan in rng.choice(plans, size=int(rng.integers(5, 21)), replace=False, p=plan_shares):
            accepted.append(f"{org}\t{provider}\t{plan}\n")
        for location in places:
            links.append(f"{org}\t{provider}\t{location}\n")
            template = str(uuid.uuid4())
            templates.append(f"{template}\t{org}\t{provider}\t{location}\t2025-01-01\n")
            for visit_type in visit_types:
                offered.append(f"{org}\t{template}\t{visit_type}\n")
    copy_rows(
        conn,
        "availability.providers (id, organization_id, display_name, specialties, languages,"
        " accepting_new_patients)",
        iter(providers),
    )
    copy_rows(
        conn, "availability.provider_plans (organization_id, provider_id, plan_id)", iter(accepted)
    )
    copy_rows(
        conn,
        "availability.provider_locations (organization_id, provider_id, location_id)",
        iter(links),
    )
    copy_rows(
        conn,
        "availability.schedule_templates (id, organization_id, provider_id, location_id,"
        " effective_start_date)",
        iter(templates),
    )
    copy_rows(
        conn,
        "availability.template_visit_types (organization_id, template_id, visit_type_id)",
        iter(offered),
    )


def day_granules(days: int) -> tuple[list[str], list[str], npt.NDArray[np.bool_]]:
    """UTC start and end texts of the 24 daily granules (09-12 and 13-16 local) of `days`
    local days from today, and whether each is a morning granule."""
    zone = ZoneInfo(ZONE)
    today = datetime.now(zone).date()
    starts, ends, morning = [], [], []
    for offset in range(days):
        day = today + timedelta(days=offset)
        for first_hour, is_morning in ((9, True), (13, False)):
            local = datetime(day.year, day.month, day.day, first_hour, tzinfo=zone)
            for k in range(12):
                start = (local + GRANULE * k).astimezone(UTC)
                starts.append(start.isoformat())
                ends.append((start + GRANULE).isoformat())
                morning.append(is_morning)
    return starts, ends, np.asarray(morning)


def load_slots(
    conn: psycopg.Connection[Any],
    rng: np.random.Generator,
    org: str,
    providers: list[tuple[str, list[str], str]],
    days: int,
    rooms: dict[str, list[str]],
) -> int:
    starts, ends, morning = day_granules(days)
    per_provider = len(starts)
    busy: list[str] = []

    def lines() -> Iterator[str]:
        for provider, places, _ in providers:
            statuses = STATUSES[rng.choice(4, size=per_provider, p=STATUS_SHARES)]
            versions = np.where(statuses == "OPEN", 1, 2) + (rng.random(per_provider) < 0.1)
            home, afternoon = places[0], places[-1]
            for k in range(per_provider):
                location = home if morning[k] else afternoon
                yield (
                    f"{provider}\t{starts[k]}\t{ends[k]}\t{location}\t{org}"
                    f"\t{statuses[k]}\t{versions[k]}\n"
                )
                if statuses[k] == "BOOKED" and rng.random() < 0.1:
                    room = rooms[location][int(rng.integers(len(rooms[location])))]
                    busy.append(f"{room}\t{uuid.uuid4()}\t[{starts[k]},{ends[k]})\n")

    copy_rows(
        conn,
        "availability.slots (provider_id, start_time, end_time, location_id, organization_id,"
        " status, version)",
        lines(),
    )
    copy_rows(conn, "availability.resource_busy (resource_id, appointment_id, during)", iter(busy))
    return per_provider * len(providers)


# ---- the service process ---------------------------------------------------------------------


def service_env(
    database_url: str, nats_url: str, redis_url: str, port: int, processes: int = 1
) -> dict[str, str]:
    def key() -> str:
        return base64.b64encode(secrets.token_bytes(32)).decode()

    env = dict(os.environ)
    env.update(
        MEDSCHED_DATABASE_URL=database_url,
        MEDSCHED_NATS_URL=nats_url,
        MEDSCHED_REDIS_URL=redis_url,
        MEDSCHED_GRPC_LISTEN=f"127.0.0.1:{port}",
        MEDSCHED_ENCRYPTION_KEYS=f"k1:{key()}",
        MEDSCHED_ENCRYPTION_ACTIVE_KEY="k1",
        MEDSCHED_HASH_KEY=key(),
        MEDSCHED_PRINCIPAL_KEY=key(),
        MEDSCHED_LOG_LEVEL="INFO",
        MEDSCHED_AVAILABILITY_PROCESSES=str(processes),
    )
    return env


def process_tree(pid: int) -> list[int]:
    """`pid` and its child processes (the search workers when there are several)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(entry.name))
    return [pid, *sorted(children)]


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size in MB of the process serving searches: the largest
    worker's when there are several (each holds its own index)."""
    pids = process_tree(pid)
    serving = pids[1:] or pids
    sizes = []
    for member in serving:
        fields = {}
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            fields[name] = value.strip()
        sizes.append(
            (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)
        )
    return max(size[0] for size in sizes), max(size[1] for size in sizes)


def cpu_seconds(pid: int) -> float:
    """CPU seconds of the process and its children (the workers)."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            parts = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def wait_serving(address: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(address) as channel:
        check = channel.unary_unary(
            HEALTH_METHOD,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        while time.monotonic() < deadline:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"the service did not become SERVING within {timeout_s} s")


def wait_start_work(pid: int, timeout_s: float) -> float:
    """Seconds until the service is idle after start (its consumer and relay settled)."""
    started = time.monotonic()
    quiet = 0
    while time.monotonic() - started < timeout_s and quiet < 3:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        quiet = quiet + 1 if cpu_seconds(pid) - before < 0.05 else 0
    return time.monotonic() - started


def logged(log: Path, message: str) -> list[dict[str, Any]]:
    """The service's JSON log records with this message (one per worker process)."""
    records = []
    for line in log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("msg") == message:
                records.append(record)
    return records


def logged_build_seconds(log: Path) -> str:
    builds = logged(log, "availability index built")
    return ", ".join(str(record["extra"]["build_seconds"]) for record in builds) or "?"


def wait_logged_ready(log: Path, processes: int, timeout_s: float) -> None:
    """Until every search process has logged that it is ready (health answers from whichever
    process took the connection)."""
    deadline = time.monotonic() + timeout_s
    while len(logged(log, "service ready")) < processes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{processes} search processes were not ready in {timeout_s} s")
        time.sleep(0.2)


# ---- load generation (separate process) ------------------------------------------------------


def search_requests(data: Synthetic, count: int, seed: int) -> list[bytes]:
    """The brief's query: specialty + 10 miles + plan + 14 days, 20 results, soonest first."""
    rng = np.random.default_rng(seed)
    today = datetime.now(ZoneInfo(ZONE)).date()
    requests = []
    for _ in range(count):
        _, lat, lon = data.locations[int(rng.integers(len(data.locations)))]
        request = pb.SearchAvailabilityRequest(
            organization_id=data.organization,
            specialty=data.specialties[int(rng.choice(40, p=data.specialty_weights))],
            location=f"{lat + rng.normal(0, 0.05):.5f},{lon + rng.normal(0, 0.05):.5f}",
            radius="10mi",
            insurance=data.plans[int(rng.choice(50, p=data.plan_shares))],
            from_date=today.isoformat(),
            to_date=(today + timedelta(days=13)).isoformat(),
            limit=20,
        )
        requests.append(request.SerializeToString())
    return requests


def _identity(data: bytes) -> bytes:
    return data


@contextlib.asynccontextmanager
async def _raw_calls(
    address: str, method: str, count: int
) -> AsyncIterator[list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]]]:
    """`method` (bytes in, bytes out) over `count` channels, each on a connection of its
    own: with several search processes on the port, the kernel spreads connections (not
    calls) over them."""
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(count)
    ]
    try:
        yield [
            channel.unary_unary(
                method, request_serializer=_identity, response_deserializer=_identity
            )
            for channel in channels
        ]
    finally:
        for channel in channels:
            await channel.close(None)


async def _open_loop(
    address: str,
    method: str,
    payloads: Sequence[bytes],
    rate: float,
    seconds: float,
    connections: int = 1,
) -> dict[str, Any]:
    latencies: list[float] = []
    dues: list[float] = []
    errors = 0
    async with _raw_calls(address, method, connections) as calls:

        async def one(payload: bytes, due: float, n: int) -> None:
            nonlocal errors
            try:
                await calls[n % len(calls)](payload, timeout=5)
                latencies.append(time.perf_counter() - due)  # from when it was due: no omission
                dues.append(due - start)
            except grpc.aio.AioRpcError:
                errors += 1

        total = int(rate * seconds)
        start = time.perf_counter() + 0.1
        tasks = []
        for n in range(total):
            due = start + n / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(payloads[n % len(payloads)], due, n)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {"latencies": latencies, "dues": dues, "errors": errors, "elapsed": elapsed}


async def _closed_loop(
    address: str,
    method: str,
    payloads: Sequence[bytes],
    concurrency: int,
    seconds: float,
    connections: int = 1,
) -> dict[str, Any]:
    done = errors = 0
    async with _raw_calls(address, method, connections) as calls:
        stop = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal done, errors
            n = offset
            call = calls[offset % len(calls)]
            while time.perf_counter() < stop:
                try:
                    await call(payloads[n % len(payloads)], timeout=5)
                    done += 1
                except grpc.aio.AioRpcError:
                    errors += 1
                n += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"done": done, "errors": errors, "elapsed": elapsed}


def _load_process(kind: str, args: tuple[Any, ...], results: Any) -> None:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        coroutine = _open_loop(*args) if kind == "open" else _closed_loop(*args)
        cpu_before = time.process_time()
        outcome = runner.run(coroutine)
        outcome["cpu"] = time.process_time() - cpu_before
        results.put(outcome)


def start_load(kind: str, *args: Any) -> tuple[Any, Any]:
    context = mp.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=_load_process, args=(kind, args, results))
    process.start()
    return process, results


def finish_load(process: Any, results: Any) -> dict[str, Any]:
    outcome: dict[str, Any] = results.get(timeout=600)
    process.join(timeout=30)
    return outcome


def windows(outcome: dict[str, Any], seconds: float = 5.0) -> str:
    """p99 per window of `seconds` of the run: tells a stall from steady queueing."""
    by_window: dict[int, list[float]] = {}
    for due, latency in zip(outcome["dues"], outcome["latencies"], strict=True):
        by_window.setdefault(int(due // seconds), []).append(latency * 1000)
    return " ".join(f"{percentile(values, 0.99):.1f}" for _, values in sorted(by_window.items()))


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# ---- freshness -------------------------------------------------------------------------------


async def freshness_probe(
    url: str,
    address: str,
    data: Synthetic,
    rng: np.random.Generator,
    conn: psycopg.AsyncConnection[Any],
    poll_s: float = 0.005,
    outbox: str = BOOKING_OUTBOX,
) -> float:
    """Book an OPEN granule like booking does (rows + outbox event, one transaction), then
    search until it is gone; seconds from the commit's return to the first search without it.

    Each poll is a search on top of the offered load: polling every `poll_s` adds up to
    1 / `poll_s` searches a second while a probe waits, which near saturation is itself
    what delays the event being measured. 5 ms resolves the 50 ms target well enough."""
    row = await (
        await conn.execute(
            "SELECT provider_id, start_time, location_id FROM availability.slots"
            " WHERE organization_id = %s AND status = 'OPEN'"
            " AND start_time > now() + interval '1 day'"
            " OFFSET %s LIMIT 1",
            (data.organization, int(rng.integers(0, 100_000))),
        )
    ).fetchone()
    await conn.commit()
    assert row is not None
    provider, start, location = str(row[0]), row[1], str(row[2])
    appointment = uuid.uuid4()
    async with conn.transaction():
        cursor = await conn.execute(
            "UPDATE availability.slots SET status = 'BOOKED', version = version + 1,"
            " appointment_id = %s WHERE provider_id = %s AND start_time = %s AND status = 'OPEN'"
            " RETURNING end_time, version",
            (appointment, provider, start),
        )
        end, version = await cursor.fetchone()  # type: ignore[misc]
        envelope = envelope_pb2.EventEnvelope(
            event_id=str(uuid.uuid4()),
            event_type="slots.booked",
            aggregate_type="slots",
            aggregate_id=provider,
            organization_id=data.organization,
        )
        envelope.occurred_at.FromDatetime(datetime.now(UTC))
        granule = slot_events_pb2.Granule(version=version)
        granule.start_time.FromDatetime(start)
        granule.end_time.FromDatetime(end)
        envelope.slots_booked.CopyFrom(
            slot_events_pb2.SlotsBooked(
                provider_id=provider,
                location_id=location,
                appointment_id=str(appointment),
                granules=[granule],
            )
        )
        await add_event(
            conn,
            outbox,
            subject="medsched.slots.booked",
            event_type="slots.booked",
            aggregate_type="slots",
            aggregate_id=provider,
            payload=envelope.SerializeToString(),
            event_id=uuid.UUID(envelope.event_id),
        )
    committed = time.perf_counter()
    local_day = start.astimezone(ZoneInfo(ZONE)).date().isoformat()
    request = pb.SearchAvailabilityRequest(
        organization_id=data.organization,
        provider_ids=[provider],
        from_date=local_day,
        to_date=local_day,
        limit=100,
    )
    wanted = int(start.timestamp())
    async with grpc.aio.insecure_channel(address) as channel:
        search = channel.unary_unary(
            SEARCH_METHOD,
            request_serializer=pb.SearchAvailabilityRequest.SerializeToString,
            response_deserializer=pb.SearchAvailabilityResponse.FromString,
        )
        while True:
            reply = await search(request, timeout=5)
            if all(slot.start_time.seconds != wanted for slot in reply.slots):
                return time.perf_counter() - committed
            if time.perf_counter() - committed > 5:
                raise TimeoutError("a booked slot was still offered after 5 s")
            await asyncio.sleep(poll_s)


async def measure_freshness(
    url: str,
    address: str,
    data: Synthetic,
    probes: int,
    seed: int,
    poll_s: float = 0.005,
    outbox: str = BOOKING_OUTBOX,
) -> list[float]:
    rng = np.random.default_rng(seed)
    seconds = []
    async with await psycopg.AsyncConnection.connect(url) as conn:
        for _ in range(probes):
            seconds.append(await freshness_probe(url, address, data, rng, conn, poll_s, outbox))
            await asyncio.sleep(0.02)
    return seconds


# ---- main ------------------------------------------------------------------------------------


def summary(name: str, latencies: Sequence[float]) -> str:
    ms = [v * 1000 for v in latencies]
    return (
        f"{name}: n={len(ms)} p50={statistics.median(ms):.2f} ms p90={percentile(ms, 0.9):.2f} ms"
        f" p99={percentile(ms, 0.99):.2f} ms max={max(ms):.2f} ms"
    )


def run_rate(
    address: str,
    payloads: list[bytes],
    rate: float,
    seconds: float,
    pid: int,
    connections: int = 1,
) -> None:
    cpu_before = cpu_seconds(pid)
    process, results = start_load(
        "open", address, SEARCH_METHOD, payloads, rate, seconds, connections
    )
    outcome = finish_load(process, results)
    cpu = cpu_seconds(pid) - cpu_before
    achieved = len(outcome["latencies"]) / outcome["elapsed"]
    print(
        summary(f"search at {rate:.0f}/s offered for {seconds:.0f} s", outcome["latencies"])
        + f" errors={outcome['errors']}"
        + f" achieved={achieved:.0f}/s"
    )
    print(f"  p99 (ms) per 5 s window: {windows(outcome)}")
    # CPU per call is steadier than saturation rates when other jobs share the cores.
    print(
        f"  service CPU {cpu / outcome['elapsed'] * 100:.0f}% of one core,"
        f" {cpu / max(1, len(outcome['latencies'])) * 1e6:.0f} us per search"
    )


def closed_loop_rate(
    address: str,
    method: str,
    payloads: list[bytes],
    pid: int,
    concurrency: int,
    seconds: float,
    connections: int = 1,
) -> tuple[float, float, float]:
    """(calls per second, service CPU and load generator CPU, each as a fraction of one
    core) with `concurrency` in flight."""
    cpu_before = cpu_seconds(pid)
    process, results = start_load(
        "closed", address, method, payloads, concurrency, seconds, connections
    )
    outcome = finish_load(process, results)
    cpu = (cpu_seconds(pid) - cpu_before) / outcome["elapsed"]
    return outcome["done"] / outcome["elapsed"], cpu, outcome["cpu"] / outcome["elapsed"]


def run_saturation(
    address: str,
    payloads: list[bytes],
    pid: int,
    concurrency: int,
    seconds: float,
    connections: int = 1,
) -> None:
    search_rate, cpu, load_cpu = closed_loop_rate(
        address, SEARCH_METHOD, payloads, pid, concurrency, seconds, connections
    )
    print(
        f"search saturation: {search_rate:.0f}/s with {concurrency} in flight"
        f" (service CPU {cpu * 100:.0f}% of one core, {cpu / search_rate * 1e6:.0f} us per call;"
        f" load generator {load_cpu * 100:.0f}%, {load_cpu / search_rate * 1e6:.0f} us per call)"
    )
    health = [health_pb2.HealthCheckRequest().SerializeToString()]
    noop_rate, noop_cpu, noop_load_cpu = closed_loop_rate(
        address, HEALTH_METHOD, health, pid, concurrency, seconds, connections
    )
    print(
        f"no-op RPC (Health/Check) saturation: {noop_rate:.0f}/s"
        f" (service CPU {noop_cpu * 100:.0f}%, {noop_cpu / noop_rate * 1e6:.0f} us per call;"
        f" load generator {noop_load_cpu * 100:.0f}%);"
        f" search / no-op = {search_rate / noop_rate * 100:.0f}%"
    )


def connections_for(args: argparse.Namespace) -> int:
    """Connections the load generator opens: one per process is not enough for the kernel
    to spread them evenly, so four per process when there are several."""
    if args.connections:
        return int(args.connections)
    return 1 if args.processes == 1 else 4 * args.processes


@contextlib.contextmanager
def booking_relay(database_url: str, nats_url: str) -> Iterator[None]:
    """The booking schema's outbox relay in a process of its own, as booking_svc runs it;
    yields once the relay leads (holds the schema's relay lock)."""
    asyncio.run(migrate(database_url, BOOKING_OUTBOX, None))  # the shared outbox table only
    command = [sys.executable, "-m", "common.outbox", "relay", "--schema", BOOKING_OUTBOX]
    command += ["--database-url", database_url, "--nats-url", nats_url]
    relay = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lock = relay_lock_key(BOOKING_OUTBOX)
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            deadline = time.monotonic() + 30
            while True:
                # The lock is free until the relay leads; taking it for a moment only makes
                # the relay retry a little later.
                row = conn.execute(
                    "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (lock,)
                ).fetchone()
                if row is not None and not row[0]:
                    break
                conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (lock,))
                if time.monotonic() > deadline or relay.poll() is not None:
                    raise RuntimeError("the booking outbox relay did not start")
                time.sleep(0.2)
        yield
    finally:
        relay.terminate()
        out, err = relay.communicate(timeout=30)
        print(f"  booking outbox relay: {out.decode().strip()}")
        if relay.returncode != 0:
            print(err.decode(), file=sys.stderr)


def run_freshness(
    database_url: str,
    nats_url: str,
    address: str,
    data: Synthetic,
    payloads: list[bytes],
    args: argparse.Namespace,
) -> None:
    relay = (
        booking_relay(database_url, nats_url)
        if args.probe_outbox == BOOKING_OUTBOX
        else contextlib.nullcontext()
    )
    with relay:
        _measure_freshness_under_load(database_url, address, data, payloads, args)


def _measure_freshness_under_load(
    database_url: str,
    address: str,
    data: Synthetic,
    payloads: list[bytes],
    args: argparse.Namespace,
) -> None:
    rate = args.rate if args.freshness_rate is None else args.freshness_rate
    background = None
    if rate > 0:
        background = start_load(
            "open",
            address,
            SEARCH_METHOD,
            payloads,
            rate,
            args.probes * 0.06 + 10,
            connections_for(args),
        )
        time.sleep(2)
    fresh = asyncio.run(
        measure_freshness(
            database_url,
            address,
            data,
            args.probes,
            args.seed,
            args.probe_poll_ms / 1000,
            args.probe_outbox,
        )
    )
    print(
        summary(
            f"freshness commit -> gone from search ({args.probe_outbox} outbox),"
            f" under {rate:.0f}/s",
            fresh,
        )
    )
    if background is not None:
        outcome = finish_load(*background)
        print(summary("  background searches during the probes", outcome["latencies"]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--providers", type=int, default=5000)
    parser.add_argument("--locations", type=int, default=300)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--rate", type=float, default=833.0, help="offered searches/s (833)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the rate run (30)")
    parser.add_argument("--saturation-seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight (64)")
    parser.add_argument("--probes", type=int, default=200, help="freshness probes (200)")
    parser.add_argument(
        "--freshness-rate", type=float, help="searches/s offered during the probes (--rate)"
    )
    parser.add_argument(
        "--probe-poll-ms",
        type=float,
        default=5.0,
        help="how often a freshness probe searches for its slot (5; earlier runs used 2)",
    )
    parser.add_argument(
        "--probe-outbox",
        choices=(BOOKING_OUTBOX, "availability"),
        default=BOOKING_OUTBOX,
        help="whose outbox a probe's event goes through: booking (a booking's path, relayed"
        " by its own process) or availability (a block's path, relayed by the search process)",
    )
    parser.add_argument(
        "--phases",
        default="rate,saturation,freshness",
        help="which measurements to run after the start (rate,saturation,freshness)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="search processes sharing the port (MEDSCHED_AVAILABILITY_PROCESSES, 1)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        help="connections the load generator opens (1; 4 per process with several)",
    )
    parser.add_argument("--data-dir", help="keep the database here and reuse it next time")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    folder = (
        Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="medsched-bench-"))
    )
    marker = folder / "bench-data.json"
    infra = start_infra(folder / "infra", durable=False)
    service: subprocess.Popen[bytes] | None = None
    roll_forward_lock: psycopg.Connection[Any] | None = None
    try:
        if marker.exists():
            data = Synthetic(**json.loads(marker.read_text()))
            data = Synthetic(
                data.organization,
                [tuple(x) for x in data.locations],  # type: ignore[misc]
                data.specialties,
                np.asarray(data.specialty_weights),
                data.plans,
                np.asarray(data.plan_shares),
            )
            print(f"reusing the data in {folder}")
        else:
            print(
                f"loading {args.providers} providers x {args.days} days into {folder} ...",
                flush=True,
            )
            asyncio.run(migrate(infra.database_url, "availability", MIGRATIONS))
            data = load_synthetic(
                infra.database_url, args.providers, args.locations, args.days, args.seed
            )
            marker.write_text(
                json.dumps(
                    {
                        "organization": data.organization,
                        "locations": data.locations,
                        "specialties": data.specialties,
                        "specialty_weights": data.specialty_weights.tolist(),
                        "plans": data.plans,
                        "plan_shares": data.plan_shares.tolist(),
                    }
                )
            )
        # The service rolls its horizon forward at start; on this synthetic data (templates
        # without rules) that would block the generated slots in batches while we measure.
        # Holding the roll-forward's lock makes the service skip it, as it does when another
        # process is rolling forward.
        roll_forward_lock = psycopg.connect(infra.database_url, autocommit=True)
        roll_forward_lock.execute(
            "SELECT pg_advisory_lock(hashtextextended(%s, 0))", (ROLL_FORWARD_LOCK,)
        )
        port = free_port()
        address = f"127.0.0.1:{port}"
        log = folder / "availability.log"
        print(f"starting availability_svc on {address} (log: {log}) ...", flush=True)
        started = time.perf_counter()
        with log.open("wb") as log_file:
            service = subprocess.Popen(
                [sys.executable, "-m", "availability_svc.main"],
                env=service_env(
                    infra.database_url, infra.nats_url, infra.redis_url, port, args.processes
                ),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        asyncio.run(wait_serving(address, timeout_s=600))
        wait_logged_ready(log, args.processes, timeout_s=600)
        serving_s = time.perf_counter() - started
        rss, peak = rss_mb(service.pid)
        print(
            f"start: SERVING after {serving_s:.1f} s;"
            f" index build {logged_build_seconds(log)} s (logged)"
        )
        print(
            f"memory after build, per search process: RSS {rss:.0f} MB"
            f" (peak during build {peak:.0f} MB)"
        )

        waited = wait_start_work(service.pid, timeout_s=120)
        print(f"service idle {waited:.0f} s after SERVING")

        payloads = search_requests(data, 4000, args.seed)
        if "rate" in args.phases:
            run_rate(address, payloads, args.rate, args.seconds, service.pid, connections_for(args))
        if "saturation" in args.phases:
            run_saturation(
                address,
                payloads,
                service.pid,
                args.concurrency,
                args.saturation_seconds,
                connections_for(args),
            )
        if "freshness" in args.phases:
            run_freshness(infra.database_url, infra.nats_url, address, data, payloads, args)
        rss, peak = rss_mb(service.pid)
        print(f"memory at the end, per search process: RSS {rss:.0f} MB (peak {peak:.0f} MB)")
    finally:
        if service is not None:
            service.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.wait(timeout=30)
        if roll_forward_lock is not None:
            roll_forward_lock.close()
        infra.stop()


if __name__ == "__main__":
    main()
