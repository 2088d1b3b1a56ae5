"""Tunables of the eligibility service, built once in `main.py` from explicit values."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# CAQH CORE real-time rules give a payer up to 20 seconds to answer a 270.
CORE_REAL_TIME_LIMIT_S = 20.0
DAY_S = 24 * 3600.0


@dataclass(frozen=True)
class BreakerConfig:
    """When a payer's circuit opens and how long it stays open before a probe."""

    failure_threshold: int = 5
    """Consecutive failed exchanges (timeouts, transport errors, 5xx, garbage) that open it."""
    cooldown_s: float = 30.0
    """Time the circuit stays open before one probe exchange is let through (half-open)."""

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("breaker failure_threshold must be at least 1")
        if self.cooldown_s <= 0:
            raise ValueError("breaker cooldown_s must be positive")


@dataclass(frozen=True)
class ClientConfig:
    """How the clearinghouse client talks to payers."""

    breaker: BreakerConfig = BreakerConfig()
    max_retries: int = 2
    """Extra attempts, only for failures where the payer never accepted the request."""
    retry_backoff_s: float = 0.05
    """First pause between attempts; doubled each time, with jitter, never past the deadline."""
    max_response_bytes: int = 1 << 20
    """Larger answers are refused: a real-time 271 is a few kilobytes."""
    max_connections: int = 100

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must not be negative")
        if self.retry_backoff_s < 0:
            raise ValueError("retry_backoff_s must not be negative")
        if self.max_response_bytes < 1024:
            raise ValueError("max_response_bytes must be at least 1024")


@dataclass(frozen=True)
class EligibilityConfig:
    """Everything the eligibility service needs beyond the common settings.

    `main.py` fills it from the settings `MEDSCHED_ELIGIBILITY_ROUTES` (routing table file),
    `MEDSCHED_ELIGIBILITY_CACHE_TTL_S`, `MEDSCHED_ELIGIBILITY_PAYER_TIMEOUT_S` and
    `MEDSCHED_ELIGIBILITY_MAX_FLIGHTS`; the rest keep their defaults.
    """

    routing_table_path: Path | None = None
    """JSON or TOML payer routing table; None: no payer is routed (every check is ERROR)."""
    cache_ttl_s: float = DAY_S
    payer_timeout_s: float = CORE_REAL_TIME_LIMIT_S
    """How long a payer exchange may run in the background after the caller stopped waiting."""
    default_wait_s: float = CORE_REAL_TIME_LIMIT_S
    """How long a caller with neither `max_wait` nor a deadline waits before PENDING."""
    wait_margin_s: float = 0.02
    """Kept back from the caller's gRPC deadline to write the check and answer in time."""
    max_flights: int = 512
    """Payer exchanges running at once in this process; beyond it checks are refused."""
    flight_result_ttl_s: float = 60.0
    """How long other processes can pick up a finished exchange's outcome (errors included)."""
    lock_poll_s: float = 0.025
    """How often a process waiting on another process's exchange looks for its outcome."""
    sweep_interval_s: float = 30.0
    """How often checks left PENDING by a stopped process are closed as timed out."""
    client: ClientConfig = ClientConfig()

    def __post_init__(self) -> None:
        for name in ("cache_ttl_s", "payer_timeout_s", "default_wait_s", "flight_result_ttl_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.wait_margin_s < 0:
            raise ValueError("wait_margin_s must not be negative")
        if self.max_flights < 1:
            raise ValueError("max_flights must be at least 1")
        if self.lock_poll_s <= 0 or self.sweep_interval_s <= 0:
            raise ValueError("lock_poll_s and sweep_interval_s must be positive")
