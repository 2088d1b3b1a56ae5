"""Several processes of one service sharing its gRPC port (SO_REUSEPORT).

A Python gRPC server does its Python work on one core, however many the machine has. A
service that needs more (the availability search) runs as several complete processes on one
port: each has its own pool, consumers and in-memory state, so any of them can answer any
call, and the kernel spreads new connections over them. Connections, not calls: a client
that keeps one connection talks to one process for its life, so the spread comes from many
clients (or a client opening several channels).

`run_workers` is what a service's `main` calls when asked for more than one process. It
starts the copies with `MEDSCHED_GRPC_REUSE_PORT=true` on one port (a free one, reserved for
their lifetime, when the listen address asks for port 0), restarts any that die, and on
SIGTERM or SIGINT stops them all, each draining as a single process does, then returns.
Metrics: worker k serves on the metrics port plus k (or a free port when it is 0).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType

from common.settings import Settings
from common.telemetry import parse_listen_address

logger = logging.getLogger(__name__)

# A worker that dies sooner than this after its start counts as failing to start: the next
# restart waits twice as long as the last, up to the cap, instead of looping at full speed.
_HEALTHY_AFTER_S = 30.0
_FIRST_BACKOFF_S = 1.0
_MAX_BACKOFF_S = 30.0
_POLL_S = 0.2
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class _Worker:
    index: int
    env: dict[str, str]
    module: str
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff_s: float = _FIRST_BACKOFF_S
    restart_at: float | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module],
            env=self.env,
            # Signals are the supervisor's to give: a Ctrl-C at a terminal reaches it alone,
            # and it stops the workers once each.
            start_new_session=True,
            preexec_fn=_die_with_parent,  # safe here: the supervisor runs no other threads
        )
        self.started = time.monotonic()
        self.restart_at = None
        logger.info(
            "worker started", extra={"worker_id": self.index, "process_id": self.process.pid}
        )


def _die_with_parent() -> None:
    """In a new worker, before it runs: be sent SIGTERM when the supervisor dies, however
    it dies (Linux `PR_SET_PDEATHSIG`), so no worker outlives it holding the port."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reserve_port(host: str) -> socket.socket:
    """A socket bound (not listening) to a free port of `host` with SO_REUSEPORT.

    Held open while the workers run, so the port stays ours across their restarts; only
    listening sockets receive connections, so it takes none of them.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    reserved = socket.socket(family, socket.SOCK_STREAM)
    reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserved.bind((host, 0))
    return reserved


def worker_environments(
    settings: Settings,
    count: int,
    environ: Mapping[str, str],
    port: int,
    count_variable: str,
    per_worker: Callable[[int], Mapping[str, str]] | None = None,
) -> list[dict[str, str]]:
    """The environment of each worker: the parent's, on one shared port, as one process."""
    host, _ = parse_listen_address(settings.grpc_listen)
    metrics_host, metrics_port = (
        parse_listen_address(settings.metrics_listen) if settings.metrics_listen else ("", 0)
    )
    environments = []
    for index in range(count):
        env = dict(environ)
        env["MEDSCHED_GRPC_LISTEN"] = _host_port(host, port)
        env["MEDSCHED_GRPC_REUSE_PORT"] = "true"
        env[count_variable] = "1"
        if settings.metrics_listen:
            env["MEDSCHED_METRICS_LISTEN"] = _host_port(
                metrics_host, metrics_port + index if metrics_port else 0
            )
        if per_worker is not None:
            env.update(per_worker(index))
        environments.append(env)
    return environments


def run_workers(
    settings: Settings,
    module: str,
    count: int,
    *,
    count_variable: str,
    per_worker: Callable[[int], Mapping[str, str]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run `count` processes of `python -m module` on one port until SIGTERM/SIGINT.

    `count_variable` is the setting that asked for several processes (each worker gets 1);
    `per_worker(index)` adds variables for one worker (say, periodic jobs in worker 0 only).
    Returns the exit status for the supervisor: 0 after a requested stop.
    """
    host, port = parse_listen_address(settings.grpc_listen)
    reserved = _reserve_port(host) if port == 0 else None
    if reserved is not None:
        port = reserved.getsockname()[1]
    environments = worker_environments(
        settings,
        count,
        os.environ if environ is None else environ,
        port,
        count_variable,
        per_worker,
    )
    workers = [_Worker(index, env, module) for index, env in enumerate(environments)]
    stopping = False

    def request_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    logger.info(
        "starting worker processes",
        extra={"worker_count": count, "port": port, "service": settings.service},
    )
    try:
        for worker in workers:
            worker.start()
        while not stopping:
            _tend(workers)
            time.sleep(_POLL_S)
    finally:
        _stop_all(workers, grace_s=settings.shutdown_grace_s + 10)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if reserved is not None:
            reserved.close()
    logger.info("worker processes stopped", extra={"service": settings.service})
    return 0


def _tend(workers: list[_Worker]) -> None:
    """Restart workers that exited, with a growing delay for those that keep failing."""
    now = time.monotonic()
    for worker in workers:
        if worker.restart_at is not None:
            if now >= worker.restart_at:
                worker.start()
            continue
        process = worker.process
        if process is None or process.poll() is None:
            continue
        if now - worker.started >= _HEALTHY_AFTER_S:
            worker.backoff_s = _FIRST_BACKOFF_S
        logger.warning(
            "worker exited; restarting",
            extra={
                "worker_id": worker.index,
                "code": process.returncode,
                "restart_in_s": worker.backoff_s,
            },
        )
        worker.restart_at = now + worker.backoff_s
        worker.backoff_s = min(worker.backoff_s * 2, _MAX_BACKOFF_S)


def _stop_all(workers: list[_Worker], grace_s: float) -> None:
    """SIGTERM every running worker (each drains its calls), then SIGKILL what is left."""
    running = [w.process for w in workers if w.process is not None and w.process.poll() is None]
    for process in running:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in running:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("worker did not stop in time; killing it")
            process.kill()
            process.wait()
