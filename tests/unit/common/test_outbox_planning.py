"""The relay's pure planning: per-aggregate chains in sequence order, and message headers."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.bus import check_extra_headers
from common.outbox import OutboxRow, plan_chains


def row(row_id: int, aggregate_id: str, seq: int) -> OutboxRow:
    return OutboxRow(
        id=row_id,
        event_id=uuid.UUID(int=row_id),
        subject="medsched.slot.freed",
        event_type="SlotFreed",
        aggregate_type="slot",
        aggregate_id=aggregate_id,
        aggregate_seq=seq,
        payload=b"",
        headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    )


def test_rows_are_grouped_per_aggregate_in_sequence_order_oldest_chain_first() -> None:
    rows = [row(10, "b", 4), row(11, "a", 1), row(12, "b", 5), row(13, "a", 2), row(14, "c", 9)]

    chains = plan_chains(rows)

    assert [[(r.aggregate_id, r.aggregate_seq) for r in chain] for chain in chains] == [
        [("b", 4), ("b", 5)],
        [("a", 1), ("a", 2)],
        [("c", 9)],
    ]


def test_chain_stops_at_a_gap_so_a_row_never_overtakes_a_missing_predecessor() -> None:
    chains = plan_chains([row(1, "a", 1), row(2, "a", 2), row(3, "a", 4), row(4, "a", 5)])

    assert [[r.aggregate_seq for r in chain] for chain in chains] == [[1, 2]]


def test_same_aggregate_id_of_different_aggregate_types_are_separate_chains() -> None:
    appointment = OutboxRow(
        id=2,
        event_id=uuid.uuid4(),
        subject="medsched.appointment.booked",
        event_type="AppointmentBooked",
        aggregate_type="appointment",
        aggregate_id="42",
        aggregate_seq=1,
        payload=b"",
        headers={},
    )

    chains = plan_chains([row(1, "42", 1), appointment])

    assert [[r.aggregate_type for r in chain] for chain in chains] == [["slot"], ["appointment"]]


@given(
    st.lists(
        st.tuples(st.sampled_from("abcde"), st.integers(min_value=1, max_value=5)),
        min_size=1,
        max_size=60,
    ).flatmap(lambda picks: st.permutations(picks))
)
def test_every_contiguous_row_is_planned_once_and_in_sequence_order(
    picks: list[tuple[str, int]],
) -> None:
    # Each pick adds the next event of an aggregate whose sequence starts at `first`.
    first: dict[str, int] = {}
    next_seq: dict[str, int] = {}
    rows = []
    for row_id, (aggregate_id, start) in enumerate(picks, start=1):
        first.setdefault(aggregate_id, start)
        seq = next_seq.get(aggregate_id, first[aggregate_id])
        next_seq[aggregate_id] = seq + 1
        rows.append(row(row_id, aggregate_id, seq))

    chains = plan_chains(reversed(rows))

    planned = [r for chain in chains for r in chain]
    assert sorted(r.id for r in planned) == [r.id for r in rows]
    assert len({chain[0].aggregate_key for chain in chains}) == len(chains)
    for chain in chains:
        seqs = [r.aggregate_seq for r in chain]
        assert seqs == list(range(first[chain[0].aggregate_id], next_seq[chain[0].aggregate_id]))


def test_message_headers_carry_identity_order_and_trace_context() -> None:
    headers = row(7, "slot-9", 3).message_headers()

    assert headers == {
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "Medsched-Event-Type": "SlotFreed",
        "Medsched-Aggregate-Type": "slot",
        "Medsched-Aggregate-Id": "slot-9",
        "Medsched-Aggregate-Seq": "3",
    }


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"Nats-Msg-Id": "x"}, "reserved"),
        ({"medsched-aggregate-seq": "1"}, "reserved"),
        ({"bad name": "x"}, "invalid"),
        ({"traceparent": "a\r\nInjected: 1"}, "single-line"),
    ],
)
def test_caller_headers_cannot_forge_bus_headers_or_inject_lines(
    headers: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_extra_headers(headers)
