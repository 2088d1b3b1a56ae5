"""availability_svc as two search processes on one port (`MEDSCHED_AVAILABILITY_PROCESSES=2`).

The real service, started as `medsched up` starts it, on a seeded organization: both
processes build their index, serve searches, and follow the event stream, so a slot booked
in the database leaves search on every connection, whichever process it landed on. Each
process's own metrics endpoint shows that it served searches.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import psycopg
import pytest

from availability_svc.seed import seed_organization
from common.db import open_pool
from common.migrations import migrate_all
from common.outbox import add_event
from deploy.embedded import free_port, port_is_free
from medsched.availability.v1 import availability_service_pb2 as pb
from medsched.events.v1 import envelope_pb2, slot_events_pb2

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[4]
SEARCH = "/medsched.availability.v1.AvailabilityService/SearchAvailability"
CONNECTIONS = 12


def _two_free_ports() -> int:
    """A free port whose successor is free too (the second process's metrics)."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and port_is_free(port + 1):
            return port
    raise RuntimeError("no two consecutive free ports")


def _ready_count(log: Path) -> int:
    count = 0
    for line in log.read_text().splitlines():
        try:
            count += json.loads(line).get("msg") == "service ready"
        except ValueError:
            continue
    return count


async def _offered(address: str, request: pb.SearchAvailabilityRequest, start: int) -> list[bool]:
    """Whether `start` is offered, as seen over each of `CONNECTIONS` new connections."""
    seen = []
    for _ in range(CONNECTIONS):
        async with grpc.aio.insecure_channel(
            address, options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            search = channel.unary_unary(
                SEARCH,
                request_serializer=pb.SearchAvailabilityRequest.SerializeToString,
                response_deserializer=pb.SearchAvailabilityResponse.FromString,
            )
            reply = await search(request, timeout=5)
            seen.append(any(slot.start_time.seconds == start for slot in reply.slots))
    return seen


def _searches_served(metrics_address: str) -> float:
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as response:
        body = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("medsched_rpc_requests_total{") and "SearchAvailability" in line
    )


async def _seed(database_url: str) -> None:
    await migrate_all(database_url)
    pool = await open_pool(database_url, max_size=4, statement_timeout_ms=0)
    try:
        await seed_organization(pool, providers=12)
    finally:
        await pool.close()


async def _book_one(database_url: str) -> tuple[str, str, datetime]:
    """Book an open slot as booking does (rows and outbox event in one transaction)."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        row = await (
            await conn.execute(
                "SELECT organization_id, provider_id, location_id, start_time, end_time"
                " FROM availability.slots WHERE status = 'OPEN'"
                " AND start_time > now() + interval '2 days' ORDER BY start_time, provider_id"
                " LIMIT 1"
            )
        ).fetchone()
        assert row is not None
        organization, provider, location, start, end = (
            str(row[0]),
            str(row[1]),
            str(row[2]),
            row[3],
            row[4],
        )
        appointment = uuid.uuid4()
        async with conn.transaction():
            cursor = await conn.execute(
                "UPDATE availability.slots SET status = 'BOOKED', version = version + 1,"
                " appointment_id = %s WHERE provider_id = %s AND start_time = %s"
                " AND status = 'OPEN' RETURNING version",
                (appointment, provider, start),
            )
            booked = await cursor.fetchone()
            assert booked is not None
            envelope = envelope_pb2.EventEnvelope(
                event_id=str(uuid.uuid4()),
                event_type="slots.booked",
                aggregate_type="slots",
                aggregate_id=provider,
                organization_id=organization,
            )
            envelope.occurred_at.FromDatetime(datetime.now(UTC))
            granule = slot_events_pb2.Granule(version=booked[0])
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
                "availability",
                subject="medsched.slots.booked",
                event_type="slots.booked",
                aggregate_type="slots",
                aggregate_id=provider,
                payload=envelope.SerializeToString(),
                event_id=uuid.UUID(envelope.event_id),
            )
    return organization, provider, start


@pytest.fixture
def two_processes(
    database_url: str, nats_url: str, redis_url: str, tmp_path: Path
) -> Iterator[tuple[str, list[str], subprocess.Popen[bytes], Path]]:
    asyncio.run(_seed(database_url))
    port, metrics = free_port(), _two_free_ports()

    def key() -> str:
        return base64.b64encode(secrets.token_bytes(32)).decode()

    env: dict[str, Any] = dict(os.environ)
    env.update(
        MEDSCHED_DATABASE_URL=database_url,
        MEDSCHED_NATS_URL=nats_url,
        MEDSCHED_REDIS_URL=redis_url,
        MEDSCHED_GRPC_LISTEN=f"127.0.0.1:{port}",
        MEDSCHED_METRICS_LISTEN=f"127.0.0.1:{metrics}",
        MEDSCHED_ENCRYPTION_KEYS=f"k1:{key()}",
        MEDSCHED_ENCRYPTION_ACTIVE_KEY="k1",
        MEDSCHED_HASH_KEY=key(),
        MEDSCHED_PRINCIPAL_KEY=key(),
        MEDSCHED_AVAILABILITY_PROCESSES="2",
        MEDSCHED_AVAILABILITY_ROLL_FORWARD_INTERVAL_S="0",
        MEDSCHED_SHUTDOWN_GRACE_S="2",
    )
    log = tmp_path / "availability.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "availability_svc.main"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while _ready_count(log) < 2:
            assert process.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the two processes were not ready in 120 s"
            time.sleep(0.2)
        yield (
            f"127.0.0.1:{port}",
            [f"127.0.0.1:{metrics}", f"127.0.0.1:{metrics + 1}"],
            process,
            log,
        )
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_both_processes_serve_and_follow_the_event_stream(
    database_url: str,
    two_processes: tuple[str, list[str], subprocess.Popen[bytes], Path],
) -> None:
    address, metrics, process, log = two_processes
    organization, provider, start = asyncio.run(_peek_open_slot(database_url))
    request = pb.SearchAvailabilityRequest(
        organization_id=organization,
        provider_ids=[provider],
        from_date=(start - timedelta(days=1)).date().isoformat(),
        to_date=(start + timedelta(days=1)).date().isoformat(),
        limit=100,  # the earliest open slot after 2 days: few of its own come before it
    )
    wanted = int(start.timestamp())
    assert all(asyncio.run(_offered(address, request, wanted)))

    booked = asyncio.run(_book_one(database_url))
    assert booked == (organization, provider, start)

    deadline = time.monotonic() + 20
    seen = asyncio.run(_offered(address, request, wanted))
    while any(seen) and time.monotonic() < deadline:
        time.sleep(0.2)
        seen = asyncio.run(_offered(address, request, wanted))
    assert not any(seen), "a booked slot is still offered on some connection"
    # Each process served searches: the connections were spread over both.
    served = [_searches_served(m) for m in metrics]
    assert all(count > 0 for count in served), served

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0, log.read_text()[-2000:]


async def _peek_open_slot(database_url: str) -> tuple[str, str, datetime]:
    """The slot `_book_one` will book (the same query, without booking it)."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        row = await (
            await conn.execute(
                "SELECT organization_id, provider_id, start_time FROM availability.slots"
                " WHERE status = 'OPEN' AND start_time > now() + interval '2 days'"
                " ORDER BY start_time, provider_id LIMIT 1"
            )
        ).fetchone()
    assert row is not None
    return str(row[0]), str(row[1]), row[2]
