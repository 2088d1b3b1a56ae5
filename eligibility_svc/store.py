"""SQL of the eligibility schema: checks, the payer exchanges behind them, and their events.

Functions take a connection; the caller owns the transaction. Encrypted columns arrive
already sealed (see the `*_context` helpers for the associated data each one is bound to):
this module never sees PHI in clear text.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from common.crypto import field_context
from common.db import Connection
from common.outbox import add_event

SCHEMA = "eligibility"
VERIFIED_SUBJECT = "medsched.eligibility.verified"
VERIFIED_EVENT_TYPE = "eligibility.verified"
AGGREGATE_TYPE = "eligibility"


def outcome_context(check_id: str) -> bytes:
    return field_context("eligibility.checks.outcome", check_id)


def request_context(exchange_id: str) -> bytes:
    return field_context("eligibility.exchanges.request_x12", exchange_id)


def response_context(exchange_id: str) -> bytes:
    return field_context("eligibility.exchanges.response_payload", exchange_id)


@dataclass(frozen=True)
class CheckRow:
    """The question of a check: ids, codes and dates (no PHI; the member id as a digest)."""

    check_id: str
    organization_id: str
    patient_id: str
    payer_id: str
    service_type: str
    service_date: date
    member_digest: bytes = field(repr=False)
    requested_by: str
    requested_at: datetime
    plan_id: str = ""
    appointment_id: str = ""


@dataclass(frozen=True)
class Completion:
    """The final state written to a check."""

    check_id: str
    status: str
    source: str | None
    completed_at: datetime
    responded_at: datetime | None
    error_kind: str | None
    exchange_id: str | None
    sealed_outcome: bytes = field(repr=False)


@dataclass(frozen=True)
class StoredCheck:
    """A check as stored: its question, status, and the sealed outcome once final."""

    row: CheckRow
    status: str
    source: str | None
    exchange_id: str | None
    sealed_outcome: bytes | None = field(repr=False)


@dataclass(frozen=True)
class CompletedCheck:
    """What the event of a check just completed needs (ids only)."""

    check_id: str
    organization_id: str
    patient_id: str
    appointment_id: str
    payer_id: str
    service_type: str


@dataclass(frozen=True)
class ExchangeEnd:
    """How an exchange ended, for its audit row."""

    outcome: str
    description: str
    payload_id: str | None
    attempts: int
    http_status: int | None
    core_error_code: str | None
    elapsed_ms: float
    finished_at: datetime
    sealed_response: bytes | None = field(repr=False)


_CHECK_COLUMNS = (
    "check_id, organization_id, patient_id, payer_id, service_type, service_date,"
    " member_digest, requested_by, requested_at, plan_id, appointment_id"
)


async def insert_pending(conn: Connection, row: CheckRow) -> None:
    await conn.execute(
        f"INSERT INTO eligibility.checks ({_CHECK_COLUMNS}, status)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'PENDING')",
        _row_values(row),
    )


async def insert_completed(conn: Connection, row: CheckRow, completion: Completion) -> None:
    await conn.execute(
        f"INSERT INTO eligibility.checks ({_CHECK_COLUMNS}, status, source, completed_at,"
        " responded_at, error_kind, exchange_id, outcome)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            *_row_values(row),
            completion.status,
            completion.source,
            completion.completed_at,
            completion.responded_at,
            completion.error_kind,
            completion.exchange_id,
            completion.sealed_outcome,
        ),
    )


def _row_values(row: CheckRow) -> tuple[object, ...]:
    return (
        uuid.UUID(row.check_id),
        row.organization_id,
        row.patient_id,
        row.payer_id,
        row.service_type,
        row.service_date,
        row.member_digest,
        row.requested_by,
        row.requested_at,
        row.plan_id,
        row.appointment_id,
    )


async def complete_pending(
    conn: Connection, completions: Sequence[Completion]
) -> list[CompletedCheck]:
    """Write final states to those of the checks still PENDING; return the ones written.

    `status = 'PENDING'` in the WHERE clause makes completion happen once per check even
    when the exchange's finisher and the sweeper of abandoned checks race: the loser's
    UPDATE finds the row no longer pending, returns nothing, and emits no second event.
    """
    if not completions:
        return []
    cursor = await conn.execute(
        "UPDATE eligibility.checks AS c SET status = u.status, source = u.source,"
        " completed_at = u.completed_at, responded_at = u.responded_at,"
        " error_kind = u.error_kind, exchange_id = u.exchange_id, outcome = u.outcome"
        " FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::timestamptz[],"
        " %s::timestamptz[], %s::text[], %s::uuid[], %s::bytea[])"
        " AS u(check_id, status, source, completed_at, responded_at, error_kind,"
        " exchange_id, outcome)"
        " WHERE c.check_id = u.check_id AND c.status = 'PENDING'"
        " RETURNING c.check_id, c.organization_id, c.patient_id, c.appointment_id,"
        " c.payer_id, c.service_type",
        (
            [uuid.UUID(c.check_id) for c in completions],
            [c.status for c in completions],
            [c.source for c in completions],
            [c.completed_at for c in completions],
            [c.responded_at for c in completions],
            [c.error_kind for c in completions],
            [None if c.exchange_id is None else uuid.UUID(c.exchange_id) for c in completions],
            [c.sealed_outcome for c in completions],
        ),
    )
    rows = await cursor.fetchall()
    # Sorted: the outbox locks one counter row per check, in a consistent order.
    return sorted(
        (CompletedCheck(str(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in rows),
        key=lambda c: c.check_id,
    )


async def stale_pending(conn: Connection, older_than: datetime, limit: int) -> list[str]:
    """Ids of checks PENDING since before `older_than` (left by a process that stopped)."""
    cursor = await conn.execute(
        "SELECT check_id FROM eligibility.checks"
        " WHERE status = 'PENDING' AND requested_at < %s ORDER BY requested_at LIMIT %s",
        (older_than, limit),
    )
    return [str(r[0]) for r in await cursor.fetchall()]


async def abandon_exchanges(conn: Connection, older_than: datetime, now: datetime) -> int:
    """Close audit rows of exchanges still IN_FLIGHT long after any could still finish."""
    cursor = await conn.execute(
        "UPDATE eligibility.exchanges SET outcome = 'ABANDONED', finished_at = %s,"
        " description = 'the process running the exchange stopped before it ended'"
        " WHERE outcome = 'IN_FLIGHT' AND started_at < %s",
        (now, older_than),
    )
    return cursor.rowcount


async def load_check(conn: Connection, check_id: str) -> StoredCheck | None:
    cursor = await conn.execute(
        f"SELECT {_CHECK_COLUMNS}, status, source, exchange_id, outcome"
        " FROM eligibility.checks WHERE check_id = %s",
        (uuid.UUID(check_id),),
    )
    found = await cursor.fetchone()
    if found is None:
        return None
    row = CheckRow(
        check_id=str(found[0]),
        organization_id=found[1],
        patient_id=found[2],
        payer_id=found[3],
        service_type=found[4],
        service_date=found[5],
        member_digest=bytes(found[6]),
        requested_by=found[7],
        requested_at=found[8],
        plan_id=found[9],
        appointment_id=found[10],
    )
    exchange_id = None if found[13] is None else str(found[13])
    sealed = None if found[14] is None else bytes(found[14])
    return StoredCheck(row, found[11], found[12], exchange_id, sealed)


async def insert_exchange(
    conn: Connection,
    *,
    exchange_id: str,
    payer_id: str,
    transport: str,
    started_at: datetime,
    sealed_request: bytes,
) -> None:
    await conn.execute(
        "INSERT INTO eligibility.exchanges"
        " (exchange_id, payer_id, transport, started_at, request_x12)"
        " VALUES (%s, %s, %s, %s, %s)",
        (uuid.UUID(exchange_id), payer_id, transport, started_at, sealed_request),
    )


async def finish_exchange(conn: Connection, exchange_id: str, end: ExchangeEnd) -> None:
    await conn.execute(
        "UPDATE eligibility.exchanges SET outcome = %s, description = %s, payload_id = %s,"
        " attempts = %s, http_status = %s, core_error_code = %s, elapsed_ms = %s,"
        " finished_at = %s, response_payload = %s WHERE exchange_id = %s",
        (
            end.outcome,
            end.description,
            end.payload_id,
            end.attempts,
            end.http_status,
            end.core_error_code,
            end.elapsed_ms,
            end.finished_at,
            end.sealed_response,
            uuid.UUID(exchange_id),
        ),
    )


async def load_exchange_bodies(
    conn: Connection, exchange_id: str
) -> tuple[bytes, bytes | None] | None:
    """The sealed 270 and response of an exchange."""
    cursor = await conn.execute(
        "SELECT request_x12, response_payload FROM eligibility.exchanges WHERE exchange_id = %s",
        (uuid.UUID(exchange_id),),
    )
    found = await cursor.fetchone()
    if found is None:
        return None
    return bytes(found[0]), None if found[1] is None else bytes(found[1])


async def add_verified_event(
    conn: Connection, check: CompletedCheck, *, event_id: uuid.UUID, payload: bytes
) -> None:
    await add_event(
        conn,
        SCHEMA,
        subject=VERIFIED_SUBJECT,
        event_type=VERIFIED_EVENT_TYPE,
        aggregate_type=AGGREGATE_TYPE,
        aggregate_id=check.check_id,
        payload=payload,
        event_id=event_id,
    )
