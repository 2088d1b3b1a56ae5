"""Transactional outbox: events written in the producer's transaction, published by a relay.

A service never publishes to JetStream from a request. It calls `add_event` inside the
transaction that changes the aggregate, so the event exists if and only if the change
committed. `OutboxRelay` then publishes committed rows and marks them published. Its
guarantees, each explained where it is implemented:

- never loses an event (`OutboxRelay._publish_rows`: marked only after the stream's ack;
  a crash in between re-publishes with the same `Nats-Msg-Id`, which the stream drops);
- never reorders the events of one aggregate (`plan_chains`, `_send_chain`);
- never skips a row that commits late (`fetch_pending`: selection by "not yet published");
- one active relay per schema (`OutboxRelay._become_leader`); others stand by and take over.

Run it in-process (`OutboxRelay(...).run()`), or alone:
`python -m common.outbox relay --schema booking --database-url ... --nats-url ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from nats.js import JetStreamContext
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from psycopg import sql
from psycopg.types.json import Jsonb

from common import bus
from common.db import Connection, check_schema_name, connect
from common.errors import DependencyUnavailable

logger = logging.getLogger(__name__)

NOTIFY_CHANNEL_PREFIX = "medsched_outbox_"


def notify_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel the outbox trigger of `schema` notifies on commit."""
    return NOTIFY_CHANNEL_PREFIX + check_schema_name(schema)


def relay_lock_key(schema: str) -> str:
    """The advisory lock key (for `hashtextextended`) the leading relay of `schema` holds."""
    return f"medsched.outbox_relay.{check_schema_name(schema)}"


# ---------------------------------------------------------------- producing


async def add_event(
    conn: Connection,
    schema: str,
    *,
    subject: str,
    event_type: str,
    aggregate_type: str,
    aggregate_id: str,
    payload: bytes,
    event_id: uuid.UUID | None = None,
    headers: Mapping[str, str] | None = None,
) -> uuid.UUID:
    """Write one event into `<schema>.outbox` within the caller's transaction; return its id.

    The event gets the next sequence number of its aggregate. Taking that number row-locks the
    aggregate's counter until the caller's transaction ends, which serialises the producers of
    one aggregate: its numbers are gap-free and commit in order. A transaction that adds events
    for several aggregates should add them in a consistent order (e.g. sorted ids), as with any
    row locks, to avoid deadlocks. The current W3C trace context is attached unless `headers`
    carries one. Aggregate ids travel in message headers: opaque ids only, never PHI.
    """
    _check_in_transaction(conn)
    bus.check_subject(subject)
    for name, value in (
        ("event_type", event_type),
        ("aggregate_type", aggregate_type),
        ("aggregate_id", aggregate_id),
    ):
        if not value or "\n" in value or "\r" in value:
            raise ValueError(f"{name} must be a non-empty single-line string")
    if not isinstance(payload, bytes):
        raise TypeError("payload must be bytes (a serialised protobuf message)")
    all_headers = trace_headers()
    all_headers.update(bus.check_extra_headers(headers or {}))
    event_id = event_id or uuid.uuid4()
    ident = sql.Identifier(check_schema_name(schema))
    await conn.execute(
        sql.SQL(
            "WITH counter AS ("
            " INSERT INTO {schema}.outbox_aggregates AS a (aggregate_type, aggregate_id, last_seq)"
            " VALUES (%(aggregate_type)s, %(aggregate_id)s, 1)"
            " ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET last_seq = a.last_seq + 1"
            " RETURNING last_seq)"
            " INSERT INTO {schema}.outbox (event_id, subject, event_type, aggregate_type,"
            " aggregate_id, aggregate_seq, payload, headers)"
            " SELECT %(event_id)s, %(subject)s, %(event_type)s, %(aggregate_type)s,"
            " %(aggregate_id)s, counter.last_seq, %(payload)s, %(headers)s FROM counter"
        ).format(schema=ident),
        {
            "event_id": event_id,
            "subject": subject,
            "event_type": event_type,
            "aggregate_type": aggregate_type,
            "aggregate_id": aggregate_id,
            "payload": payload,
            "headers": Jsonb(all_headers),
        },
    )
    return event_id


async def reserve_sequences(
    conn: Connection, schema: str, counts: Mapping[tuple[str, str], int]
) -> dict[tuple[str, str], int]:
    """Reserve `counts[(aggregate_type, aggregate_id)]` sequence numbers per aggregate at once.

    Returns the first reserved number of each aggregate. For bulk writers that must know an
    event's sequence before they encode it (e.g. to put it in the envelope) and then write
    the rows themselves. The same row locks as `add_event` serialise producers of an
    aggregate; counter rows are locked in (type, id) order so two writers cannot deadlock.
    """
    _check_in_transaction(conn)
    if any(n < 1 for n in counts.values()):
        raise ValueError("every reserved count must be at least 1")
    keys = sorted(counts)
    cursor = await conn.execute(
        sql.SQL(
            "INSERT INTO {}.outbox_aggregates AS a (aggregate_type, aggregate_id, last_seq)"
            " SELECT t, i, n FROM unnest(%s::text[], %s::text[], %s::int8[]) AS u(t, i, n)"
            " ORDER BY t, i"
            " ON CONFLICT (aggregate_type, aggregate_id)"
            " DO UPDATE SET last_seq = a.last_seq + EXCLUDED.last_seq"
            " RETURNING aggregate_type, aggregate_id, last_seq"
        ).format(sql.Identifier(check_schema_name(schema))),
        ([k[0] for k in keys], [k[1] for k in keys], [counts[k] for k in keys]),
    )
    return {
        (row[0], row[1]): int(row[2]) - counts[(row[0], row[1])] + 1
        for row in await cursor.fetchall()
    }


def _check_in_transaction(conn: Connection) -> None:
    # In autocommit mode outside `conn.transaction()` the event would commit on its own,
    # whether or not the change it describes ever does: exactly what the outbox exists to stop.
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    if conn.autocommit and idle:
        raise ValueError("add_event must run inside the transaction that changes the aggregate")


def trace_headers() -> dict[str, str]:
    # W3C trace context only (traceparent, tracestate): never baggage, which could carry
    # anything a caller put there.
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier


# ---------------------------------------------------------------- reading the outbox


@dataclass(frozen=True)
class OutboxRow:
    """An unpublished outbox row, as the relay sees it."""

    id: int
    event_id: uuid.UUID
    subject: str
    event_type: str
    aggregate_type: str
    aggregate_id: str
    aggregate_seq: int
    payload: bytes
    headers: Mapping[str, str]

    @property
    def aggregate_key(self) -> tuple[str, str]:
        return (self.aggregate_type, self.aggregate_id)

    def message_headers(self) -> dict[str, str]:
        """What travels with the message (the relay adds `Nats-Msg-Id = event_id`)."""
        return {
            **self.headers,
            bus.HEADER_EVENT_TYPE: self.event_type,
            bus.HEADER_AGGREGATE_TYPE: self.aggregate_type,
            bus.HEADER_AGGREGATE_ID: self.aggregate_id,
            bus.HEADER_AGGREGATE_SEQ: str(self.aggregate_seq),
        }


@dataclass(frozen=True)
class OutboxLag:
    """How far the relay is behind: for metrics."""

    pending: int
    oldest_age_s: float
    """Age of the oldest unpublished row (0 when none)."""


async def fetch_pending(conn: Connection, schema: str, limit: int) -> list[OutboxRow]:
    """The `limit` oldest unpublished rows, in id order.

    Why "not yet published" and not "id above the last published": ids are drawn when a row is
    inserted, but rows become visible when their transaction commits, in any order. A
    transaction that drew id 7 and commits after rows 8..50 were published would sit forever
    below a "last published id = 50" high-water mark. Selecting `published_at IS NULL`
    (the partial index `outbox_pending`) cannot miss it.

    Why id order is safe for per-aggregate order: producers of one aggregate are serialised by
    its counter row (see `add_event`), so within an aggregate a higher sequence number has a
    higher id and committed later. Hence every unpublished earlier sibling of a row in this
    result is visible and has a lower id, so it is in this result too.
    """
    cursor = await conn.execute(
        sql.SQL(
            "SELECT id, event_id, subject, event_type, aggregate_type, aggregate_id,"
            " aggregate_seq, payload, headers FROM {}.outbox"
            " WHERE published_at IS NULL ORDER BY id LIMIT %s"
        ).format(sql.Identifier(check_schema_name(schema))),
        (limit,),
    )
    return [OutboxRow(*row) for row in await cursor.fetchall()]


async def mark_published(conn: Connection, schema: str, ids: Sequence[int]) -> None:
    await conn.execute(
        sql.SQL(
            "UPDATE {}.outbox SET published_at = now() WHERE id = ANY(%s) AND published_at IS NULL"
        ).format(sql.Identifier(check_schema_name(schema))),
        (list(ids),),
    )


async def outbox_lag(conn: Connection, schema: str) -> OutboxLag:
    """Pending rows and the age of the oldest one."""
    cursor = await conn.execute(
        sql.SQL(
            "SELECT count(*),"
            " COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(created_at)), 0)::float8"
            " FROM {}.outbox WHERE published_at IS NULL"
        ).format(sql.Identifier(check_schema_name(schema)))
    )
    row = await cursor.fetchone()
    assert row is not None
    return OutboxLag(pending=int(row[0]), oldest_age_s=max(0.0, float(row[1])))


async def prune_published(
    conn: Connection, schema: str, *, older_than_s: float, batch: int = 5_000
) -> int:
    """Delete rows published more than `older_than_s` ago, in batches; return how many.

    On an autocommit connection each batch is its own short transaction, which keeps locks
    and bloat small; otherwise all batches belong to the caller's transaction.
    """
    statement = sql.SQL(
        "DELETE FROM {schema}.outbox WHERE id IN (SELECT id FROM {schema}.outbox"
        " WHERE published_at < now() - make_interval(secs => %s) ORDER BY published_at LIMIT %s)"
    ).format(schema=sql.Identifier(check_schema_name(schema)))
    total = 0
    while True:
        cursor = await conn.execute(statement, (older_than_s, batch))
        total += cursor.rowcount
        if cursor.rowcount < batch:
            return total


def plan_chains(rows: Iterable[OutboxRow]) -> list[tuple[OutboxRow, ...]]:
    """Group rows into per-aggregate chains, each in sequence order, to publish one by one.

    A chain stops at a gap in the sequence numbers: a row is only ever published after its
    predecessor. (`fetch_pending` makes gaps impossible; this keeps the rule local.) Chains are
    returned in the order of their first row's id, so older work starts first.
    """
    by_aggregate: dict[tuple[str, str], list[OutboxRow]] = {}
    for row in sorted(rows, key=lambda r: r.id):
        by_aggregate.setdefault(row.aggregate_key, []).append(row)
    chains = []
    for siblings in by_aggregate.values():
        siblings.sort(key=lambda r: r.aggregate_seq)
        chain = [siblings[0]]
        for row in siblings[1:]:
            if row.aggregate_seq != chain[-1].aggregate_seq + 1:
                break
            chain.append(row)
        chains.append(tuple(chain))
    chains.sort(key=lambda c: min(r.id for r in c))
    return chains


# ---------------------------------------------------------------- the relay


@dataclass(frozen=True)
class RelayOptions:
    batch_size: int = 500
    max_in_flight: int = 256
    """Publishes awaiting the stream's ack at once (at most one per aggregate)."""
    poll_interval_s: float = 1.0
    """Safety net: look for rows this often even without a notification."""
    standby_retry_s: float = 2.0
    """How often a standby relay tries to become the leader."""
    publish_timeout_s: float = 5.0
    retention_s: float = 24 * 3600.0
    """Published rows are deleted after this long."""
    prune_interval_s: float = 300.0
    max_backoff_s: float = 5.0


@dataclass
class _BatchResult:
    published_ids: list[int] = field(default_factory=list)
    failed_event_ids: list[str] = field(default_factory=list)
    error: str = ""


class OutboxRelay:
    """Publishes a schema's outbox to JetStream; one leader per schema, any number standing by.

    It needs its own database sessions (a session-level leader lock and LISTEN cannot share a
    pooled connection), so it takes a URL rather than a pool. Counters (`published_total`,
    `duplicates_total`, `failures_total`), `is_leader` and `lag()` are there for metrics.
    """

    def __init__(
        self,
        database_url: str,
        schema: str,
        js: JetStreamContext,
        *,
        options: RelayOptions | None = None,
        name: str = "medsched-outbox-relay",
    ) -> None:
        self.schema = check_schema_name(schema)
        self.options = options or RelayOptions()
        self.name = name
        self._url = database_url
        self._js = js
        self._ident = sql.Identifier(self.schema)
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._in_flight = asyncio.Semaphore(self.options.max_in_flight)
        self._work_conn: Connection | None = None
        self._is_leader = False
        self.published_total = 0
        """Rows published and acked by the stream (including dropped duplicates)."""
        self.duplicates_total = 0
        """Publishes the stream recognised as repeats of an earlier publish."""
        self.failures_total = 0

    @property
    def is_leader(self) -> bool:
        return self._is_leader

    async def run(self) -> None:
        """Relay until `stop()`; survives database and NATS outages by retrying with backoff.

        Errors that retrying cannot fix (e.g. the schema was never migrated) are raised.
        """
        failures = 0
        while not self._stopping.is_set():
            try:
                await self._session()
                failures = 0
            except (psycopg.OperationalError, psycopg.InterfaceError, DependencyUnavailable) as e:
                failures += 1
                delay = self._backoff(failures)
                logger.warning(
                    "outbox relay lost its database session; retrying",
                    extra={"schema": self.schema, "error": type(e).__name__, "retry_s": delay},
                )
                await _sleep_unless(self._stopping, delay)

    async def stop(self) -> None:
        """Ask `run()` to return once the batch in flight is published and marked."""
        self._stopping.set()

    async def lag(self) -> OutboxLag:
        conn = self._work_conn
        if conn is not None and not conn.closed:
            return await outbox_lag(conn, self.schema)
        async with await self._connect() as own:
            return await outbox_lag(own, self.schema)

    async def prune(self) -> int:
        """Delete rows published longer ago than the retention; return how many."""
        async with await self._connect() as conn:
            return await prune_published(conn, self.schema, older_than_s=self.options.retention_s)

    # -- leadership

    async def _connect(self) -> Connection:
        return await connect(
            self._url,
            application_name=f"{self.name}-{self.schema}",
            autocommit=True,
            keepalives=True,
        )

    async def _session(self) -> None:
        async with await self._connect() as lock_conn, await self._connect() as work_conn:
            self._work_conn = work_conn
            try:
                if not await self._become_leader(lock_conn):
                    return
                await lock_conn.execute(
                    sql.SQL("LISTEN {}").format(sql.Identifier(notify_channel(self.schema)))
                )
                self._is_leader = True
                logger.info("outbox relay is the leader", extra={"schema": self.schema})
                listener = asyncio.create_task(self._listen(lock_conn))
                try:
                    await self._lead(work_conn, listener)
                finally:
                    listener.cancel()
                    with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                        await listener
            finally:
                self._is_leader = False
                self._work_conn = None

    async def _become_leader(self, lock_conn: Connection) -> bool:
        # One relay per schema: the leader holds a session-level advisory lock on its own
        # connection. If the process dies, PostgreSQL ends the session and frees the lock, and
        # a standby's next attempt succeeds. Even a brief overlap (the old leader's in-flight
        # batch still finishing) is harmless: repeats carry the same `Nats-Msg-Id`, and each
        # relay publishes an aggregate's events only after the previous one was stored.
        while not self._stopping.is_set():
            cursor = await lock_conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                (relay_lock_key(self.schema),),
            )
            row = await cursor.fetchone()
            if row is not None and row[0]:
                return True
            await _sleep_unless(self._stopping, self.options.standby_retry_s)
        return False

    async def _listen(self, lock_conn: Connection) -> None:
        # Ends only by raising: the leader's session broke, and with it the leadership.
        async for _ in lock_conn.notifies():
            self._wake.set()
        raise psycopg.OperationalError("outbox relay listen session ended")

    async def _lead(self, work_conn: Connection, listener: asyncio.Task[None]) -> None:
        last_prune = float("-inf")
        failures = 0
        while not self._stopping.is_set():
            if listener.done():
                listener.result()
            # Cleared before draining: a commit notified while we drain wakes the next wait.
            self._wake.clear()
            failed = await self._drain(work_conn)
            if time.monotonic() - last_prune >= self.options.prune_interval_s:
                await prune_published(work_conn, self.schema, older_than_s=self.options.retention_s)
                last_prune = time.monotonic()
            failures = failures + 1 if failed else 0
            if failures:
                # NATS is refusing: notifications must not turn into a hot retry loop.
                await _wait_any(self._stopping, listener, within_s=self._backoff(failures))
            else:
                await _wait_any(
                    self._stopping, listener, self._wake, within_s=self.options.poll_interval_s
                )

    # -- publishing

    async def _drain(self, work_conn: Connection) -> bool:
        """Publish until nothing is pending; True if some publish failed."""
        while not self._stopping.is_set():
            rows = await fetch_pending(work_conn, self.schema, self.options.batch_size)
            if not rows:
                return False
            result = await self._publish_rows(rows)
            if result.published_ids:
                await mark_published(work_conn, self.schema, result.published_ids)
            if result.failed_event_ids:
                # One line per batch, not per event: an outage would otherwise flood the log.
                logger.warning(
                    "outbox publish failed; those aggregates' later events wait",
                    extra={
                        "schema": self.schema,
                        "failed": len(result.failed_event_ids),
                        "first_event_id": result.failed_event_ids[0],
                        "error": result.error,
                    },
                )
                return True
            if len(rows) < self.options.batch_size:
                return False
        return False

    async def _publish_rows(self, rows: Sequence[OutboxRow]) -> _BatchResult:
        # Never loses an event: a row is marked published only after the stream acked it (the
        # caller marks what we return). A crash before marking leaves the row pending; the next
        # leader publishes it again with the same `Nats-Msg-Id`, and the stream, within its
        # duplicate window, stores it once.
        result = _BatchResult()
        await asyncio.gather(*(self._send_chain(chain, result) for chain in plan_chains(rows)))
        return result

    async def _send_chain(self, chain: Sequence[OutboxRow], result: _BatchResult) -> None:
        # Never reorders an aggregate's events: within a chain the next publish starts only
        # after the previous one was acked, and the first failure ends the chain, so later
        # siblings wait for the next round. Pipelining siblings would let a failed publish be
        # overtaken by its successor. Parallelism comes from running chains side by side.
        for row in chain:
            try:
                async with self._in_flight:
                    ack = await bus.publish(
                        self._js,
                        row.subject,
                        row.payload,
                        msg_id=str(row.event_id),
                        headers=row.message_headers(),
                        timeout_s=self.options.publish_timeout_s,
                    )
            except DependencyUnavailable as e:
                self.failures_total += 1
                result.failed_event_ids.append(str(row.event_id))
                result.error = type(e.__cause__ or e).__name__
                return
            result.published_ids.append(row.id)
            self.published_total += 1
            if ack.duplicate:
                self.duplicates_total += 1

    def _backoff(self, failures: int) -> float:
        return float(min(0.1 * 2 ** min(failures, 10), self.options.max_backoff_s))


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except TimeoutError:
        return


async def _wait_any(
    stopping: asyncio.Event,
    listener: asyncio.Task[None],
    wake: asyncio.Event | None = None,
    *,
    within_s: float,
) -> None:
    """Wait until stop is requested, the listener ends, `wake` is set, or `within_s` passes."""
    waiters: list[asyncio.Task[Any]] = [asyncio.create_task(stopping.wait())]
    if wake is not None:
        waiters.append(asyncio.create_task(wake.wait()))
    try:
        await asyncio.wait(
            [*waiters, listener], timeout=within_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for waiter in waiters:
            waiter.cancel()


# ---------------------------------------------------------------- command line


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m common.outbox")
    commands = parser.add_subparsers(dest="command", required=True)
    relay = commands.add_parser("relay", help="run an outbox relay until SIGTERM or SIGINT")
    relay.add_argument("--schema", required=True)
    relay.add_argument("--database-url", required=True)
    relay.add_argument("--nats-url", required=True)
    relay.add_argument("--batch-size", type=int, default=RelayOptions.batch_size)
    relay.add_argument("--max-in-flight", type=int, default=RelayOptions.max_in_flight)
    relay.add_argument("--poll-interval", type=float, default=RelayOptions.poll_interval_s)
    relay.add_argument("--standby-retry", type=float, default=RelayOptions.standby_retry_s)
    return parser.parse_args(argv)


async def _run_relay(args: argparse.Namespace) -> dict[str, Any]:
    client, js = await bus.connect(args.nats_url, name=f"outbox-relay-{args.schema}")
    relay = OutboxRelay(
        args.database_url,
        args.schema,
        js,
        options=RelayOptions(
            batch_size=args.batch_size,
            max_in_flight=args.max_in_flight,
            poll_interval_s=args.poll_interval,
            standby_retry_s=args.standby_retry,
        ),
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: asyncio.ensure_future(relay.stop()))
    try:
        await relay.run()
    finally:
        await bus.close(client)
    return {
        "published": relay.published_total,
        "duplicates": relay.duplicates_total,
        "failures": relay.failures_total,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a relay; on SIGTERM print its counters as one JSON line and exit 0."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    stats = asyncio.run(_run_relay(args))
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
