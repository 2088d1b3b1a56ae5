"""Holds in Redis: who holds which granules, until when.

A hold is a courtesy while a patient confirms, not the guarantee. Its record lives under
`medsched:hold:<id>` with a PX expiry, so Redis itself decides when it lapses; a sorted set
`medsched:holds:by-expiry` tells the sweeper which holds to release in PostgreSQL (granules
back to OPEN, `SlotsReleased` EXPIRED). The slot rows say HELD with the hold id, so search
hides the time; a booking treats a HELD granule whose Redis record is gone as free. Losing
Redis therefore loses only courtesy, never a booking.

The record holds ids and instants only: no PHI.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis

_KEY = "medsched:hold:"
_EXPIRY = "medsched:holds:by-expiry"


@dataclass(frozen=True)
class HoldRecord:
    hold_id: uuid.UUID
    organization_id: str
    patient_id: str
    provider_id: str
    location_id: str
    visit_type_id: str
    starts: tuple[int, ...]  # granule starts, unix seconds
    end: int
    expire_ms: int

    @property
    def expire_time(self) -> datetime:
        return datetime.fromtimestamp(self.expire_ms / 1000, UTC)

    def encode(self) -> str:
        return json.dumps(
            {
                "org": self.organization_id,
                "patient": self.patient_id,
                "provider": self.provider_id,
                "location": self.location_id,
                "visit_type": self.visit_type_id,
                "starts": list(self.starts),
                "end": self.end,
                "expire_ms": self.expire_ms,
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, hold_id: uuid.UUID, text: str | bytes) -> HoldRecord:
        data = json.loads(text)
        return cls(
            hold_id=hold_id,
            organization_id=data["org"],
            patient_id=data["patient"],
            provider_id=data["provider"],
            location_id=data["location"],
            visit_type_id=data["visit_type"],
            starts=tuple(int(s) for s in data["starts"]),
            end=int(data["end"]),
            expire_ms=int(data["expire_ms"]),
        )


class HoldStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def put(self, record: HoldRecord) -> None:
        """Store (or extend) a hold until its expiry."""
        ttl_ms = max(1, record.expire_ms - int(time.time() * 1000))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(_KEY + str(record.hold_id), record.encode(), px=ttl_ms)
            pipe.zadd(_EXPIRY, {str(record.hold_id): record.expire_ms})
            await pipe.execute()

    async def get(self, hold_id: uuid.UUID) -> HoldRecord | None:
        raw = await self._redis.get(_KEY + str(hold_id))
        return None if raw is None else HoldRecord.decode(hold_id, raw)

    async def get_many(self, hold_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, HoldRecord]:
        ids = list(dict.fromkeys(hold_ids))
        if not ids:
            return {}
        raws = await self._redis.mget([_KEY + str(h) for h in ids])
        return {h: HoldRecord.decode(h, raw) for h, raw in zip(ids, raws, strict=True) if raw}

    async def forget(self, hold_id: uuid.UUID) -> None:
        """Drop a hold's record (released, consumed by a booking, or swept)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(_KEY + str(hold_id))
            pipe.zrem(_EXPIRY, str(hold_id))
            await pipe.execute()

    async def due(self, now_ms: int, limit: int = 500) -> list[uuid.UUID]:
        """Holds whose expiry has passed, oldest first (their records have lapsed)."""
        members = await self._redis.zrangebyscore(_EXPIRY, "-inf", now_ms, start=0, num=limit)
        return [uuid.UUID(m.decode() if isinstance(m, bytes) else str(m)) for m in members]

    async def alive(self, hold_ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
        return set(await self.get_many(hold_ids))
