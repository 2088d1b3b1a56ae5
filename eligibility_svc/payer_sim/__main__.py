"""Command line of the payer simulator: `python -m eligibility_svc.payer_sim --help`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from eligibility_svc.core_envelope import Credentials
from eligibility_svc.payer_sim.app import (
    DEV_CREDENTIALS,
    MIME_PATH,
    SOAP_PATH,
    PayerSimulator,
    SimulatorConfig,
    server_ssl_context,
)
from eligibility_svc.payer_sim.roster import Roster, builtin_roster, load_roster


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eligibility_svc.payer_sim",
        description="Simulated payer answering CAQH CORE real-time 270 inquiries with 271s.",
    )
    parser.add_argument("--listen", default="127.0.0.1:0", help="host:port (port 0: any free)")
    parser.add_argument("--tls-cert", required=True, type=Path, help="certificate chain (PEM)")
    parser.add_argument("--tls-key", required=True, type=Path, help="private key (PEM)")
    parser.add_argument("--username", default="medsched", help="expected CORE user name")
    parser.add_argument(
        "--password-file",
        type=Path,
        help="file holding the expected password (default: the development password)",
    )
    parser.add_argument("--roster", type=Path, help="JSON roster (default: built-in members)")
    parser.add_argument("--latency-mean-ms", type=float, default=1500.0)
    parser.add_argument("--latency-sigma", type=float, default=0.6, help="lognormal shape")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-fraction", type=float, default=0.0)
    parser.add_argument("--unavailable-fraction", type=float, default=0.0)
    parser.add_argument("--garbage-fraction", type=float, default=0.0)
    return parser


def config_from(args: argparse.Namespace) -> SimulatorConfig:
    password = (
        args.password_file.read_text(encoding="utf-8").strip()
        if args.password_file is not None
        else DEV_CREDENTIALS.password
    )
    members = load_roster(args.roster) if args.roster is not None else builtin_roster()
    return SimulatorConfig(
        credentials=Credentials(args.username, password),
        roster=Roster.of(members),
        latency_mean_s=args.latency_mean_ms / 1000.0,
        latency_sigma=args.latency_sigma,
        seed=args.seed,
        timeout_fraction=args.timeout_fraction,
        unavailable_fraction=args.unavailable_fraction,
        garbage_fraction=args.garbage_fraction,
    )


async def serve(args: argparse.Namespace) -> None:
    host, _, port = args.listen.rpartition(":")
    simulator = PayerSimulator(config_from(args))
    address = await simulator.start(
        host or "127.0.0.1", int(port), server_ssl_context(str(args.tls_cert), str(args.tls_key))
    )
    base = simulator.base_url
    line = {
        "event": "listening",
        "address": address,
        "soap_url": base + SOAP_PATH,
        "mime_url": base + MIME_PATH,
        "healthz_url": base + "/healthz",
    }
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await simulator.stop()


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if not args.listen.rpartition(":")[2].isdigit():
        _parser().error("--listen must be host:port")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
