"""Unit tests for the sliding-window arithmetic of the rate limiter."""

from __future__ import annotations

import pytest

from gateway.ratelimit import RateLimit, retry_after_s

WINDOW_MS = 60_000


def test_full_current_window_waits_for_the_next_one_and_its_weight() -> None:
    # 3 of 3 used 10 s in: the next window opens in 50 s, where these 3 weigh
    # 3 * (1 - t/W); one more fits once that is <= 2, i.e. 20 s further.
    assert retry_after_s(3, 3, 0, 10_000, WINDOW_MS) == 70


def test_heavy_previous_window_waits_until_its_weight_decays() -> None:
    # 12 last window, 2 now, limit 10: 12 * (1 - t/W) + 3 <= 10 from t = 25 s.
    assert retry_after_s(10, 2, 12, 0, WINDOW_MS) == 25
    assert retry_after_s(10, 2, 12, 20_000, WINDOW_MS) == 5


def test_retry_after_is_at_least_one_second() -> None:
    assert retry_after_s(10, 2, 12, 24_900, WINDOW_MS) == 1


@pytest.mark.parametrize(("requests", "window_s"), [(-1, 60.0), (10, 0.0)])
def test_rate_limit_refuses_nonsense(requests: int, window_s: float) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        RateLimit(requests, window_s)
