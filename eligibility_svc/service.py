"""The eligibility use cases: check a patient's coverage within the caller's wait, read a check.

A check, in order:

1. authorize (patients only their own; staff of the organisation; admins and services);
2. the cache: a young enough answer is recorded as a CACHE check and returned;
3. otherwise a *flight*: one payer exchange per question (patient, payer, member id, service
   type, date). Identical checks in this process join the running flight; across processes
   a short Redis lock elects one exchanger and the others wait for its published outcome;
4. the caller waits for the flight until its wait ends (`max_wait`, or shortly before its
   gRPC deadline). Then it gets the answer, or PENDING with the check id while the flight
   goes on in the background (bounded by the payer timeout and `max_flights`);
5. when the flight ends, one transaction closes the exchange's audit row, writes the final
   state of every check that joined it and adds one `EligibilityVerified` event per check.

Every check's row is committed before the caller gets its answer, so any check id handed
out can be read back (`get`) at once and a crash right after answering loses no record.
A cache hit is not a payer exchange (nothing was sent to or received from a payer): it
writes no exchange row and no event, only its check row, which names the audited exchange
its answer came from. That row is one INSERT in autocommit: one round trip instead of
BEGIN, INSERT and COMMIT, with the same synchronous commit. A live check's row is written
(PENDING) while the payer is being asked, not after, so the id handed out with a PENDING
answer can always be read back.

The flight closes itself to new joiners *before* it waits for their rows and completes
them: no check can join after the completing UPDATE and stay PENDING forever. A process
that stops mid-flight leaves rows PENDING; `sweep()` (run periodically) closes them as
timed out, with their events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from psycopg.pq import TransactionStatus

from common.auth import Principal, Role, can_access_patient
from common.crypto import BlindIndex, FieldCipher
from common.db import Connection, Pool
from common.errors import (
    DependencyUnavailable,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    ResourceExhausted,
)
from eligibility_svc import store
from eligibility_svc.cache import CacheKeys, EligibilityCache
from eligibility_svc.config import EligibilityConfig
from eligibility_svc.core_client import ExchangeFailure, ExchangeResult
from eligibility_svc.domain import (
    CACHEABLE_STATUSES,
    Check,
    CheckCommand,
    CheckStatus,
    EncodedOutcome,
    ErrorKind,
    Outcome,
    Source,
    cached_answer_usable,
    decode_outcome,
    failed,
    wait_seconds,
)
from eligibility_svc.events import verified_event
from eligibility_svc.exchange import Inquiry, build_inquiry, outcome_of
from eligibility_svc.routing import PayerRoute, ProviderIdentity, RoutingTable

logger = logging.getLogger(__name__)

MEMBER_ID_PURPOSE = "eligibility.member_id"
# Extra time before a PENDING check counts as abandoned: beyond the payer timeout, the
# flight still writes its audit row and completes its checks.
_ABANDON_SLACK_S = 60.0
_SWEEP_BATCH = 500
# A lock outlives the exchange it guards by this much, then frees itself if we died.
_LOCK_SLACK_S = 5.0

_EXCHANGE_OUTCOMES = {
    None: "ANSWERED",
    ExchangeFailure.TIMEOUT: "TIMEOUT",
    ExchangeFailure.UNAVAILABLE: "UNAVAILABLE",
    ExchangeFailure.CIRCUIT_OPEN: "CIRCUIT_OPEN",
    ExchangeFailure.INVALID_RESPONSE: "INVALID_RESPONSE",
}


class PayerClient(Protocol):
    """What the service needs of `core_client.ClearinghouseClient`."""

    async def exchange(
        self, route: PayerRoute, x12_270: str, *, reference: str, deadline: float
    ) -> ExchangeResult: ...


@dataclass(frozen=True)
class CheckView:
    """A check with, for auditors, the X12 bodies of its exchange (PHI)."""

    check: Check
    x12_request: bytes = field(default=b"", repr=False)
    x12_response: bytes = field(default=b"", repr=False)


@dataclass
class _Flight:
    """One payer exchange and the checks waiting for it."""

    key: str
    done: asyncio.Future[Outcome]
    check_ids: list[str] = field(default_factory=list)
    inserts: list[asyncio.Task[None]] = field(default_factory=list)
    open: bool = True


def _utc_now() -> datetime:
    return datetime.now(UTC)


class EligibilityService:
    """Checks and reads; one instance per process (it owns the in-process flights)."""

    def __init__(
        self,
        *,
        pool: Pool,
        cache: EligibilityCache,
        cipher: FieldCipher,
        blind_index: BlindIndex,
        client: PayerClient,
        routes: RoutingTable,
        config: EligibilityConfig,
        clock: Callable[[], datetime] = _utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._cache = cache
        self._cipher = cipher
        self._index = blind_index
        self._client = client
        self._routes = routes
        self._config = config
        self._clock = clock
        self._monotonic = monotonic
        self._flights: dict[str, _Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._control_numbers = random.SystemRandom()
        self._closing = False

    # -- checking

    async def check(
        self, command: CheckCommand, principal: Principal, *, deadline: float | None
    ) -> Check:
        """Answer within the caller's wait; `deadline` is a `time.monotonic()` instant."""
        _authorize(principal, command.patient_id, command.organization_id)
        remaining = None if deadline is None else deadline - self._monotonic()
        answer_by = self._monotonic() + wait_seconds(
            max_wait_s=command.max_wait_s,
            deadline_in_s=remaining,
            default_wait_s=self._config.default_wait_s,
            margin_s=self._config.wait_margin_s,
        )
        now = self._clock()
        provider = self._routes.provider(command.organization_id)
        service_date = command.service_date or _today(provider, now)
        row = store.CheckRow(
            check_id=str(uuid.uuid4()),
            organization_id=command.organization_id,
            patient_id=command.patient_id,
            payer_id=command.payer_id,
            service_type=command.service_type,
            service_date=service_date,
            member_digest=self._index.digest(command.member_id, purpose=MEMBER_ID_PURPOSE),
            requested_by=principal.subject,
            requested_at=now,
            plan_id=command.plan_id,
            appointment_id=command.appointment_id,
        )
        answer_key = self._cache.answer_key(command)
        if command.max_cache_age_s is None or command.max_cache_age_s > 0:
            cached = await self._cache.get(answer_key)
            if cached is not None and cached_answer_usable(
                cached.outcome, now, command.max_cache_age_s, self._config.cache_ttl_s
            ):
                return await self._record_final(row, cached, Source.CACHE)
        route = self._routes.route(command.payer_id)
        if route is None:
            unknown = failed(
                ErrorKind.UNKNOWN_PAYER, "no route to this payer is configured", retryable=False
            )
            return await self._record_final(row, EncodedOutcome.of(unknown), None)
        if provider is None:
            raise FailedPrecondition(
                "the organisation has no provider identity in the eligibility routing table"
            )
        keys = self._cache.keys_for(command, service_date.isoformat(), answer_key)
        flight = self._join(keys, command, route, provider, service_date)
        return await self._wait(flight, row, answer_by)

    def _join(
        self,
        keys: CacheKeys,
        command: CheckCommand,
        route: PayerRoute,
        provider: ProviderIdentity,
        service_date: date,
    ) -> _Flight:
        flight = self._flights.get(keys.flight)
        if flight is not None and flight.open:
            return flight
        if self._closing:
            raise ResourceExhausted("the eligibility service is shutting down; retry elsewhere")
        if len(self._flights) >= self._config.max_flights:
            raise ResourceExhausted(
                "too many payer exchanges in flight; retry shortly",
            )
        exchange_id = str(uuid.uuid4())
        # Built before the flight starts so that a value X12 cannot carry fails this call.
        inquiry = build_inquiry(
            command,
            route=route,
            provider=provider,
            service_date=service_date,
            reference=uuid.UUID(exchange_id).hex,
            control_number=self._control_numbers.randrange(1, 1_000_000_000),
            now=self._clock(),
        )
        flight = _Flight(keys.flight, asyncio.get_running_loop().create_future())
        self._flights[keys.flight] = flight
        self._spawn(self._fly(flight, keys, route, inquiry, exchange_id, command.service_type))
        return flight

    async def _wait(self, flight: _Flight, row: store.CheckRow, answer_by: float) -> Check:
        insert = asyncio.create_task(self._insert_pending(row))
        flight.check_ids.append(row.check_id)
        flight.inserts.append(insert)
        outcome: Outcome | None = None
        with contextlib.suppress(TimeoutError):
            outcome = await asyncio.wait_for(
                asyncio.shield(flight.done), timeout=max(0.0, answer_by - self._monotonic())
            )
        # Shielded: a caller that goes away must not cancel the row others will complete.
        await asyncio.shield(insert)
        if outcome is None:
            return _check_of(row, CheckStatus.PENDING, None, None)
        return _check_of(row, outcome.status, Source.PAYER, outcome)

    async def _insert_pending(self, row: store.CheckRow) -> None:
        async with _single_statement(self._pool) as conn:
            await store.insert_pending(conn, row)

    async def _record_final(
        self, row: store.CheckRow, answer: EncodedOutcome, source: Source | None
    ) -> Check:
        completion = self._completion(row.check_id, answer, source)
        async with _single_statement(self._pool) as conn:
            await store.insert_completed(conn, row, completion)
        return _check_of(row, answer.outcome.status, source, answer.outcome)

    def _completion(
        self, check_id: str, answer: EncodedOutcome, source: Source | None
    ) -> store.Completion:
        """The final state of a check: `answer`'s bytes sealed to this check's row."""
        outcome = answer.outcome
        return store.Completion(
            check_id=check_id,
            status=outcome.status.value,
            source=None if source is None else source.value,
            completed_at=self._clock(),
            responded_at=outcome.responded_at,
            error_kind=None if outcome.error is None else outcome.error.kind.value,
            exchange_id=outcome.exchange_id,
            sealed_outcome=self._cipher.encrypt(
                answer.data, context=store.outcome_context(check_id)
            ),
        )

    # -- the flight

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fly(
        self,
        flight: _Flight,
        keys: CacheKeys,
        route: PayerRoute,
        inquiry: Inquiry,
        exchange_id: str,
        service_type: str,
    ) -> None:
        end: store.ExchangeEnd | None = None
        try:
            answer, end = await self._ask(keys, route, inquiry, exchange_id, service_type)
        except Exception as e:
            # A bug or a lost database: the checks still get a definite answer.
            logger.error(
                "eligibility flight failed",
                extra={"exchange_id": exchange_id, "error_type": type(e).__name__},
            )
            answer = EncodedOutcome.of(
                failed(
                    ErrorKind.PAYER_UNAVAILABLE,
                    "the exchange failed inside medsched; ask again",
                    retryable=True,
                )
            )
        # Closed to joiners before waiting for their rows: whoever joined so far is completed
        # below, whoever comes later starts a new flight (and will find the cache filled).
        flight.open = False
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]
        await asyncio.gather(*flight.inserts, return_exceptions=True)
        try:
            await self._complete(flight.check_ids, answer, exchange_id, end)
        except Exception as e:
            logger.error(
                "eligibility checks could not be completed; the sweeper will close them",
                extra={"exchange_id": exchange_id, "error_type": type(e).__name__},
            )
        if not flight.done.done():
            flight.done.set_result(answer.outcome)

    async def _ask(
        self,
        keys: CacheKeys,
        route: PayerRoute,
        inquiry: Inquiry,
        exchange_id: str,
        service_type: str,
    ) -> tuple[EncodedOutcome, store.ExchangeEnd | None]:
        payer_timeout = self._config.payer_timeout_s
        locked = await self._cache.try_lock(keys, exchange_id, payer_timeout + _LOCK_SLACK_S)
        if not locked:
            shared = await self._await_other_process(keys)
            if shared is not None:
                return shared, None
        started_at = self._clock()
        # Committed before the 270 leaves: every exchange sent is on record, even if we die.
        async with _single_statement(self._pool) as conn:
            await store.insert_exchange(
                conn,
                exchange_id=exchange_id,
                payer_id=route.payer_id,
                transport=route.transport.value,
                started_at=started_at,
                sealed_request=self._cipher.encrypt(
                    inquiry.x12, context=store.request_context(exchange_id)
                ),
            )
        result = await self._client.exchange(
            route,
            inquiry.x12,
            reference=inquiry.reference,
            deadline=self._monotonic() + payer_timeout,
        )
        received_at = self._clock()
        answer = EncodedOutcome.of(
            outcome_of(result, service_type, exchange_id=exchange_id, received_at=received_at)
        )
        cacheable = answer.outcome.status in CACHEABLE_STATUSES
        await self._cache.publish(
            keys,
            exchange_id,
            answer,
            result_ttl_s=self._config.flight_result_ttl_s,
            answer_ttl_s=self._config.cache_ttl_s if cacheable else None,
        )
        return answer, self._exchange_end(exchange_id, result, received_at)

    async def _await_other_process(self, keys: CacheKeys) -> EncodedOutcome | None:
        """The outcome another process's exchange publishes; None if it ends without one."""
        give_up = self._monotonic() + self._config.payer_timeout_s + _LOCK_SLACK_S
        while self._monotonic() < give_up:
            published, held = await self._cache.peek(keys)
            if published is not None:
                return published
            if not held:
                # The holder released without publishing (or crashed and its lock expired).
                return None
            await asyncio.sleep(self._config.lock_poll_s)
        return EncodedOutcome.of(
            failed(
                ErrorKind.PAYER_TIMEOUT,
                "another replica's exchange with the payer did not finish in time",
                retryable=True,
            )
        )

    def _exchange_end(
        self, exchange_id: str, result: ExchangeResult, received_at: datetime
    ) -> store.ExchangeEnd:
        payload = result.response_payload
        return store.ExchangeEnd(
            outcome=_EXCHANGE_OUTCOMES[result.failure],
            description=result.description[:400],
            payload_id=result.payload_id,
            attempts=result.attempts,
            http_status=result.http_status,
            core_error_code=result.core_error_code,
            elapsed_ms=round(result.elapsed_s * 1000, 3),
            finished_at=received_at,
            sealed_response=None
            if payload is None
            else self._cipher.encrypt(payload, context=store.response_context(exchange_id)),
        )

    async def _complete(
        self,
        check_ids: list[str],
        answer: EncodedOutcome,
        exchange_id: str,
        end: store.ExchangeEnd | None,
    ) -> None:
        completions = [self._completion(c, answer, Source.PAYER) for c in check_ids]
        outcome = answer.outcome
        async with self._pool.connection() as conn, conn.transaction():
            if end is not None:
                await store.finish_exchange(conn, exchange_id, end)
            completed = await store.complete_pending(conn, completions)
            await self._add_events(conn, completed, outcome.status, outcome.responded_at)

    async def _add_events(
        self,
        conn: Connection,
        completed: list[store.CompletedCheck],
        status: CheckStatus,
        responded_at: datetime | None,
    ) -> None:
        now = self._clock()
        for check in completed:
            event_id = uuid.uuid4()
            payload = verified_event(
                check, event_id=event_id, status=status, responded_at=responded_at, occurred_at=now
            )
            await store.add_verified_event(conn, check, event_id=event_id, payload=payload)

    # -- reading

    async def get(self, check_id: str, principal: Principal, *, full: bool) -> CheckView:
        """A past or pending check; `full` adds the X12 bodies (administrators only)."""
        try:
            uuid.UUID(check_id)
        except ValueError:
            raise InvalidArgument.single("check_id", "must be a check id (a UUID)") from None
        async with self._pool.connection() as conn:
            stored = await store.load_check(conn, check_id)
            # Someone else's check is reported as missing: its existence is not theirs to know.
            if stored is None or not can_access_patient(
                principal, stored.row.patient_id, organization_id=stored.row.organization_id
            ):
                raise NotFound(
                    "no such eligibility check",
                    reasons=[Reason(code="ELIGIBILITY_CHECK_NOT_FOUND", subject=check_id)],
                )
            if full and principal.role is not Role.ADMIN:
                raise PermissionDenied("the FULL view (X12 bodies) is for administrators")
            bodies = None
            if full and stored.exchange_id is not None:
                bodies = await store.load_exchange_bodies(conn, stored.exchange_id)
        outcome = None
        if stored.sealed_outcome is not None:
            outcome = decode_outcome(
                self._cipher.decrypt(stored.sealed_outcome, context=store.outcome_context(check_id))
            )
        check = _check_of(
            stored.row,
            CheckStatus(stored.status),
            None if stored.source is None else Source(stored.source),
            outcome,
        )
        if bodies is None or stored.exchange_id is None:
            return CheckView(check)
        request, response = bodies
        return CheckView(
            check,
            x12_request=self._cipher.decrypt(
                request, context=store.request_context(stored.exchange_id)
            ),
            x12_response=b""
            if response is None
            else self._cipher.decrypt(response, context=store.response_context(stored.exchange_id)),
        )

    # -- housekeeping

    async def sweep(self) -> int:
        """Close checks and exchanges left unfinished by a stopped process; return checks closed."""
        now = self._clock()
        cutoff = now - timedelta(seconds=self._config.payer_timeout_s + _ABANDON_SLACK_S)
        async with self._pool.connection() as conn:
            stale = await store.stale_pending(conn, cutoff, _SWEEP_BATCH)
            await store.abandon_exchanges(conn, cutoff, now)
        if not stale:
            return 0
        answer = EncodedOutcome.of(
            failed(
                ErrorKind.PAYER_TIMEOUT,
                "the process asking the payer stopped before an answer arrived",
                retryable=True,
            )
        )
        completions = [self._completion(c, answer, None) for c in stale]
        async with self._pool.connection() as conn, conn.transaction():
            completed = await store.complete_pending(conn, completions)
            await self._add_events(conn, completed, CheckStatus.ERROR, None)
        if completed:
            logger.warning("closed abandoned eligibility checks", extra={"count": len(completed)})
        return len(completed)

    async def close(self, grace_s: float) -> None:
        """Let running flights finish for up to `grace_s`, then cancel the rest."""
        self._closing = True
        tasks = set(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for flight in list(self._flights.values()):
            if not flight.done.done():
                flight.done.set_exception(
                    DependencyUnavailable("the eligibility service stopped; ask again")
                )
                # Waiters, if any, re-raise it; without waiters it must not be logged as lost.
                flight.done.exception()
        self._flights.clear()

    @property
    def flights_in_progress(self) -> int:
        return len(self._flights)


@contextlib.asynccontextmanager
async def _single_statement(pool: Pool) -> AsyncIterator[Connection]:
    """A pooled connection in autocommit, for one statement that is its own transaction.

    Pool connections run with autocommit off, where psycopg sends BEGIN, the statement and
    COMMIT as three round trips; in autocommit the statement commits in one, as durably.
    Autocommit is a client-side flag (setting it sends nothing). It is switched off again
    before the connection goes back to the pool, whose other users expect transactions.
    A connection that is not IDLE by then is closed (psycopg closes one whose cancelled
    query would not stop), and the pool replaces closed connections instead of lending them.
    """
    async with pool.connection() as conn:
        await conn.set_autocommit(True)
        try:
            yield conn
        finally:
            if conn.info.transaction_status == TransactionStatus.IDLE:
                await conn.set_autocommit(False)


def _authorize(principal: Principal, patient_id: str, organization_id: str) -> None:
    if not can_access_patient(principal, patient_id, organization_id=organization_id):
        raise PermissionDenied("not allowed to check this patient's eligibility")


def _today(provider: ProviderIdentity | None, now: datetime) -> date:
    zone = ZoneInfo(provider.time_zone if provider is not None else "UTC")
    return now.astimezone(zone).date()


def _check_of(
    row: store.CheckRow, status: CheckStatus, source: Source | None, outcome: Outcome | None
) -> Check:
    return Check(
        check_id=row.check_id,
        organization_id=row.organization_id,
        patient_id=row.patient_id,
        payer_id=row.payer_id,
        service_type=row.service_type,
        service_date=row.service_date,
        requested_at=row.requested_at,
        status=status,
        source=source,
        outcome=outcome,
        appointment_id=row.appointment_id,
        plan_id=row.plan_id,
    )
