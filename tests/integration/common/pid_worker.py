"""A small gRPC process for the tests of `common.workers` (run as `python -m`).

As a worker it serves `/medsched.test.Pid/Get`, answering with its process id, and health;
run with `MEDSCHED_TEST_PROCESSES` above 1 it is the supervisor of that many workers, as a
service's `main` is.
"""

from __future__ import annotations

import os
from typing import Any

import grpc
import grpc.aio

from common.grpc_server import Registration, create_server, run, serve
from common.log import configure_logging
from common.settings import Settings
from common.workers import run_workers

SERVICE = "medsched.test.Pid"
PID_METHOD = f"/{SERVICE}/Get"


async def _pid(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return str(os.getpid()).encode()


def _register(server: grpc.aio.Server) -> None:
    handler = grpc.unary_unary_rpc_method_handler(_pid)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Get": handler}),)
    )


async def _serve(settings: Settings) -> None:
    handle = await create_server(
        service_name=settings.service,
        listen=settings.grpc_listen,
        tls=None,
        servicers=[Registration(SERVICE, _register, frozenset({"Get"}))],
        principal_verifier=None,
        reuse_port=settings.grpc_reuse_port,
    )
    await handle.start()
    await handle.set_serving()
    await serve(handle, grace_s=settings.shutdown_grace_s)


def main() -> None:
    settings = Settings.from_env("gateway")
    configure_logging(settings.service, settings.log_level)
    processes = int(os.environ.get("MEDSCHED_TEST_PROCESSES", "1"))
    if processes > 1:
        raise SystemExit(
            run_workers(
                settings,
                "tests.integration.common.pid_worker",
                processes,
                count_variable="MEDSCHED_TEST_PROCESSES",
            )
        )
    run(_serve(settings))


if __name__ == "__main__":
    main()
