"""The daily roll-forward, run by the availability service itself.

`materializer.roll_forward` extends every provider's granules to the end of the horizon and is
idempotent: what is already materialized is skipped. So the service simply runs it at start
(catching up after any downtime) and then every `interval_s` (hourly by default, so a new
local day appears within the hour after midnight in every time zone). Several replicas may run
it; a PostgreSQL session advisory lock lets one at a time do the work and the others skip that
round, and the lock dies with its holder's connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from availability_svc.materializer import EventContext, MaterializeStats, roll_forward
from common.db import Pool

logger = logging.getLogger(__name__)

# The advisory lock one roll-forward at a time holds (hashtextextended of this text); a tool
# that must keep the service from rolling forward (a benchmark on synthetic data) holds it too.
ROLL_FORWARD_LOCK_KEY = "medsched.availability.roll-forward"
_CONTEXT = EventContext(actor_id="medsched-roll-forward")


async def roll_forward_once(
    pool: Pool, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> dict[str, MaterializeStats] | None:
    """Run one roll-forward if no other process is running one; None if skipped."""
    async with pool.connection() as lock_conn:
        cursor = await lock_conn.execute(
            "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (ROLL_FORWARD_LOCK_KEY,)
        )
        row = await cursor.fetchone()
        if row is None or not row[0]:
            return None
        try:
            results = await roll_forward(pool, now=now(), context=_CONTEXT)
        finally:
            await lock_conn.execute(
                "SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (ROLL_FORWARD_LOCK_KEY,)
            )
    opened = sum(stats.opened for stats in results.values())
    failures = sum(len(stats.failures) for stats in results.values())
    logger.info(
        "roll-forward done",
        extra={"organizations": len(results), "opened": opened, "failures": failures},
    )
    return results


async def roll_forward_forever(pool: Pool, interval_s: float) -> None:
    """Roll forward now and then every `interval_s`; a failed round is retried next time."""
    while True:
        try:
            await roll_forward_once(pool)
        except Exception as e:
            logger.warning("roll-forward failed", extra={"error_type": type(e).__name__})
        await asyncio.sleep(interval_s)
