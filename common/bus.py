"""JetStream event bus: connection, stream setup, publishing with `Nats-Msg-Id`, durable consumers.

Delivery is at-least-once end to end, made effectively-once at both ends:

- Producers (the outbox relay) publish with `Nats-Msg-Id = event id`; the stream drops a repeat
  of an id it has seen within its duplicate window (a relay that crashed between publishing
  and recording the publish simply publishes again).
- Consumers (`DurableConsumer`) apply an event in a PostgreSQL transaction that also records
  `(consumer, event id)` in the schema's `inbox` table, commit, and only then ack. A message
  redelivered after a crash or an expired ack wait finds its inbox row and is acked without
  running the handler again. `StreamConsumer` is the variant for in-memory projections that do
  not use PostgreSQL; they de-duplicate by the stream sequence they have applied.

Subjects are `medsched.<aggregate>.<event>` (see `subject`); every event carries the headers
named `HEADER_*` below. Aggregate ids travel in headers and must be opaque ids, never PHI.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from psycopg import sql

from common.db import Connection, Pool, check_schema_name
from common.errors import DependencyUnavailable, MedschedError

logger = logging.getLogger(__name__)

STREAM_NAME = "MEDSCHED"
SUBJECT_ROOT = "medsched"

HEADER_MSG_ID = "Nats-Msg-Id"
HEADER_EVENT_TYPE = "Medsched-Event-Type"
HEADER_AGGREGATE_TYPE = "Medsched-Aggregate-Type"
HEADER_AGGREGATE_ID = "Medsched-Aggregate-Id"
HEADER_AGGREGATE_SEQ = "Medsched-Aggregate-Seq"
RESERVED_HEADER_PREFIXES = ("nats-", "medsched-")

_TOKEN = re.compile(r"[a-z][a-z0-9_]*")
# A subject token: no whitespace, no wildcards, no separators.
_SUBJECT_TOKEN = re.compile(r"[A-Za-z0-9_\-]+")
_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")


# ---------------------------------------------------------------- names and headers


def subject(aggregate: str, event: str) -> str:
    """`subject("appointment", "booked")` -> `medsched.appointment.booked`."""
    for label, token in (("aggregate", aggregate), ("event", event)):
        if not _TOKEN.fullmatch(token):
            raise ValueError(
                f"{label} {token!r} is not a valid subject token:"
                " want lower-case letters, digits and '_', starting with a letter"
            )
    return f"{SUBJECT_ROOT}.{aggregate}.{event}"


def check_subject(value: str) -> str:
    """Return `value` if it is a concrete publish subject (dot-separated, no wildcards)."""
    if not value or not all(_SUBJECT_TOKEN.fullmatch(t) for t in value.split(".")):
        raise ValueError(
            f"subject {value!r} is invalid: want dot-separated tokens of letters, digits,"
            " '_' or '-' (no wildcards or spaces)"
        )
    return value


def check_extra_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Validate caller-supplied headers (e.g. `traceparent`): well-formed, not reserved."""
    checked = {}
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"header name {name!r} is invalid")
        if name.lower().startswith(RESERVED_HEADER_PREFIXES):
            raise ValueError(f"header {name!r} is reserved for the bus itself")
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r} must be a single-line string")
        checked[name] = value
    return checked


# ---------------------------------------------------------------- connection and stream


async def connect(
    url: str,
    *,
    name: str,
    tls: ssl.SSLContext | None = None,
    first_connect_timeout_s: float = 10.0,
    reconnect_wait_s: int = 1,
    request_timeout_s: float = 5.0,
) -> tuple[NatsClient, JetStreamContext]:
    """Connect to NATS and open JetStream.

    The first connection must succeed within `first_connect_timeout_s` (a process that cannot
    reach NATS at start should fail loudly). Once connected, the client reconnects forever: a
    service outlives NATS restarts, and its health check reports the outage meanwhile.
    """

    async def on_error(error: Exception) -> None:
        logger.warning(
            "nats connection error", extra={"nats_client": name, "error": type(error).__name__}
        )

    async def on_disconnected() -> None:
        logger.warning("nats disconnected; reconnecting", extra={"nats_client": name})

    async def on_reconnected() -> None:
        logger.info("nats reconnected", extra={"nats_client": name})

    client = NatsClient()
    try:
        await asyncio.wait_for(
            client.connect(
                url,
                name=name,
                tls=tls,
                connect_timeout=max(1, min(5, round(first_connect_timeout_s))),
                reconnect_time_wait=reconnect_wait_s,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                error_cb=on_error,
                disconnected_cb=on_disconnected,
                reconnected_cb=on_reconnected,
            ),
            timeout=first_connect_timeout_s,
        )
    except (TimeoutError, OSError, nats.errors.Error) as e:
        await client.close()
        raise DependencyUnavailable(
            f"NATS connection {name!r} could not be opened within {first_connect_timeout_s}s"
        ) from e
    return client, client.jetstream(timeout=request_timeout_s)


async def close(client: NatsClient, *, timeout_s: float = 10.0) -> None:
    """Drain (finish in-flight publishes and acks, then close); close hard after `timeout_s`."""
    if client.is_closed:
        return
    try:
        await asyncio.wait_for(client.drain(), timeout=timeout_s)
    except (TimeoutError, nats.errors.Error):
        logger.warning("nats drain did not finish in time; closing", extra={"timeout_s": timeout_s})
        await client.close()


async def ensure_stream(
    js: JetStreamContext,
    name: str = STREAM_NAME,
    subjects: Sequence[str] = (f"{SUBJECT_ROOT}.>",),
    *,
    duplicate_window_s: float = 120.0,
    max_age_s: float = 7 * 24 * 3600.0,
    storage: StorageType = StorageType.FILE,
    replicas: int = 1,
) -> StreamInfo:
    """Create the stream, or update it to this configuration; idempotent and race-safe.

    `duplicate_window_s` bounds how late a re-publish of the same `Nats-Msg-Id` is still
    dropped by the stream; later repeats are caught by the consumers' inbox.
    """
    config = StreamConfig(
        name=name,
        subjects=list(subjects),
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        storage=storage,
        num_replicas=replicas,
        duplicate_window=duplicate_window_s,
        max_age=max_age_s,
    )
    try:
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            try:
                return await js.add_stream(config)
            except nats.js.errors.BadRequestError:
                # Another process created it between our lookup and our create.
                info = await js.stream_info(name)
        if _stream_differs(info.config, config):
            return await js.update_stream(config)
        return info
    except (TimeoutError, nats.errors.Error) as e:
        raise DependencyUnavailable(f"JetStream stream {name!r} could not be set up") from e


def _stream_differs(current: StreamConfig, wanted: StreamConfig) -> bool:
    return (
        sorted(current.subjects or []) != sorted(wanted.subjects or [])
        or current.duplicate_window != wanted.duplicate_window
        or current.max_age != wanted.max_age
        or current.num_replicas != wanted.num_replicas
        or current.storage != wanted.storage
    )


async def publish(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    *,
    msg_id: str,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 5.0,
) -> PubAck:
    """Publish and wait for the stream's ack; `PubAck.duplicate` is true for a dropped repeat."""
    check_subject(subject)
    if not msg_id:
        raise ValueError("msg_id is required: it is what makes re-publishing safe")
    all_headers: dict[str, Any] = dict(headers or {})
    all_headers[HEADER_MSG_ID] = msg_id
    try:
        return await js.publish(subject, payload, timeout=timeout_s, headers=all_headers)
    except (TimeoutError, nats.errors.Error) as e:
        raise DependencyUnavailable(f"JetStream did not accept a message on {subject!r}") from e


# ---------------------------------------------------------------- received events


class MalformedEvent(ValueError):
    """A message lacks what every medsched event carries (a UUID `Nats-Msg-Id`)."""


@dataclass(frozen=True)
class ReceivedEvent:
    """One delivered event with its identity, position and payload."""

    subject: str
    event_id: UUID
    event_type: str
    aggregate_type: str
    aggregate_id: str
    aggregate_seq: int | None
    stream: str
    stream_seq: int
    delivery_count: int
    published_at: datetime
    headers: Mapping[str, str] = field(repr=False)
    payload: bytes = field(repr=False)

    @classmethod
    def from_msg(cls, msg: Msg) -> ReceivedEvent:
        headers = dict(msg.headers or {})
        try:
            event_id = UUID(headers[HEADER_MSG_ID])
        except (KeyError, ValueError):
            raise MalformedEvent("message has no UUID Nats-Msg-Id header") from None
        raw_seq = headers.get(HEADER_AGGREGATE_SEQ)
        try:
            aggregate_seq = int(raw_seq) if raw_seq is not None else None
        except ValueError:
            raise MalformedEvent(f"{HEADER_AGGREGATE_SEQ} header is not an integer") from None
        metadata = msg.metadata
        return cls(
            subject=msg.subject,
            event_id=event_id,
            event_type=headers.get(HEADER_EVENT_TYPE, ""),
            aggregate_type=headers.get(HEADER_AGGREGATE_TYPE, ""),
            aggregate_id=headers.get(HEADER_AGGREGATE_ID, ""),
            aggregate_seq=aggregate_seq,
            stream=metadata.stream,
            stream_seq=metadata.sequence.stream,
            delivery_count=metadata.num_delivered,
            published_at=metadata.timestamp,
            headers=headers,
            payload=msg.data,
        )


TxHandler = Callable[[ReceivedEvent, Connection], Awaitable[None]]
"""Applies an event inside the consumer's transaction (write through the given connection)."""
EventHandler = Callable[[ReceivedEvent], Awaitable[None]]
"""Applies an event without PostgreSQL (in-memory projections)."""


# ---------------------------------------------------------------- consumers


@dataclass(frozen=True)
class ConsumerOptions:
    """How a durable pull consumer is configured on the server and driven by the loop."""

    ack_wait_s: float = 30.0
    """Unacked messages are redelivered after this; a handler must finish well within it."""
    max_deliver: int = 10
    """After this many failed deliveries the message is terminated (logged, not retried)."""
    max_ack_pending: int = 1_000
    batch_size: int = 64
    """Messages per fetch. Their ack waits all start at delivery and they are handled one by
    one, so `batch_size` x (slowest handler time) must stay well below `ack_wait_s`."""
    fetch_timeout_s: float = 1.0
    """How long a pull request stays open on the server waiting for messages (messages are
    handed over as they arrive, whatever this is); `stop()` waits at most about this long for
    the open request to end."""
    retry_delays_s: tuple[float, ...] = (1.0, 5.0, 15.0, 60.0)
    """Redelivery delay after the n-th failure (the last one repeats)."""
    start_sequence: int | None = None
    """Deliver from this stream sequence when the consumer is first created (default: all)."""

    def retry_delay(self, delivery_count: int) -> float:
        index = min(max(delivery_count, 1), len(self.retry_delays_s)) - 1
        return self.retry_delays_s[index]

    def consumer_config(self, durable: str, subjects: Sequence[str]) -> ConsumerConfig:
        config = ConsumerConfig(
            name=durable,
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
            filter_subjects=list(subjects),
        )
        if self.start_sequence is not None:
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = self.start_sequence
        return config


@dataclass(frozen=True)
class ConsumerLag:
    """How far a consumer is behind: for metrics and readiness."""

    pending: int
    """Messages in the stream not yet delivered to this consumer."""
    ack_pending: int
    """Delivered, not yet acked."""
    redelivered: int


async def ensure_consumer(
    js: JetStreamContext,
    stream: str,
    durable: str,
    subjects: Sequence[str],
    options: ConsumerOptions,
) -> ConsumerInfo:
    """Create the durable consumer, or update it to `options`; idempotent."""
    try:
        return await js.add_consumer(stream, config=options.consumer_config(durable, subjects))
    except (TimeoutError, nats.errors.Error) as e:
        raise DependencyUnavailable(
            f"JetStream consumer {durable!r} on stream {stream!r} could not be set up"
        ) from e


async def apply_once(
    conn: Connection, schema: str, consumer: str, event: ReceivedEvent, handler: TxHandler
) -> bool:
    """Run `handler` in one transaction with the inbox record; False if it was applied before.

    Two deliveries of one event racing each other (an ack wait expired while the first was
    still running) are safe too: the second insert waits on the first's uncommitted inbox row
    and then finds the conflict.
    """
    async with conn.transaction():
        cursor = await conn.execute(
            sql.SQL(
                "INSERT INTO {}.inbox (consumer, event_id, stream_seq) VALUES (%s, %s, %s)"
                " ON CONFLICT (consumer, event_id) DO NOTHING"
            ).format(sql.Identifier(schema)),
            (consumer, event.event_id, event.stream_seq),
        )
        if cursor.rowcount == 0:
            return False
        await handler(event, conn)
    return True


async def prune_inbox(conn: Connection, schema: str, *, older_than_s: float) -> int:
    """Forget inbox records older than `older_than_s`; return how many were deleted.

    Keep them at least as long as the stream keeps messages (its max age): a consumer reset to
    replay the stream would otherwise apply old events again.
    """
    cursor = await conn.execute(
        sql.SQL(
            "DELETE FROM {}.inbox WHERE received_at < now() - make_interval(secs => %s)"
        ).format(sql.Identifier(check_schema_name(schema))),
        (older_than_s,),
    )
    return cursor.rowcount


class _PullLoop:
    """The fetch -> handle -> ack/nak/term loop shared by both consumer kinds."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        subjects: Sequence[str],
        options: ConsumerOptions,
    ) -> None:
        if not subjects:
            raise ValueError("a consumer needs at least one filter subject")
        self._js = js
        self.stream = stream
        self.durable = durable
        self.subjects = tuple(subjects)
        self.options = options
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pulls: _PullRequests | None = None
        self.handled_total = 0
        """Events whose handler ran and committed."""
        self.duplicates_total = 0
        """Redelivered events recognised as already applied (handler not run)."""
        self.failures_total = 0
        self.terminated_total = 0

    async def start(self) -> None:
        """Create or update the durable consumer and start consuming in a background task."""
        if self._task is not None:
            raise RuntimeError(f"consumer {self.durable!r} is already started")
        await ensure_consumer(self._js, self.stream, self.durable, self.subjects, self.options)
        self._pulls = await _PullRequests.open(self._js, self.stream, self.durable, self.options)
        self._task = asyncio.create_task(self._run(), name=f"consumer:{self.durable}")

    async def stop(self) -> None:
        """Finish the message being handled, hand back what else arrives until the open pull
        request ends, unsubscribe."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        if self._pulls is not None:
            try:
                await self._pulls.close()
            except nats.errors.Error:
                logger.warning("consumer unsubscribe failed", extra={"consumer": self.durable})
            self._pulls = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def stop_requested(self) -> bool:
        return self._stopping.is_set()

    async def lag(self) -> ConsumerLag:
        info = await self._js.consumer_info(self.stream, self.durable)
        return ConsumerLag(
            pending=info.num_pending or 0,
            ack_pending=info.num_ack_pending or 0,
            redelivered=info.num_redelivered or 0,
        )

    async def _handle(self, event: ReceivedEvent) -> bool:
        """Apply the event; False if it had been applied before (a duplicate)."""
        raise NotImplementedError

    async def _run(self) -> None:
        pulls = self._pulls
        assert pulls is not None
        failures_in_a_row = 0
        # After a stop request, keep reading until the open request has ended: what it still
        # delivers is handed back at once rather than left to its ack wait.
        while not self._stopping.is_set() or pulls.request_open:
            try:
                msg = await pulls.next_message()
            except nats.errors.Error as e:
                # Consumer deleted, connection closed or reconnecting: wait, then try again.
                failures_in_a_row += 1
                delay = min(0.2 * 2**failures_in_a_row, 5.0)
                logger.warning(
                    "consumer fetch failed",
                    extra={"consumer": self.durable, "error": type(e).__name__, "retry_s": delay},
                )
                await _sleep_unless(self._stopping, delay)
                continue
            if msg is None:
                continue  # the request ended without (more) messages; the next one goes out
            failures_in_a_row = 0
            if self._stopping.is_set():
                # Delivered but not started: nak without delay so another instance gets it
                # now rather than after the ack wait.
                await _settle(msg.nak())
            else:
                await self._process(msg)

    async def _process(self, msg: Msg) -> None:
        try:
            event = ReceivedEvent.from_msg(msg)
        except MalformedEvent as e:
            logger.error(
                "malformed event terminated",
                extra={"consumer": self.durable, "subject": msg.subject, "reason": str(e)},
            )
            self.terminated_total += 1
            await _settle(msg.term())
            return
        tracer = trace.get_tracer(__name__)
        parent = TraceContextTextMapPropagator().extract(event.headers)
        # Exceptions are not recorded on the span: their messages are not guaranteed PHI-free.
        with tracer.start_as_current_span(
            f"consume {event.subject}",
            context=parent,
            kind=SpanKind.CONSUMER,
            record_exception=False,
            set_status_on_exception=False,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": event.subject,
                "messaging.consumer.group.name": self.durable,
                "app.event_id": str(event.event_id),
                "app.delivery_count": event.delivery_count,
            },
        ) as span:
            try:
                applied = await self._handle(event)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any handler failure must nak, never kill the loop
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                await self._after_failure(msg, event, error)
                return
        if applied:
            self.handled_total += 1
        else:
            self.duplicates_total += 1
        await _settle(msg.ack())

    async def _after_failure(self, msg: Msg, event: ReceivedEvent, error: Exception) -> None:
        self.failures_total += 1
        # Only our own domain errors are known to carry PHI-free messages.
        reason = error.message if isinstance(error, MedschedError) else ""
        log_fields = {
            "consumer": self.durable,
            "event_id": str(event.event_id),
            "subject": event.subject,
            "stream_seq": event.stream_seq,
            "delivery_count": event.delivery_count,
            "error": type(error).__name__,
            "reason": reason,
        }
        if event.delivery_count >= self.options.max_deliver:
            self.terminated_total += 1
            logger.error(
                "event handler failed for the last time; event terminated", extra=log_fields
            )
            await _settle(msg.term())
            return
        delay = self.options.retry_delay(event.delivery_count)
        logger.warning(
            "event handler failed; redelivery scheduled", extra={**log_fields, "retry_s": delay}
        )
        await _settle(msg.nak(delay=delay))


class PullRefused(nats.errors.Error):
    """The server ended a pull request with an error status (409: consumer deleted,
    leadership change, ...); the loop backs off and asks again."""

    def __init__(self, status: str, description: str) -> None:
        super().__init__(f"pull request refused: {status} {description}".strip())


class _PullRequests:
    """One pull request open at a time on a consumer; its messages handed over one by one
    the moment they arrive.

    nats-py's `fetch` returns only once its request ends or a status message arrives, and a
    fetch that returns early can leave its request open on the server; the next message then
    goes to that forgotten request and waits in the client until the request expires. Seen
    as commit-to-search delays of up to `fetch_timeout_s` (1 s) in the availability index.
    Here a message is returned as soon as it is read, whichever request it answers, and the
    next request goes out only when the previous one has delivered its batch, expired (408),
    found nothing (404) or outlived its expiry by `_REQUEST_GRACE_S` without a word.
    """

    def __init__(
        self, client: NatsClient, subject: str, sub: Subscription, options: ConsumerOptions
    ) -> None:
        self._client = client
        self._subject = subject
        self._sub = sub
        self._batch = options.batch_size
        self._expires_s = options.fetch_timeout_s
        self._request = json.dumps(
            {"batch": options.batch_size, "expires": int(options.fetch_timeout_s * 1e9)}
        ).encode()
        self._left = 0  # messages the open request may still deliver; 0 when none is open
        self._expires_at = 0.0
        self._deadline = 0.0

    @classmethod
    async def open(
        cls, js: JetStreamContext, stream: str, durable: str, options: ConsumerOptions
    ) -> _PullRequests:
        # nats-py offers no public accessor for the connection and API prefix of a context.
        client: NatsClient = js._nc
        subject = f"{js._prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        sub = await client.subscribe(client.new_inbox())
        return cls(client, subject, sub, options)

    @property
    def request_open(self) -> bool:
        return self._left > 0

    async def next_message(self) -> Msg | None:
        """The next message, or None when the open request ended without one (call again).

        Raises `PullRefused` for an error status and nats errors for a broken connection.
        """
        try:
            return await self._next_message()
        except nats.errors.Error:
            self._left = 0  # whatever was open is not counted on: the next call asks again
            raise

    async def _next_message(self) -> Msg | None:
        if self._left <= 0:
            await self._client.publish(self._subject, self._request, reply=self._sub.subject)
            self._left = self._batch
            self._expires_at = time.monotonic() + self._expires_s
            self._deadline = self._expires_at + _REQUEST_GRACE_S
        while True:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                self._left = 0
                return None
            try:
                msg = await self._sub.next_msg(timeout=remaining)
            except nats.errors.TimeoutError:
                self._left = 0  # its end was never announced: ask again
                return None
            status = JetStreamContext.is_status_msg(msg)
            if status is None:
                self._left -= 1
                return msg
            if status == _STATUS_HEARTBEAT:
                continue
            if status == _STATUS_EXPIRED and time.monotonic() < self._expires_at - _EARLY_S:
                # An older request's expiry, announced after we stopped waiting for it: ours
                # is still open, and ending it here would keep two requests open at once.
                continue
            self._left = 0
            if status in _STATUS_REQUEST_ENDED:
                return None
            headers = msg.headers or {}
            raise PullRefused(status, headers.get(_HEADER_DESCRIPTION, ""))

    async def close(self) -> None:
        await self._sub.unsubscribe()


_REQUEST_GRACE_S = 0.05
"""How long past its expiry a pull request's end may go unannounced before we ask again.

Short: nats-server before 2.10 does not announce an expiry while the subscription lives, and
until the next request goes out no event can be delivered (0.5 s here held one event in a
hundred for 0.5 s on 2.9.10)."""
_STATUS_HEARTBEAT = "100"
_STATUS_EXPIRED = "408"
_EARLY_S = 0.01
"""Clock leeway when telling whether a 408 can be the open request's own expiry."""
_STATUS_REQUEST_ENDED = frozenset({"404", "408"})  # nothing to deliver / request expired
_HEADER_DESCRIPTION = "Description"


class DurableConsumer(_PullLoop):
    """A durable pull consumer whose handler runs in a PostgreSQL transaction with the inbox.

    Per message: begin; insert `(durable, event id)` into `<schema>.inbox` (already there ->
    skip the handler); run the handler with the connection; commit; then ack. A handler error
    rolls everything back and naks with a growing delay; after `max_deliver` deliveries the
    message is terminated and logged (ids only). Messages are handled one at a time in delivery
    order. JetStream redelivers a failed message after later ones, so a handler that needs strict
    per-aggregate order checks `aggregate_seq` (or the consumer runs with `max_ack_pending=1`).
    """

    def __init__(
        self,
        js: JetStreamContext,
        pool: Pool,
        schema: str,
        *,
        stream: str,
        durable: str,
        subjects: Sequence[str],
        handler: TxHandler,
        options: ConsumerOptions | None = None,
    ) -> None:
        super().__init__(
            js,
            stream=stream,
            durable=durable,
            subjects=subjects,
            options=options or ConsumerOptions(),
        )
        self._pool = pool
        self.schema = check_schema_name(schema)
        self._handler = handler

    async def _handle(self, event: ReceivedEvent) -> bool:
        async with self._pool.connection() as conn:
            return await apply_once(conn, self.schema, self.durable, event, self._handler)


class StreamConsumer(_PullLoop):
    """A durable pull consumer whose handler does not use PostgreSQL (in-memory projections).

    There is no inbox: the handler de-duplicates by `event.stream_seq`, e.g. ignoring events at
    or below the stream sequence its snapshot reflects. The message is acked after the handler
    returns; a handler error naks it like `DurableConsumer` does.
    """

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        subjects: Sequence[str],
        handler: EventHandler,
        options: ConsumerOptions | None = None,
    ) -> None:
        super().__init__(
            js,
            stream=stream,
            durable=durable,
            subjects=subjects,
            options=options or ConsumerOptions(),
        )
        self._handler = handler

    async def _handle(self, event: ReceivedEvent) -> bool:
        await self._handler(event)
        return True


async def _settle(action: Awaitable[None]) -> None:
    """Send an ack/nak/term; losing one only means a redelivery, which the inbox absorbs."""
    try:
        await action
    except nats.errors.Error as e:
        logger.warning(
            "could not settle a message; it will be redelivered", extra={"error": type(e).__name__}
        )


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    """Sleep up to `seconds`, waking early when `event` is set."""
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except TimeoutError:
        return
