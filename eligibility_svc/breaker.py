"""A circuit breaker per payer: stop calling a payer that keeps failing, probe it later.

    CLOSED --(failure_threshold consecutive failures)--> OPEN
    OPEN --(cooldown elapsed; the next call is the one probe)--> HALF_OPEN
    HALF_OPEN --(probe succeeds)--> CLOSED
    HALF_OPEN --(probe fails)--> OPEN (cooldown starts again)

While OPEN, and while a HALF_OPEN probe is in flight, calls are refused at once: a payer that
is down would otherwise cost every booking its whole wait, and a struggling payer would get
our full traffic the moment it came back. The clock is passed in, so tests need no sleeping.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from eligibility_svc.config import BreakerConfig

Clock = Callable[[], float]


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class Permit:
    """Leave to make one call; `probe` marks the single HALF_OPEN trial call."""

    probe: bool


class CircuitBreaker:
    """The breaker of one payer (not thread-safe: one event loop owns it)."""

    def __init__(self, config: BreakerConfig, clock: Clock = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        """The state as of now (an OPEN circuit whose cooldown ended reads HALF_OPEN)."""
        if self._state is BreakerState.OPEN and self._cooled_down():
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def retry_after_s(self) -> float:
        """Seconds until a probe may be made (0 when calls are allowed now)."""
        if self._state is not BreakerState.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._config.cooldown_s - self._clock())

    def acquire(self) -> Permit | None:
        """Leave for one call, or None when the circuit refuses it."""
        if self._state is BreakerState.CLOSED:
            return Permit(probe=False)
        if self._state is BreakerState.OPEN:
            if not self._cooled_down():
                return None
            self._state = BreakerState.HALF_OPEN
        if self._probe_in_flight:
            return None
        self._probe_in_flight = True
        return Permit(probe=True)

    def record_success(self, permit: Permit) -> None:
        if permit.probe:
            self._probe_in_flight = False
        self._state = BreakerState.CLOSED
        self._failures = 0

    def record_failure(self, permit: Permit) -> None:
        if permit.probe:
            self._probe_in_flight = False
            self._open()
            return
        self._failures += 1
        if self._state is BreakerState.CLOSED and self._failures >= self._config.failure_threshold:
            self._open()

    def release(self, permit: Permit) -> None:
        """Give a permit back without a verdict (the call was cancelled before an answer)."""
        if permit.probe:
            self._probe_in_flight = False

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()

    def _cooled_down(self) -> bool:
        return self._clock() - self._opened_at >= self._config.cooldown_s
