"""Benchmark of whole-horizon slot materialization (not a test).

Seeds the synthetic organisation (`medsched seed` without materializing), then times
`materializer.materialize_organization` over the 90-day horizon: the first run (every granule
inserted, every event written), then a second identical run (nothing to change). Prints one
JSON object with the figures.

    .venv/bin/python bench/bench_materialize.py                    # 5,000 providers
    .venv/bin/python bench/bench_materialize.py --providers 500    # quick look

Without --database-url it starts an embedded PostgreSQL (durable, as `medsched up` runs it)
in a temporary folder and removes it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from availability_svc.materializer import EventContext, materialize_organization
from availability_svc.seed import seed_organization
from common.db import open_pool
from common.migrations import migrate
from deploy.embedded import start_infra

MIGRATIONS = Path(__file__).resolve().parents[1] / "availability_svc" / "migrations"


async def _count(url: str, query: str) -> int:
    pool = await open_pool(url, min_size=1, max_size=1, name="bench-count")
    try:
        async with pool.connection() as conn:
            cursor = await conn.execute(query)
            row = await cursor.fetchone()
            assert row is not None
            return int(row[0])
    finally:
        await pool.close()


async def _bench(
    url: str, providers: int, seed: int, batch_size: int, workers: int
) -> dict[str, object]:
    await migrate(url, "availability", MIGRATIONS)
    pool = await open_pool(url, min_size=workers, max_size=workers + 1, name="bench-materialize")
    now = datetime.now(UTC)
    try:
        started = time.perf_counter()
        summary = await seed_organization(
            pool, providers=providers, seed=seed, now=now, materialize=False
        )
        seeded_s = time.perf_counter() - started

        started = time.perf_counter()
        cpu_started = resource.getrusage(resource.RUSAGE_SELF)
        first = await materialize_organization(
            pool,
            summary.organization_id,
            now=now,
            context=EventContext(actor_id="bench"),
            batch_size=batch_size,
            workers=workers,
        )
        first_s = time.perf_counter() - started
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        first_cpu_s = cpu.ru_utime - cpu_started.ru_utime + cpu.ru_stime - cpu_started.ru_stime

        started = time.perf_counter()
        second = await materialize_organization(
            pool, summary.organization_id, now=now, batch_size=batch_size, workers=workers
        )
        second_s = time.perf_counter() - started
    finally:
        await pool.close()
    granules = await _count(url, "SELECT count(*) FROM availability.slots")
    events = await _count(url, "SELECT count(*) FROM availability.outbox")
    return {
        "providers": summary.providers,
        "locations": summary.locations,
        "templates": summary.templates,
        "seed_s": round(seeded_s, 1),
        "granules": granules,
        "first_run": {
            "seconds": round(first_s, 1),
            "opened": first.opened,
            "events": first.events,
            "granules_per_s": round(first.opened / first_s),
            "python_cpu_s": round(first_cpu_s, 1),
        },
        "second_run": {
            "seconds": round(second_s, 1),
            "opened": second.opened,
            "blocked": second.blocked,
            "unchanged": second.unchanged,
            "events": second.events,
        },
        "outbox_rows": events,
        "batch_size": batch_size,
        "workers": workers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--providers", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database-url", help="an empty database (default: embedded PostgreSQL)")
    args = parser.parse_args()
    if args.database_url:
        result = asyncio.run(
            _bench(args.database_url, args.providers, args.seed, args.batch_size, args.workers)
        )
    else:
        with tempfile.TemporaryDirectory(prefix="medsched-bench-") as folder:
            infra = start_infra(Path(folder), durable=True)
            try:
                result = asyncio.run(
                    _bench(
                        infra.database_url, args.providers, args.seed, args.batch_size, args.workers
                    )
                )
            finally:
                infra.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
