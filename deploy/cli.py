"""The `medsched` command line: run the stack, migrate, and operator tools.

Subcommands register themselves through small `add_*` functions so each package keeps its own
tooling (e.g. the X12 tools live in `eligibility_svc.x12.cli`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_DATA_DIR = Path(".medsched")


def _cmd_up(args: argparse.Namespace) -> int:
    from deploy.stack import run_up

    return run_up(Path(args.data_dir))


def _database_url(args: argparse.Namespace) -> str:
    """The database for operator commands: --database-url, the environment, or `up`'s."""
    if args.database_url:
        return str(args.database_url)
    from_env = os.environ.get("MEDSCHED_DATABASE_URL", "")
    if from_env:
        return from_env
    import json

    endpoints = Path(args.data_dir) / "endpoints.json"
    if endpoints.exists():
        return str(json.loads(endpoints.read_text())["database_url"])
    raise SystemExit(
        "no database: pass --database-url, set MEDSCHED_DATABASE_URL, or run `medsched up` first"
    )


def _cmd_migrate(args: argparse.Namespace) -> int:
    from common.migrations import migrate_all

    applied = asyncio.run(migrate_all(_database_url(args)))
    for schema, versions in applied.items():
        print(
            f"{schema}: {len(versions)} applied" + (f" ({', '.join(versions)})" if versions else "")
        )
    return 0


def _principal_key(args: argparse.Namespace) -> bytes:
    import base64
    import json

    raw = os.environ.get("MEDSCHED_PRINCIPAL_KEY", "")
    if not raw:
        secrets_file = Path(args.data_dir) / "secrets.json"
        if not secrets_file.exists():
            raise SystemExit("no principal key: set MEDSCHED_PRINCIPAL_KEY or run `medsched up`")
        raw = json.loads(secrets_file.read_text())["MEDSCHED_PRINCIPAL_KEY"]
    return base64.b64decode(raw)


def _cmd_principal(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from common.auth import Principal, PrincipalSigner, Role

    role = Role(args.role)
    principal = Principal(
        subject=args.subject,
        role=role,
        organization_ids=frozenset(args.organization or ()),
        location_ids=frozenset(args.location or ()),
        patient_id=args.subject if role is Role.PATIENT else None,
    )
    signer = PrincipalSigner(_principal_key(args))
    print(signer.sign(principal, now=datetime.now(UTC), ttl_s=args.ttl))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medsched", description="Medical appointment scheduling backend."
    )
    parser.add_argument(
        "--data-dir",
        default=str(DEFAULT_DATA_DIR),
        help="folder for the embedded servers' data, certificates and endpoints.json "
        "(default: .medsched)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start the whole system (embedded infrastructure by default)")
    up.set_defaults(func=_cmd_up)

    migrate = sub.add_parser("migrate", help="apply pending database migrations of every service")
    migrate.add_argument("--database-url", help="PostgreSQL URL (default: see --help text)")
    migrate.set_defaults(func=_cmd_migrate)

    principal = sub.add_parser(
        "principal",
        help="print signed x-medsched-principal metadata for calling services with grpcurl",
    )
    principal.add_argument(
        "--role", required=True, choices=["patient", "staff", "admin", "service"]
    )
    principal.add_argument("--subject", required=True, help="user, patient or service id")
    principal.add_argument("--organization", action="append", help="staff scope (repeatable)")
    principal.add_argument("--location", action="append", help="staff scope (repeatable)")
    principal.add_argument("--ttl", type=int, default=3600, help="validity in seconds")
    principal.set_defaults(func=_cmd_principal)

    _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Commands owned by service packages."""
    from availability_svc.cli import add_availability_commands
    from availability_svc.search_cli import add_search_commands
    from eligibility_svc.x12.cli import add_x12_commands
    from gateway.cli import add_token_command

    add_availability_commands(sub)
    add_search_commands(sub)
    add_x12_commands(sub)
    add_token_command(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
