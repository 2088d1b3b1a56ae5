"""Cheap slot-event encoding gives the bytes the generated classes would parse to the same event."""

from __future__ import annotations

from datetime import UTC, datetime

from availability_svc.event_batch import (
    EnvelopeHeader,
    GranuleEncoder,
    envelope_field,
    length_delimited,
    pending_event,
    subject_of,
)
from medsched.common.v1 import types_pb2
from medsched.events.v1 import envelope_pb2, slot_events_pb2

GRANULES_FIELD = 4  # SlotsMaterialized.granules
START = 1_772_456_400  # 2026-03-02T13:00:00Z


def expected_materialized(versions: list[int]) -> slot_events_pb2.SlotsMaterialized:
    message = slot_events_pb2.SlotsMaterialized(
        provider_id="p-1", location_id="l-1", local_date="2026-03-02", visit_type_ids=["v-1"]
    )
    for i, version in enumerate(versions):
        granule = message.granules.add(version=version)
        granule.start_time.seconds = START + 900 * i
        granule.end_time.seconds = START + 900 * (i + 1)
    return message


def test_new_granules_parse_to_the_message_built_the_ordinary_way() -> None:
    encoder = GranuleEncoder(900)
    head = slot_events_pb2.SlotsMaterialized(
        provider_id="p-1", location_id="l-1", local_date="2026-03-02", visit_type_ids=["v-1"]
    )
    raw = head.SerializeToString() + encoder.new_granules(
        GRANULES_FIELD, range(START, START + 900 * 5, 900)
    )
    assert slot_events_pb2.SlotsMaterialized.FromString(raw) == expected_materialized([1] * 5)


def test_granules_with_versions_keep_each_version_and_reuse_cached_entries() -> None:
    encoder = GranuleEncoder(900)
    starts = [START, START + 900, START + 1800]
    first = encoder.granules(GRANULES_FIELD, starts, [2, 7, 300])
    second = encoder.granules(GRANULES_FIELD, starts, [2, 7, 300])
    head = expected_materialized([]).SerializeToString()
    assert first == second
    assert slot_events_pb2.SlotsMaterialized.FromString(head + first) == expected_materialized(
        [2, 7, 300]
    )


def test_envelope_carries_the_event_as_its_payload() -> None:
    event = pending_event(expected_materialized([1]), "slots_materialized", "slots", "p-1")
    header = EnvelopeHeader(
        organization_id="org-1",
        occurred_at=datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        actor_role=types_pb2.STAFF,
        actor_id="staff-1",
    )
    raw = (
        envelope_pb2.EventEnvelope(event_id="e-1", aggregate_sequence=1000).SerializeToString()
        + header.encode()
        + length_delimited(envelope_field(event.payload_field), event.payload)
    )
    envelope = envelope_pb2.EventEnvelope.FromString(raw)
    assert envelope.WhichOneof("payload") == "slots_materialized"
    assert envelope.slots_materialized == expected_materialized([1])
    assert (envelope.organization_id, envelope.actor_role, envelope.actor_id) == (
        "org-1",
        types_pb2.STAFF,
        "staff-1",
    )
    assert envelope.aggregate_sequence == 1000
    assert envelope.occurred_at.ToDatetime(tzinfo=UTC) == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert event.subject == subject_of(slot_events_pb2.SlotsMaterialized)
    assert event.event_type == "slots.materialized"


def test_long_payloads_use_multi_byte_lengths() -> None:
    payload = b"x" * 300
    encoded = length_delimited(3, payload)
    assert encoded[:3] == bytes([3 << 3 | 2, 0xAC, 0x02])  # 300 = 0b10_0101100
    assert encoded[3:] == payload
