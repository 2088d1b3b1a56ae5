"""`medsched seed` and `medsched materialize`: the synthetic health system and slot materialization.

    medsched seed [--providers N] [--seed S] [--organization NAME]
    medsched materialize [--organization ID] [--provider ID] [--from DATE] [--to DATE]
    medsched materialize --roll-forward

Both take `--database-url` (default: MEDSCHED_DATABASE_URL, else the database of
`medsched up`, as `medsched migrate` finds it) and apply the availability migrations first.
Each prints one JSON object with what it did.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Any

from availability_svc import store
from availability_svc.materializer import (
    EventContext,
    MaterializeStats,
    materialize_organization,
    roll_forward,
)
from availability_svc.seed import DEFAULT_ORGANIZATION, seed_organization
from common.db import Pool, open_pool
from common.migrations import migrate
from deploy.cli import _database_url  # the one rule operator commands find the database by

__all__ = ["add_availability_commands"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_CONTEXT = EventContext(actor_id="medsched-cli")


def add_availability_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Register `seed` and `materialize` on a `medsched`-style subparsers object."""
    seed = subparsers.add_parser(
        "seed", help="build a synthetic, reproducible health system and materialize its slots"
    )
    seed.add_argument("--providers", type=_positive, default=50, help="default: 50")
    seed.add_argument("--seed", type=int, default=7, help="random seed (default: 7)")
    seed.add_argument(
        "--organization",
        default=DEFAULT_ORGANIZATION,
        help=f"name (default: {DEFAULT_ORGANIZATION})",
    )
    seed.add_argument("--database-url", help="PostgreSQL URL (default: see medsched --help)")
    seed.set_defaults(func=_cmd_seed)

    materialize = subparsers.add_parser(
        "materialize",
        help="materialize templates, exceptions and overrides into slots (idempotent)",
    )
    materialize.add_argument("--organization", type=_uuid, help="only this organization")
    materialize.add_argument("--provider", type=_uuid, help="only this provider")
    materialize.add_argument("--from", dest="first", type=_iso_date, help="first local date")
    materialize.add_argument("--to", dest="last", type=_iso_date, help="last local date")
    materialize.add_argument(
        "--roll-forward",
        action="store_true",
        help="the daily job: extend every provider to the end of the horizon",
    )
    materialize.add_argument("--database-url", help="PostgreSQL URL (default: see medsched --help)")
    materialize.set_defaults(func=_cmd_materialize)


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _uuid(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError as e:
        raise argparse.ArgumentTypeError("expected an id (UUID)") from e


def _iso_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError("expected a date YYYY-MM-DD") from e


def _stats(stats: MaterializeStats) -> dict[str, Any]:
    document = asdict(stats)
    document["conflict_ids"] = list(stats.conflict_ids)
    document["resolved_conflict_ids"] = list(stats.resolved_conflict_ids)
    document["failures"] = [asdict(f) for f in stats.failures]
    return document


async def _with_pool(url: str) -> Pool:
    await migrate(url, "availability", MIGRATIONS)
    # Bulk work: no per-statement limit beyond the materializer's own.
    return await open_pool(url, min_size=1, max_size=4, name="medsched-cli", statement_timeout_ms=0)


def _cmd_seed(args: argparse.Namespace) -> int:
    async def run() -> dict[str, Any]:
        pool = await _with_pool(_database_url(args))
        try:
            summary = await seed_organization(
                pool, providers=args.providers, seed=args.seed, organization_name=args.organization
            )
        finally:
            await pool.close()
        document = asdict(summary)
        document["materialized"] = _stats(summary.materialized)
        return document

    print(json.dumps(asyncio.run(run()), indent=2, default=str))
    return 0


def _cmd_materialize(args: argparse.Namespace) -> int:
    if args.roll_forward and (args.provider or args.first or args.last or args.organization):
        print("--roll-forward takes no other selection", file=sys.stderr)
        return 2

    async def run() -> dict[str, Any]:
        pool = await _with_pool(_database_url(args))
        try:
            if args.roll_forward:
                results = await roll_forward(pool, context=_CONTEXT)
            else:
                results = await _materialize(pool, args)
        finally:
            await pool.close()
        return {org: _stats(stats) for org, stats in results.items()}

    document = asyncio.run(run())
    print(json.dumps(document, indent=2))
    failed = any(stats["failures"] for stats in document.values())
    return 1 if failed else 0


async def _materialize(pool: Pool, args: argparse.Namespace) -> dict[str, MaterializeStats]:
    async with pool.connection() as conn:
        if args.provider:
            organization = await store.organization_of_provider(conn, args.provider)
            if organization is None:
                raise SystemExit(f"no provider {args.provider}")
            organizations = [organization]
        elif args.organization:
            organizations = [args.organization]
        else:
            organizations = await store.list_organization_ids(conn)
    results: dict[str, MaterializeStats] = {}
    for organization_id in organizations:
        try:
            results[organization_id] = await materialize_organization(
                pool,
                organization_id,
                provider_ids=[args.provider] if args.provider else None,
                first=args.first,
                last=args.last,
                context=_CONTEXT,
            )
        except LookupError as e:
            raise SystemExit(str(e)) from e
    return results
