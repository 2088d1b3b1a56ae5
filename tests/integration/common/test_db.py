"""The PostgreSQL pool: session settings, transactions, statistics, failing fast."""

from __future__ import annotations

import time

import psycopg
import pytest

from common.db import check_schema_name, open_pool, pool_stats, transaction
from common.errors import DependencyUnavailable
from deploy.embedded import free_port


async def test_pooled_connections_use_utc_our_name_and_a_statement_timeout(
    database_url: str,
) -> None:
    pool = await open_pool(database_url, name="booking", statement_timeout_ms=1500)
    try:
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT current_setting('TimeZone'), current_setting('application_name'),"
                " current_setting('statement_timeout')"
            )
            settings = await cursor.fetchone()
            autocommit = conn.autocommit
            with pytest.raises(psycopg.errors.QueryCanceled):
                await conn.execute("SELECT pg_sleep(3)")
    finally:
        await pool.close()

    assert settings == ("UTC", "booking", "1500ms")
    assert autocommit is False


async def test_transaction_commits_on_success_and_rolls_back_on_error(database_url: str) -> None:
    pool = await open_pool(database_url)

    async def failing_booking() -> None:
        async with transaction(pool) as conn:
            await conn.execute("INSERT INTO visit VALUES (2)")
            raise RuntimeError("booking failed")

    try:
        async with transaction(pool) as conn:
            await conn.execute("CREATE TABLE visit (id int)")
            await conn.execute("INSERT INTO visit VALUES (1)")
        with pytest.raises(RuntimeError, match="booking failed"):
            await failing_booking()
        async with transaction(pool) as conn:
            cursor = await conn.execute("SELECT id FROM visit")
            rows = await cursor.fetchall()
    finally:
        await pool.close()

    assert rows == [(1,)]


async def test_pool_stats_report_connections_in_use(database_url: str) -> None:
    pool = await open_pool(database_url, min_size=2, max_size=4)
    try:
        async with pool.connection(), pool.connection():
            busy = pool_stats(pool)
        idle = pool_stats(pool)
    finally:
        await pool.close()

    assert (busy.in_use, busy.max_size) == (2, 4)
    assert busy.size >= 2
    assert idle.in_use == 0
    assert idle.waiting == 0


async def test_unreachable_database_fails_fast_with_dependency_unavailable() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/medsched"
    started = time.monotonic()

    with pytest.raises(DependencyUnavailable, match="pool 'booking' could not open"):
        await open_pool(url, name="booking", timeout_s=1.0)

    assert time.monotonic() - started < 5


def test_schema_names_are_restricted_to_safe_identifiers() -> None:
    assert check_schema_name("booking") == "booking"
    for bad in ("Booking", "1booking", "booking-svc", "book ing", "x" * 41, ""):
        with pytest.raises(ValueError, match="schema name"):
            check_schema_name(bad)
