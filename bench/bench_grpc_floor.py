"""The floor of a Python gRPC call on this machine (not a test).

Starts a bare `grpc.aio` server on uvloop in its own process, with one method that returns
an empty message and nothing else (no call pipeline, no services, no index), and drives it
with the closed-loop load generator of `bench_search.py` (64 calls in flight, a separate
process on the same cores). What it reports is what any call costs before our code runs:
compare it with the Health/Check figure of `bench_search.py`, and with the about 6,200
calls/s `../shared/PERFORMANCE-NOTES.md` gives for the same thing on the machine the
targets were set on.

    .venv/bin/python -m bench.bench_grpc_floor            # 3 runs of 10 s
    .venv/bin/python -m bench.bench_grpc_floor --runs 5 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from typing import Any

import grpc
import grpc.aio

from bench.bench_search import HEALTH_METHOD, closed_loop_rate
from deploy.embedded import free_port


async def _empty(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return b""


async def _serve(port: int) -> None:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(_empty)
    service, _, method = HEALTH_METHOD.lstrip("/").partition("/")
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {method: handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def serve_forever(port: int) -> None:
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(port))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the server process
    args = parser.parse_args()
    if args.serve:
        serve_forever(args.serve)
        return

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_grpc_floor", "--serve", str(port)]
    )
    try:
        # An empty answer parses as a health response (status UNKNOWN): wait for any answer.
        asyncio.run(_wait_answering(f"127.0.0.1:{port}"))
        empty = [b""]
        for run in range(1, args.runs + 1):
            rate, cpu, load_cpu = closed_loop_rate(
                f"127.0.0.1:{port}",
                HEALTH_METHOD,
                empty,
                server.pid,
                args.concurrency,
                args.seconds,
            )
            print(
                f"run {run}: {rate:.0f} calls/s with {args.concurrency} in flight;"
                f" server CPU {cpu * 100:.0f}% of one core, {cpu / rate * 1e6:.0f} us per call;"
                f" load generator {load_cpu * 100:.0f}%",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(timeout=10)


async def _wait_answering(address: str) -> None:
    deadline = time.monotonic() + 30
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(HEALTH_METHOD, None, None)
        while time.monotonic() < deadline:
            try:
                await call(b"", timeout=1)
                return
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)
    raise TimeoutError("the bare server did not answer")


if __name__ == "__main__":
    main()
