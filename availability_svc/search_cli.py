"""`medsched verify-index`: check the search index against the PostgreSQL reference query.

Exit codes: 0 every page agreed, 1 at least one page differed (each is printed), 2 the
database could not be used.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from availability_svc.projection import IndexBackend, Projection, load_reference
from availability_svc.reference_sql import ReferenceSqlBackend
from availability_svc.verify import QueryDomain, VerifyReport, verify
from common import db
from common.errors import DependencyUnavailable

__all__ = ["add_search_commands"]

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_UNAVAILABLE = 2
_SHOWN_MISMATCHES = 10
_STATEMENT_TIMEOUT_MS = 120_000


def add_search_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `verify-index` on a `medsched`-style subparsers object."""
    command = subparsers.add_parser(
        "verify-index",
        help="compare the search index with the PostgreSQL reference query on random searches",
        description=(
            "Builds the availability index from a database snapshot, as the service does at "
            "start, runs random searches on it and on the reference query, and reports every "
            "page on which they differ (exit 1)."
        ),
    )
    command.add_argument(
        "--database-url",
        help="PostgreSQL URL (default: the one `medsched up` wrote to <data dir>/endpoints.json)",
    )
    command.add_argument("--searches", type=int, default=500, help="random searches (500)")
    command.add_argument("--pages", type=int, default=3, help="pages followed per search (3)")
    command.add_argument("--seed", type=int, default=1, help="random seed (1)")
    command.add_argument(
        "--organization", action="append", help="only this organization id (repeatable)"
    )
    command.set_defaults(func=_cmd_verify_index)


def _database_url(args: argparse.Namespace) -> str:
    if args.database_url:
        return str(args.database_url)
    endpoints = Path(args.data_dir) / "endpoints.json"
    if endpoints.exists():
        return str(json.loads(endpoints.read_text())["database_url"])
    raise SystemExit("no database: pass --database-url, or run `medsched up` first")


def _cmd_verify_index(args: argparse.Namespace) -> int:
    if args.searches < 1 or args.pages < 1:
        raise SystemExit("--searches and --pages must be at least 1")
    try:
        report = asyncio.run(
            _verify_index(
                _database_url(args),
                searches=args.searches,
                pages=args.pages,
                seed=args.seed,
                organizations=args.organization or (),
            )
        )
    except DependencyUnavailable as e:
        print(f"verify-index: {e.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    for mismatch in report.mismatches[:_SHOWN_MISMATCHES]:
        print(mismatch.describe())
    hidden = len(report.mismatches) - _SHOWN_MISMATCHES
    if hidden > 0:
        print(f"... and {hidden} more")
    print(
        f"verify-index: {report.searches} searches, {report.pages} pages, {report.offers} "
        f"results compared, {len(report.mismatches)} mismatches"
    )
    return EXIT_MISMATCH if report.mismatches else EXIT_OK


async def _verify_index(
    url: str, *, searches: int, pages: int, seed: int, organizations: tuple[str, ...]
) -> VerifyReport:
    # The snapshot and a wide reference search over a full-size schedule can take longer
    # than the services' default statement timeout.
    pool = await db.open_pool(
        url, max_size=2, name="medsched-verify-index", statement_timeout_ms=_STATEMENT_TIMEOUT_MS
    )
    try:
        started = time.perf_counter()
        projection = Projection(pool, None)
        build = await projection.build()
        print(
            f"index built in {time.perf_counter() - started:.1f} s: {build.granule_rows} "
            f"granule rows of {build.organizations} organizations",
            file=sys.stderr,
        )
        async with pool.connection() as conn:
            data = await load_reference(conn)
        now = datetime.now(UTC)
        chosen = organizations or tuple(k for k, o in data.organizations.items() if o.active)
        unknown = [k for k in chosen if k not in data.organizations]
        if unknown:
            raise SystemExit(f"unknown organization(s): {', '.join(unknown)}")
        if not chosen:
            raise SystemExit("the database has no active organization to search")
        domains = [QueryDomain.of(data, key, now) for key in chosen]
        return await verify(
            IndexBackend(projection),
            ReferenceSqlBackend(pool),
            domains,
            searches=searches,
            max_pages=pages,
            seed=seed,
            now_s=int(now.timestamp()),
        )
    finally:
        await pool.close()
