"""JSON logging: one object per line, with trace ids, and a guard that keeps PHI out.

Each record becomes one line of JSON::

    {"ts": "2026-03-09T14:30:00.123Z", "level": "INFO", "logger": "booking_svc.service",
     "msg": "appointment booked", "service": "booking", "trace_id": "...", "span_id": "...",
     "extra": {"appointment_id": "...", "duration_ms": 41}}

`trace_id`/`span_id` appear when the record is emitted inside a recording OpenTelemetry span.

The PHI guard (the rule every log call must live with):

1. Variable data goes in `extra=`, never into the message text. Only *id-like* extra fields
   pass through: names in `ALLOWED_EXTRA_FIELDS`, names ending in `_id`/`_ids`, and numeric
   values under names ending in a measurement suffix (`_ms`, `_seconds`, `_count`, ...).
   Names that hint at personal data (`member`, `name`, `email`, `phone`, `birth`, ...) are
   refused even with an id suffix, because a payer member id is PHI. Every other field, and
   any value that is not a plain scalar (or a list of them for `_ids`), is logged as
   `"[redacted]"`, so the field's presence stays visible without its content.
2. Exceptions keep their full traceback (file, line, function), but the *message* of an
   exception from a library known to echo data is reduced to its type (plus SQLSTATE for
   database errors): psycopg errors carry `DETAIL: Key (member_id)=(...)` lines and query
   parameters, and Elasticsearch errors quote document fields. This applies to every
   exception in the chain (`__cause__`, `__context__`, exception groups) and to such
   exceptions passed as `%s` arguments of the message.
3. Our own exception messages never carry PHI (see `common.errors`), so they are kept.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any
from uuid import UUID

from opentelemetry import trace

REDACTED = "[redacted]"

ALLOWED_EXTRA_FIELDS = frozenset(
    {
        "attempt",
        "channel",
        "code",
        "consumer",
        "count",
        "duration_ms",
        "error_type",
        "event_type",
        "kind",
        "method",
        "metric",
        "outcome",
        "port",
        "role",
        "route",
        "schema",
        "service",
        "sqlstate",
        "state",
        "status",
        "stream",
        "subject",
        "version",
    }
)
_ID_SUFFIXES = ("_id", "_ids")
_MEASUREMENT_SUFFIXES = ("_ms", "_s", "_seconds", "_count", "_bytes", "_total", "_size")
# Id-suffixed names that are personal data themselves (insurance member ids, record numbers).
_PHI_NAME_PARTS = (
    "member",
    "subscriber",
    "name",
    "email",
    "phone",
    "birth",
    "dob",
    "ssn",
    "mrn",
    "address",
    "insurance",
    "policy",
)
# Top-level packages whose exception messages echo query parameters, rows or documents.
DATA_ECHOING_EXCEPTION_PACKAGES = frozenset({"psycopg", "elasticsearch", "elastic_transport"})

_SCALARS = (str, int, float, bool, UUID, type(None))
_STANDARD_RECORD_FIELDS = frozenset(
    logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _looks_like_phi(name: str) -> bool:
    lowered = name.lower()
    return any(part in lowered for part in _PHI_NAME_PARTS)


def _plain(value: object) -> Any:
    return str(value) if isinstance(value, UUID) else value


def sanitize_extra(name: str, value: object) -> Any:
    """`value` as it may appear in a log line under `name`, or `REDACTED`."""
    if name in ALLOWED_EXTRA_FIELDS:
        return _plain(value) if isinstance(value, _SCALARS) else REDACTED
    if _looks_like_phi(name):
        return REDACTED
    if name.endswith(_ID_SUFFIXES):
        if isinstance(value, _SCALARS):
            return _plain(value)
        if isinstance(value, list | tuple | set | frozenset) and all(
            isinstance(item, _SCALARS) for item in value
        ):
            return [_plain(item) for item in value]
        return REDACTED
    if name.endswith(_MEASUREMENT_SUFFIXES) and _is_number(value):
        return value
    return REDACTED


def _echoes_data(exc: BaseException) -> bool:
    return type(exc).__module__.partition(".")[0] in DATA_ECHOING_EXCEPTION_PACKAGES


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def describe_exception(exc: BaseException) -> str:
    """One line naming `exc`: type and message, or type and SQLSTATE for data-echoing ones."""
    name = _type_name(exc)
    if _echoes_data(exc):
        sqlstate = getattr(exc, "sqlstate", None)
        return f"{name} (SQLSTATE {sqlstate})" if isinstance(sqlstate, str) else name
    message = str(exc)
    return f"{name}: {message}" if message else name


def _exception_lines(exc: BaseException, seen: set[int]) -> list[str]:
    """Traceback lines for `exc` and its chain, oldest first, like `traceback.format_exception`.

    Written out by hand rather than through `traceback.TracebackException` because every
    exception line in the chain must go through `describe_exception`.
    """
    seen.add(id(exc))
    lines: list[str] = []
    cause, context = exc.__cause__, exc.__context__
    if cause is not None and id(cause) not in seen:
        lines += _exception_lines(cause, seen)
        lines.append("\nThe above exception was the direct cause of the following exception:\n\n")
    elif context is not None and not exc.__suppress_context__ and id(context) not in seen:
        lines += _exception_lines(context, seen)
        lines.append("\nDuring handling of the above exception, another exception occurred:\n\n")
    if exc.__traceback__ is not None:
        lines.append("Traceback (most recent call last):\n")
        lines += traceback.format_tb(exc.__traceback__)
    lines.append(describe_exception(exc) + "\n")
    if not _echoes_data(exc):
        lines += [f"{note}\n" for note in getattr(exc, "__notes__", ()) if isinstance(note, str)]
    if isinstance(exc, BaseExceptionGroup):
        for number, inner in enumerate(exc.exceptions, start=1):
            lines.append(f"+---------------- {number} ----------------\n")
            lines += [
                "| " + line for line in "".join(_exception_lines(inner, seen)).splitlines(True)
            ]
    return lines


def format_exception(exc: BaseException) -> str:
    """The traceback of `exc` and its chain with data-echoing messages reduced."""
    return "".join(_exception_lines(exc, set())).rstrip("\n")


def _safe_argument(value: object) -> object:
    if isinstance(value, BaseException) and _echoes_data(value):
        return describe_exception(value)
    return value


def _render_message(record: logging.LogRecord) -> str:
    args = record.args
    if not args:
        return str(record.msg)
    safe: tuple[object, ...] | Mapping[str, object]
    if isinstance(args, Mapping):
        safe = {key: _safe_argument(value) for key, value in args.items()}
    else:
        safe = tuple(_safe_argument(value) for value in args)
    return str(record.msg) % safe


def _timestamp(created: float) -> str:
    moment = datetime.fromtimestamp(created, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """Formats records as single-line JSON objects applying the PHI guard."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": _render_message(record),
            "service": self._service,
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            document["trace_id"] = format(span_context.trace_id, "032x")
            document["span_id"] = format(span_context.span_id, "016x")
        extra = {
            name: sanitize_extra(name, value)
            for name, value in record.__dict__.items()
            if name not in _STANDARD_RECORD_FIELDS
        }
        if extra:
            document["extra"] = extra
        if record.exc_info and record.exc_info[1] is not None:
            document["exc_type"] = _type_name(record.exc_info[1])
            document["exc"] = format_exception(record.exc_info[1])
        if record.stack_info:
            document["stack"] = record.stack_info
        return json.dumps(document, ensure_ascii=False, default=str)


class _JsonHandler(logging.StreamHandler[IO[str]]):
    """The root handler `configure_logging` installs (a distinct type so it can replace it)."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (stdlib name)
        # The stdlib version prints the record's arguments to stderr, and arguments are
        # exactly where PHI would be; report the failing call site only.
        self.stream.write(
            json.dumps(
                {
                    "ts": _timestamp(record.created),
                    "level": "ERROR",
                    "logger": __name__,
                    "msg": "log record could not be formatted",
                    "source": f"{record.pathname}:{record.lineno}",
                }
            )
            + self.terminator
        )


def configure_logging(
    service: str, level: str = "INFO", stream: IO[str] | None = None
) -> logging.Handler:
    """Send every log record to `stream` (default stderr) as JSON lines; returns the handler.

    Calling it again replaces the handler installed before, so tests and restarts do not
    stack duplicate handlers. Other handlers on the root logger are left alone.
    """
    levels = logging.getLevelNamesMapping()
    normalized = level.upper()
    if normalized not in levels:
        raise ValueError(f"log level {level!r} is not one of {', '.join(sorted(levels))}")
    root = logging.getLogger()
    for existing in [h for h in root.handlers if isinstance(h, _JsonHandler)]:
        root.removeHandler(existing)
        existing.close()
    handler = _JsonHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root.addHandler(handler)
    root.setLevel(levels[normalized])
    return handler
