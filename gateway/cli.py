"""`medsched token`: print a development bearer token for curl examples.

    medsched token --role patient --subject pat-17
    medsched token --role staff --subject nurse-3 --org org-1 --location loc-2

The token is signed by the development issuer whose key lives in `<data dir>/dev-issuer/`
(the same key `medsched up` gives the gateway), so it only works against a gateway running
in development mode on that data folder.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common.auth import Role
from gateway.dev_issuer import DevIssuerError, dev_issuer_folder, dev_principal, load_or_create

_DEFAULT_TTL_MINUTES = 720


def add_token_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `token` on the `medsched` command line (needs the global `--data-dir`)."""
    parser = subparsers.add_parser(
        "token",
        help="print a development bearer token (for curl against `medsched up`)",
        description="Mint a bearer token with the development issuer of the data folder.",
    )
    parser.add_argument(
        "--role", required=True, choices=[role.value for role in Role], help="principal role"
    )
    parser.add_argument("--subject", required=True, help="the token's subject (user id)")
    parser.add_argument("--patient-id", help="patient id for --role patient (default: the subject)")
    parser.add_argument(
        "--org",
        action="append",
        default=[],
        dest="organization_ids",
        metavar="ORG_ID",
        help="organization of a staff member (repeatable)",
    )
    parser.add_argument(
        "--location",
        action="append",
        default=[],
        dest="location_ids",
        metavar="LOCATION_ID",
        help="limit a staff member to this location (repeatable)",
    )
    parser.add_argument(
        "--ttl-minutes",
        type=int,
        default=_DEFAULT_TTL_MINUTES,
        help=f"lifetime in minutes (default {_DEFAULT_TTL_MINUTES})",
    )
    parser.set_defaults(func=_cmd_token)


def _cmd_token(args: argparse.Namespace) -> int:
    if args.ttl_minutes <= 0:
        raise SystemExit("--ttl-minutes must be positive")
    role = Role(args.role)
    if role is not Role.PATIENT and args.patient_id:
        raise SystemExit("--patient-id is only for --role patient")
    if role is not Role.STAFF and (args.organization_ids or args.location_ids):
        raise SystemExit("--org and --location are only for --role staff")
    try:
        issuer = load_or_create(dev_issuer_folder(Path(args.data_dir)))
    except DevIssuerError as e:
        raise SystemExit(str(e)) from e
    principal = dev_principal(
        role,
        args.subject,
        patient_id=args.patient_id,
        organization_ids=args.organization_ids,
        location_ids=args.location_ids,
    )
    print(
        issuer.mint(principal, now=datetime.now(UTC), ttl=timedelta(minutes=int(args.ttl_minutes)))
    )
    return 0
