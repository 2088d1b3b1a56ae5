"""The test infrastructure itself: every server the suite relies on is real and usable."""

from __future__ import annotations

import nats
import psycopg
import redis.asyncio as aioredis

from tests.conftest import Servers


def test_database_fixture_is_empty_and_supports_exclusion_constraints(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
        conn.execute(
            "CREATE TABLE r (resource int, during tstzrange,"
            " EXCLUDE USING gist (resource WITH =, during WITH &&))"
        )
        conn.execute("INSERT INTO r VALUES (1, '[2026-01-01 09:00Z, 2026-01-01 09:30Z)')")
        try:
            conn.execute("INSERT INTO r VALUES (1, '[2026-01-01 09:15Z, 2026-01-01 09:45Z)')")
        except psycopg.errors.ExclusionViolation:
            pass
        else:
            raise AssertionError("an overlapping reservation was accepted")


async def test_nats_has_jetstream(stack: Servers, unique: str) -> None:
    client = await nats.connect(stack.nats_url)
    try:
        js = client.jetstream()
        await js.add_stream(name=f"T{unique}", subjects=[f"t.{unique}.>"])
        ack = await js.publish(f"t.{unique}.x", b"1")
        assert ack.seq == 1
        await js.delete_stream(f"T{unique}")
    finally:
        await client.close()


async def test_redis_answers(stack: Servers, unique: str) -> None:
    client = aioredis.from_url(stack.redis_url)
    try:
        assert await client.set(f"t:{unique}", "v", nx=True, px=1000)
        assert not await client.set(f"t:{unique}", "w", nx=True, px=1000)
    finally:
        await client.aclose()
