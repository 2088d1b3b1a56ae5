"""Per-principal rate limits in Redis: a sliding window over two fixed windows.

Signed-in callers are counted per principal (role and subject); anonymous callers of public
methods per client address (the TCP peer: a proxy in front of the gateway must be counted
as one client, since a forwarded-for header is whatever the client wrote). Both share the
one limit.

For a limit of N requests per window W, a request at time t is allowed when

    previous_count * (1 - elapsed / W) + current_count + 1 <= N

where `current_count` counts allowed requests in the window holding t, `previous_count`
those of the window before, and `elapsed` is how far t is into its window. This smooths the
burst a plain fixed window allows at its edges, with two small counters per principal.
The check and the increment run in one Lua script (atomic across gateway replicas) and use
Redis's own clock, so replicas with drifting clocks still share one window. Refused requests
are not counted: a client that waits for `Retry-After` gets in.

If Redis does not answer within its short timeout the request is allowed and a warning is
logged (at most once a minute): the limit protects capacity, and refusing every request
because the limiter is down would turn a Redis outage into a full outage. After a failure
the limiter leaves Redis alone for `pause_s`, so an unreachable Redis does not add its
timeout to every request; `limiter_client` makes a client that fails fast (no retries).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from common.auth import Principal

logger = logging.getLogger(__name__)

KEY_PREFIX = "medsched:gateway:rate"
_WARN_EVERY_S = 60.0
# Redis answers in well under a millisecond; a limiter that waits longer protects nothing.
_REDIS_TIMEOUT_S = 0.25

# KEYS: none (derived from ARGV so the window index comes from Redis's clock).
# ARGV: key prefix, limit, window in ms. Returns {allowed, current, previous, elapsed_ms}.
_SCRIPT = """
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local index = math.floor(now_ms / window)
local elapsed = now_ms - index * window
local current_key = ARGV[1] .. ':' .. index
local previous_key = ARGV[1] .. ':' .. (index - 1)
local current = tonumber(redis.call('GET', current_key) or '0')
local previous = tonumber(redis.call('GET', previous_key) or '0')
local weighted = previous * (window - elapsed) / window + current
if weighted + 1 > limit then
  return {0, current, previous, elapsed}
end
current = redis.call('INCR', current_key)
if current == 1 then
  redis.call('PEXPIRE', current_key, window * 2)
end
return {1, current, previous, elapsed}
"""


@dataclass(frozen=True)
class RateDecision:
    """Whether a request may go ahead, and if not, in how many seconds to retry."""

    allowed: bool
    retry_after_s: int = 0


@dataclass(frozen=True)
class RateLimit:
    """N requests per window; `requests` 0 disables limiting."""

    requests: int
    window_s: float = 60.0

    def __post_init__(self) -> None:
        if self.requests < 0 or self.window_s <= 0:
            raise ValueError("a rate limit needs requests >= 0 and a positive window")


class RateLimiter:
    """Checks and counts requests per principal in Redis."""

    def __init__(
        self,
        client: redis_asyncio.Redis,
        limit: RateLimit,
        *,
        pause_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._limit = limit
        self._script: Any = client.register_script(_SCRIPT)
        self._pause_s = pause_s
        self._clock = clock
        self._paused_until = -math.inf
        self._last_warning = -math.inf

    async def check(self, principal: Principal) -> RateDecision:
        """Count a request of a signed-in caller."""
        return await self._check(_key_prefix(f"{principal.role.value}:{principal.subject}"))

    async def check_anonymous(self, client_address: str) -> RateDecision:
        """Count an anonymous request from `client_address` (an IP address)."""
        return await self._check(_key_prefix(f"anonymous:{client_address}"))

    async def _check(self, key_prefix: str) -> RateDecision:
        if self._limit.requests == 0 or self._clock() < self._paused_until:
            return RateDecision(allowed=True)
        window_ms = round(self._limit.window_s * 1000)
        try:
            allowed, current, previous, elapsed = await self._script(
                args=[key_prefix, self._limit.requests, window_ms]
            )
        except (RedisError, OSError, TimeoutError) as e:
            self._paused_until = self._clock() + self._pause_s
            self._warn(e)
            return RateDecision(allowed=True)
        if allowed:
            return RateDecision(allowed=True)
        return RateDecision(
            allowed=False,
            retry_after_s=retry_after_s(
                self._limit.requests, int(current), int(previous), int(elapsed), window_ms
            ),
        )

    def _warn(self, error: Exception) -> None:
        now = self._clock()
        if now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning = now
            logger.warning(
                "rate limiter unavailable; allowing requests",
                extra={"error_type": type(error).__name__},
            )


def limiter_client(url: str, *, timeout_s: float = _REDIS_TIMEOUT_S) -> redis_asyncio.Redis:
    """A Redis client for the limiter: short timeouts and no retries (see module docstring)."""
    return redis_asyncio.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )


def _key_prefix(identity: str) -> str:
    # Hashed so arbitrary identity-provider subjects give bounded, uniform keys; the role
    # prefix ("patient:", "anonymous:", ...) keeps the key spaces apart.
    digest = hashlib.sha256(identity.encode()).hexdigest()
    return f"{KEY_PREFIX}:{digest[:32]}"


def retry_after_s(limit: int, current: int, previous: int, elapsed_ms: int, window_ms: int) -> int:
    """Seconds until `previous * (1 - t/W) + current + 1 <= limit` holds again."""
    remaining_ms = window_ms - elapsed_ms
    if current + 1 > limit or previous == 0:
        # Only the next window helps; then this window's count becomes the previous one.
        wait_ms = remaining_ms + _wait_into_next_window(limit, current, window_ms)
    else:
        # The previous window's weight shrinks as t grows: solve for t.
        needed_fraction = (limit - current - 1) / previous
        wait_ms = max(0.0, (1 - needed_fraction) * window_ms - elapsed_ms)
    return max(1, math.ceil(wait_ms / 1000))


def _wait_into_next_window(limit: int, count: int, window_ms: int) -> float:
    if count == 0 or count + 1 <= limit:
        return 0.0
    needed_fraction = (limit - 1) / count
    return max(0.0, (1 - needed_fraction) * window_ms)
