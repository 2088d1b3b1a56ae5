"""The synthetic health system, the daily roll-forward and the `seed`/`materialize` commands."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from datetime import timedelta

import pytest

from availability_svc.cli import add_availability_commands
from availability_svc.materializer import roll_forward
from availability_svc.roll_forward import roll_forward_once
from availability_svc.seed import seed_organization
from common.db import Pool

from .conftest import NOW, outbox_count


async def test_seed_builds_a_realistic_organization_and_a_second_run_finds_it(pool: Pool) -> None:
    first = await seed_organization(pool, providers=40, seed=3, now=NOW)
    async with pool.connection() as conn:
        zones = await (
            await conn.execute("SELECT DISTINCT time_zone FROM availability.locations")
        ).fetchall()
        specialties = Counter(
            row[0]
            for row in await (
                await conn.execute("SELECT specialties[1] FROM availability.providers")
            ).fetchall()
        )
        multi_site = await (
            await conn.execute(
                "SELECT count(*) FROM (SELECT provider_id FROM availability.provider_locations"
                " GROUP BY provider_id HAVING count(*) > 1) AS m"
            )
        ).fetchone()
        durations = await (
            await conn.execute(
                "SELECT min(duration_granules), max(duration_granules)"
                " FROM availability.visit_types"
            )
        ).fetchone()
        needs_equipment = await (
            await conn.execute(
                "SELECT count(*) FROM availability.visit_type_resource_needs"
                " WHERE category = 'EQUIPMENT'"
            )
        ).fetchone()
        granules = await (
            await conn.execute(
                "SELECT count(*), count(DISTINCT provider_id) FROM availability.slots"
            )
        ).fetchone()
        events_after_first = await outbox_count(conn)
    second = await seed_organization(pool, providers=40, seed=3, now=NOW)
    async with pool.connection() as conn:
        events_after_second = await outbox_count(conn)

    assert (first.created, first.providers, first.locations) == (True, 40, 3)
    assert zones == [("America/New_York",)]
    assert specialties.most_common(1)[0][1] >= 5  # uneven: the biggest specialty dominates
    assert len(specialties) >= 5
    assert multi_site is not None
    assert multi_site[0] >= 3
    assert durations == (1, 4)
    assert needs_equipment is not None
    assert needs_equipment[0] > 0
    assert granules is not None
    assert granules[1] == 40
    assert first.materialized.opened == granules[0] > 40 * 40
    assert (second.created, second.organization_id) == (False, first.organization_id)
    assert (second.materialized.opened, second.materialized.events) == (0, 0)
    assert events_after_second == events_after_first


async def test_roll_forward_extends_every_provider_by_the_new_day_only(pool: Pool) -> None:
    seeded = await seed_organization(pool, providers=6, seed=1, now=NOW)
    tomorrow = NOW + timedelta(days=1)
    first = await roll_forward(pool, now=tomorrow)
    again = await roll_forward(pool, now=tomorrow)
    async with pool.connection() as conn:
        through = await (
            await conn.execute(
                "SELECT DISTINCT materialized_through FROM availability.materialization_state"
            )
        ).fetchall()

    # NOW is Friday 2026-02-20 in New York, so the horizon's new last day is Thursday 2026-05-21:
    # a working day for everyone.
    assert through == [((NOW + timedelta(days=90)).date(),)]
    assert first[seeded.organization_id].provider_count == 6
    assert 0 < first[seeded.organization_id].opened < seeded.materialized.opened / 40
    assert again[seeded.organization_id].opened == 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsched")
    parser.add_argument("--data-dir", default=".medsched-test-unused")
    add_availability_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def test_seed_and_materialize_commands_print_what_they_did(
    availability_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = _parser()
    seed_args = parser.parse_args(["seed", "--providers", "4", "--database-url", availability_db])
    assert seed_args.func(seed_args) == 0
    seeded = json.loads(capsys.readouterr().out)
    materialize_args = parser.parse_args(["materialize", "--database-url", availability_db])
    assert materialize_args.func(materialize_args) == 0
    rerun = json.loads(capsys.readouterr().out)

    assert seeded["providers"] == 4
    assert seeded["materialized"]["opened"] > 0
    assert rerun == {
        seeded["organization_id"]: {
            "provider_count": 4,
            "opened": 0,
            "blocked": 0,
            "unchanged": seeded["materialized"]["opened"],
            "conflict_ids": [],
            "resolved_conflict_ids": [],
            "events": 0,
            "failures": [],
        }
    }


def test_materialize_refuses_dates_that_are_not_dates(
    availability_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["materialize", "--from", "tomorrow"])
    assert "expected a date YYYY-MM-DD" in capsys.readouterr().err


async def test_service_roll_forward_runs_once_at_a_time(pool: Pool) -> None:
    seeded = await seed_organization(pool, providers=3, seed=2, now=NOW)
    tomorrow = NOW + timedelta(days=1)
    # Another process holds the roll-forward lock: this round is skipped, nothing changes.
    async with pool.connection() as holder:
        await holder.execute(
            "SELECT pg_advisory_lock(hashtextextended('medsched.availability.roll-forward', 0))"
        )
        skipped = await roll_forward_once(pool, now=lambda: tomorrow)
        await holder.execute(
            "SELECT pg_advisory_unlock(hashtextextended('medsched.availability.roll-forward', 0))"
        )
    ran = await roll_forward_once(pool, now=lambda: tomorrow)
    async with pool.connection() as conn:
        through = await (
            await conn.execute(
                "SELECT DISTINCT materialized_through FROM availability.materialization_state"
            )
        ).fetchall()
    assert skipped is None
    assert ran is not None
    assert ran[seeded.organization_id].provider_count == 3
    assert through == [((NOW + timedelta(days=90)).date(),)]
