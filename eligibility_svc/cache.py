"""Eligibility answers in Redis: the 24-hour cache and the cross-process single flight.

Keys are keyed hashes (`common.crypto.BlindIndex`), never ids in clear text:

    medsched:eligibility:v1:answer:<hex>   cached outcome of (patient, payer, member, service)
    medsched:eligibility:v1:lock:<hex>     who is asking the payer for (... , service date)
    medsched:eligibility:v1:result:<hex>   that exchange's outcome, for the other processes

Values are AES-GCM ciphertexts bound to their key (a value copied under another key fails to
decrypt), because outcomes carry PHI (plan and group names, payer messages).

Redis is an accelerator here, not the system of record: when it fails, a read is a miss, a
lock is taken as ours (we ask the payer ourselves) and a write is skipped, each logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.crypto import (
    BlindIndex,
    DecryptionError,
    FieldCipher,
    field_context,
    normalize_identifier,
)
from eligibility_svc.domain import CheckCommand, EncodedOutcome

logger = logging.getLogger(__name__)

PREFIX = "medsched:eligibility:v1"
_SEPARATOR = "\x1f"
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


@dataclass(frozen=True)
class CacheKeys:
    """The Redis keys of one question (hex digests only)."""

    answer: str
    lock: str
    result: str

    @property
    def flight(self) -> str:
        """In-process single-flight key: the same question as the lock."""
        return self.lock


class EligibilityCache:
    """Encrypted outcomes under blind-indexed keys, plus the exchange lock."""

    def __init__(
        self,
        redis: aioredis.Redis,
        cipher: FieldCipher,
        blind_index: BlindIndex,
        *,
        prefix: str = PREFIX,
    ) -> None:
        self._redis = redis
        self._cipher = cipher
        self._index = blind_index
        self._prefix = prefix
        self._release = redis.register_script(_RELEASE)

    def answer_key(self, command: CheckCommand) -> str:
        """Where `command`'s answer is cached: per (patient, payer, member id, service type),
        as the contract promises."""
        digest = self._index.digest(_question(command), purpose="eligibility.answer").hex()
        return f"{self._prefix}:answer:{digest}"

    def keys_for(self, command: CheckCommand, service_date: str, answer_key: str) -> CacheKeys:
        """The keys a cache miss needs: `answer_key` (from `answer_key()`) plus the exchange
        lock and result, which also depend on the date of service (a hit never digests it)."""
        exchange = self._index.digest(
            _question(command) + _SEPARATOR + service_date, purpose="eligibility.exchange"
        ).hex()
        return CacheKeys(
            answer=answer_key,
            lock=f"{self._prefix}:lock:{exchange}",
            result=f"{self._prefix}:result:{exchange}",
        )

    async def get(self, key: str) -> EncodedOutcome | None:
        """The cached answer under `key`, with the bytes it was encoded to."""
        try:
            sealed = await self._redis.get(key)
        except (RedisError, OSError) as e:
            logger.warning("eligibility cache read failed", extra={"error": type(e).__name__})
            return None
        return None if sealed is None else self._open(key, sealed)

    async def try_lock(self, keys: CacheKeys, token: str, ttl_s: float) -> bool:
        """Take the exchange lock; True also when Redis cannot be reached (see the module)."""
        try:
            taken = await self._redis.set(keys.lock, token, nx=True, px=int(ttl_s * 1000))
        except (RedisError, OSError) as e:
            logger.warning("eligibility lock failed", extra={"error": type(e).__name__})
            return True
        return bool(taken)

    async def peek(self, keys: CacheKeys) -> tuple[EncodedOutcome | None, bool]:
        """(the published outcome, whether the lock is still held), in one round trip."""
        try:
            sealed, holder = await self._redis.mget(keys.result, keys.lock)
        except (RedisError, OSError) as e:
            logger.warning("eligibility lock read failed", extra={"error": type(e).__name__})
            return None, False
        outcome = None if sealed is None else self._open(keys.result, sealed)
        return outcome, holder is not None

    async def publish(
        self,
        keys: CacheKeys,
        token: str,
        answer: EncodedOutcome,
        *,
        result_ttl_s: float,
        answer_ttl_s: float | None,
    ) -> None:
        """Share the outcome with waiting processes, cache it if `answer_ttl_s`, unlock."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(keys.result, self._seal(keys.result, answer), px=int(result_ttl_s * 1000))
                if answer_ttl_s is not None:
                    pipe.set(
                        keys.answer,
                        self._seal(keys.answer, answer),
                        px=max(1, int(answer_ttl_s * 1000)),
                    )
                await pipe.execute()
            await self._release(keys=[keys.lock], args=[token])
        except (RedisError, OSError) as e:
            logger.warning("eligibility cache publish failed", extra={"error": type(e).__name__})

    def _seal(self, key: str, answer: EncodedOutcome) -> bytes:
        return self._cipher.encrypt(answer.data, context=_context(key))

    def _open(self, key: str, sealed: bytes | str) -> EncodedOutcome | None:
        if isinstance(sealed, str):
            # Only a client configured with decode_responses returns text; ours never is.
            return None
        try:
            return EncodedOutcome.decode(self._cipher.decrypt(sealed, context=_context(key)))
        except (DecryptionError, ValueError) as e:
            # A value from a retired key or an older format: ask the payer instead.
            logger.warning("eligibility cache value unreadable", extra={"error": type(e).__name__})
            return None


def _question(command: CheckCommand) -> str:
    return _SEPARATOR.join(
        (
            command.patient_id,
            command.payer_id,
            normalize_identifier(command.member_id),
            command.service_type,
        )
    )


def _context(key: str) -> bytes:
    # Bound to the kind of key and its digest: an answer cannot pass for a result, nor one
    # patient's answer for another's.
    kind, digest = key.rsplit(":", 2)[-2:]
    return field_context(f"eligibility.cache.{kind}", digest)
