"""Several processes of a service on one port (`common.workers`), as real processes.

The supervisor (`pid_worker` with `MEDSCHED_TEST_PROCESSES=2`) starts two workers on one
free port; calls over separate connections reach both; a killed worker is replaced; SIGTERM
stops them all and the supervisor exits 0.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from common.settings import Settings
from common.workers import worker_environments
from deploy.embedded import free_port
from tests.integration.common.pid_worker import PID_METHOD

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[3]
# What the gateway's settings need; nothing here connects to Redis or checks principals.
GATEWAY_ENV = {
    "MEDSCHED_REDIS_URL": "redis://127.0.0.1:1/0",
    "MEDSCHED_PRINCIPAL_KEY": base64.b64encode(b"k" * 32).decode(),
}


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


async def _answering_pids(address: str, connections: int = 16) -> set[int]:
    """Process ids answering over `connections` separate connections (errors skipped)."""
    pids = set()
    for _ in range(connections):
        async with grpc.aio.insecure_channel(
            address, options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            call = channel.unary_unary(PID_METHOD, None, None)
            with contextlib.suppress(grpc.aio.AioRpcError):
                pids.add(int(await call(b"", timeout=2)))
    return pids


def _wait_for_workers(address: str, count: int, timeout_s: float) -> set[int]:
    """The pids answering once `count` distinct processes answer (or at the timeout)."""
    deadline = time.monotonic() + timeout_s
    seen: set[int] = set()
    while time.monotonic() < deadline:
        seen = asyncio.run(_answering_pids(address))
        if len(seen) >= count:
            return seen
        time.sleep(0.2)
    return seen


@pytest.fixture
def supervisor() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = dict(os.environ)
    env.update(GATEWAY_ENV)
    env.update(
        MEDSCHED_GRPC_LISTEN=f"127.0.0.1:{port}",
        MEDSCHED_TEST_PROCESSES="2",
        MEDSCHED_SHUTDOWN_GRACE_S="2",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.common.pid_worker"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process, f"127.0.0.1:{port}"
    finally:
        for child in _children(process.pid):
            os.kill(child, signal.SIGKILL)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def test_two_workers_share_the_port_and_both_answer(
    supervisor: tuple[subprocess.Popen[bytes], str],
) -> None:
    process, address = supervisor

    answering = _wait_for_workers(address, 2, timeout_s=30)

    assert len(answering) == 2
    assert answering == _children(process.pid)


def test_a_killed_worker_is_replaced(supervisor: tuple[subprocess.Popen[bytes], str]) -> None:
    process, address = supervisor
    first = _wait_for_workers(address, 2, timeout_s=30)
    assert len(first) == 2
    victim = min(first)

    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    answering: set[int] = set()
    while time.monotonic() < deadline:
        answering = asyncio.run(_answering_pids(address))
        if len(answering) == 2 and victim not in answering:
            break
        time.sleep(0.2)

    assert victim not in answering
    assert len(answering) == 2
    assert answering == _children(process.pid)


def test_sigterm_stops_every_worker_and_the_supervisor_exits_0(
    supervisor: tuple[subprocess.Popen[bytes], str],
) -> None:
    process, address = supervisor
    workers = _wait_for_workers(address, 2, timeout_s=30)
    assert len(workers) == 2

    process.send_signal(signal.SIGTERM)

    assert process.wait(timeout=30) == 0
    assert all(_gone(pid) for pid in workers)


def test_workers_do_not_outlive_a_killed_supervisor(
    supervisor: tuple[subprocess.Popen[bytes], str],
) -> None:
    process, address = supervisor
    workers = _wait_for_workers(address, 2, timeout_s=30)
    assert len(workers) == 2

    process.kill()  # SIGKILL: the supervisor cannot stop anything itself
    process.wait(timeout=10)

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(_gone(pid) for pid in workers):
        time.sleep(0.1)
    assert all(_gone(pid) for pid in workers)


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_worker_environments_share_one_port_and_number_metrics_ports() -> None:
    settings = Settings.from_env(
        "gateway",
        {
            **GATEWAY_ENV,
            "MEDSCHED_GRPC_LISTEN": "0.0.0.0:50051",
            "MEDSCHED_METRICS_LISTEN": "127.0.0.1:9100",
        },
    )

    envs = worker_environments(
        settings,
        3,
        {"KEEP": "1"},
        50051,
        "MEDSCHED_AVAILABILITY_PROCESSES",
        per_worker=lambda index: {"ONLY_FIRST": "1"} if index == 0 else {},
    )

    assert [e["MEDSCHED_GRPC_LISTEN"] for e in envs] == ["0.0.0.0:50051"] * 3
    assert [e["MEDSCHED_METRICS_LISTEN"] for e in envs] == [
        "127.0.0.1:9100",
        "127.0.0.1:9101",
        "127.0.0.1:9102",
    ]
    assert all(e["MEDSCHED_GRPC_REUSE_PORT"] == "true" for e in envs)
    assert all(e["MEDSCHED_AVAILABILITY_PROCESSES"] == "1" for e in envs)
    assert all(e["KEEP"] == "1" for e in envs)
    assert [e.get("ONLY_FIRST") for e in envs] == ["1", None, None]
