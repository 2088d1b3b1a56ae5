"""The per-payer circuit breaker's state machine, on a hand-driven clock."""

from __future__ import annotations

from eligibility_svc.breaker import BreakerState, CircuitBreaker
from eligibility_svc.config import BreakerConfig


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, threshold: int = 3, cooldown_s: float = 10.0) -> CircuitBreaker:
    return CircuitBreaker(BreakerConfig(failure_threshold=threshold, cooldown_s=cooldown_s), clock)


def state_of(subject: CircuitBreaker) -> BreakerState:
    # A call, so that type checkers do not narrow the property between transitions.
    return subject.state


def fail(subject: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        permit = subject.acquire()
        assert permit is not None
        subject.record_failure(permit)


def test_opens_after_consecutive_failures_only() -> None:
    clock = Clock()
    subject = breaker(clock)
    fail(subject, 2)
    permit = subject.acquire()
    assert permit is not None
    subject.record_success(permit)  # a success in between resets the count
    fail(subject, 2)
    assert state_of(subject) is BreakerState.CLOSED
    fail(subject, 1)
    assert state_of(subject) is BreakerState.OPEN
    assert subject.acquire() is None
    assert subject.retry_after_s() == 10.0


def test_half_open_lets_exactly_one_probe_through_after_the_cooldown() -> None:
    clock = Clock()
    subject = breaker(clock)
    fail(subject, 3)
    clock.now += 9.9
    assert subject.acquire() is None
    clock.now += 0.1
    assert state_of(subject) is BreakerState.HALF_OPEN
    probe = subject.acquire()
    assert probe is not None
    assert probe.probe
    assert subject.acquire() is None  # one probe at a time
    subject.record_success(probe)
    assert state_of(subject) is BreakerState.CLOSED
    assert subject.consecutive_failures == 0


def test_failed_probe_reopens_for_a_full_cooldown() -> None:
    clock = Clock()
    subject = breaker(clock)
    fail(subject, 3)
    clock.now += 10
    probe = subject.acquire()
    assert probe is not None
    subject.record_failure(probe)
    assert state_of(subject) is BreakerState.OPEN
    assert subject.retry_after_s() == 10.0
    clock.now += 10
    assert subject.acquire() is not None


def test_released_probe_frees_the_slot_without_a_verdict() -> None:
    clock = Clock()
    subject = breaker(clock)
    fail(subject, 3)
    clock.now += 10
    probe = subject.acquire()
    assert probe is not None
    subject.release(probe)
    assert state_of(subject) is BreakerState.HALF_OPEN
    assert subject.acquire() is not None
