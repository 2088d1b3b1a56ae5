"""Writing a transaction's events: `EventEnvelope`s into the producer's outbox, in one step.

A service that changes several aggregates in one transaction (a booking changes an
appointment and a provider's slot inventory) hands every event to `write_events`. It
reserves the aggregates' sequence numbers first (`common.outbox.reserve_sequences`, counter
rows locked in a fixed order, so writers cannot deadlock on them), puts each number into its
envelope, and inserts the rows with one round trip. Subjects come from the payload message's
`event_subject` option, so a producer cannot send an event to the wrong subject.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from google.protobuf.message import Message
from psycopg import sql
from psycopg.types.json import Jsonb

from common import bus
from common.db import Connection, check_schema_name
from common.outbox import reserve_sequences, trace_headers
from medsched.common.v1 import options_pb2, types_pb2
from medsched.events.v1 import envelope_pb2

_PAYLOAD_FIELDS: dict[str, str] = {
    field.message_type.full_name: field.name
    for field in envelope_pb2.EventEnvelope.DESCRIPTOR.oneofs_by_name["payload"].fields
    if field.message_type is not None
}


def subject_of(message: Message) -> str:
    """The subject an event message declares with the `event_subject` option."""
    subject: str = message.DESCRIPTOR.GetOptions().Extensions[options_pb2.event_subject]
    if not subject:
        raise ValueError(f"{message.DESCRIPTOR.full_name} declares no event subject")
    return subject


@dataclass(frozen=True)
class Event:
    """One event of a transaction: which aggregate it belongs to and its payload message."""

    aggregate_type: str
    aggregate_id: str
    payload: Message


@dataclass(frozen=True)
class Origin:
    """What every event of one transaction shares: tenant, instant, who, correlation."""

    organization_id: str
    occurred_at: datetime
    actor_role: types_pb2.ActorRole.ValueType
    actor_id: str = ""
    correlation_id: str = ""


async def write_events(
    conn: Connection, schema: str, origin: Origin, events: Sequence[Event]
) -> list[uuid.UUID]:
    """Write `events` (in order) into `<schema>.outbox` within the caller's transaction."""
    if not events:
        return []
    counts: dict[tuple[str, str], int] = {}
    for event in events:
        key = (event.aggregate_type, event.aggregate_id)
        counts[key] = counts.get(key, 0) + 1
    next_seq = await reserve_sequences(conn, schema, counts)
    headers = Jsonb(trace_headers())
    rows = []
    ids = []
    for event in events:
        field_name = _PAYLOAD_FIELDS.get(event.payload.DESCRIPTOR.full_name)
        if field_name is None:
            raise ValueError(f"{event.payload.DESCRIPTOR.full_name} is not an envelope payload")
        subject = subject_of(event.payload)
        bus.check_subject(subject)
        key = (event.aggregate_type, event.aggregate_id)
        sequence = next_seq[key]
        next_seq[key] = sequence + 1
        event_id = uuid.uuid4()
        envelope = envelope_pb2.EventEnvelope(
            event_id=str(event_id),
            event_type=subject.removeprefix("medsched."),
            aggregate_type=event.aggregate_type,
            aggregate_id=event.aggregate_id,
            aggregate_sequence=sequence,
            organization_id=origin.organization_id,
            actor_role=origin.actor_role,
            actor_id=origin.actor_id,
            correlation_id=origin.correlation_id,
        )
        envelope.occurred_at.FromDatetime(origin.occurred_at)
        getattr(envelope, field_name).CopyFrom(event.payload)
        rows.append(
            (
                event_id,
                subject,
                envelope.event_type,
                event.aggregate_type,
                event.aggregate_id,
                sequence,
                envelope.SerializeToString(),
                headers,
            )
        )
        ids.append(event_id)
    async with conn.cursor() as cursor:
        await cursor.executemany(
            sql.SQL(
                "INSERT INTO {}.outbox (event_id, subject, event_type, aggregate_type,"
                " aggregate_id, aggregate_seq, payload, headers)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            ).format(sql.Identifier(check_schema_name(schema))),
            rows,
        )
    return ids
