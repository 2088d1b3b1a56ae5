"""The booking domain without I/O: which status code a refusal gets, the status workflow
(every move from every status, for every role), and the request validators."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from booking_svc.checks import Checked
from booking_svc.domain import (
    CONFIRMATION_ALPHABET,
    IDEMPOTENCY_KEY_MAX,
    IDEMPOTENCY_KEY_MIN,
    BookingRefused,
    Move,
    MoveContext,
    RefusalReason,
    Status,
    Violation,
    check_free_text,
    check_idempotency_key,
    check_insurance,
    check_move,
    check_patient_id,
    check_person_name,
    etag_of,
    new_confirmation_code,
    parse_uuid,
    refusal_code,
)
from booking_svc.service import consumed_hold
from common.auth import Principal, Role
from common.errors import FailedPrecondition, PermissionDenied, ViolationCollector

NOW = datetime(2026, 3, 9, 15, 0, tzinfo=UTC)
RACE = {RefusalReason.TAKEN, RefusalReason.HELD_BY_OTHER, RefusalReason.RESOURCE_UNAVAILABLE}


def violation(reason: RefusalReason) -> Violation:
    return Violation(reason, f"because {reason.name}")


# ---- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", list(RefusalReason))
def test_a_single_reason_is_aborted_only_when_it_is_a_lost_race(reason: RefusalReason) -> None:
    expected = "ABORTED" if reason in RACE else "FAILED_PRECONDITION"
    assert refusal_code([violation(reason)]) == expected
    assert BookingRefused([violation(reason)]).grpc_code_name == expected


@given(st.sets(st.sampled_from(list(RefusalReason)), min_size=1))
def test_refusal_is_aborted_iff_every_reason_is_a_lost_race(reasons: set[RefusalReason]) -> None:
    refused = BookingRefused(violation(r) for r in reasons)
    expected = "ABORTED" if reasons <= RACE else "FAILED_PRECONDITION"
    assert refused.grpc_code_name == expected


def test_refusal_lists_violations_in_reason_order_with_their_names() -> None:
    refused = BookingRefused(
        [
            violation(RefusalReason.NOT_OFFERED),
            violation(RefusalReason.TAKEN),
            violation(RefusalReason.PLAN_NOT_ACCEPTED),
        ]
    )
    assert [v.reason for v in refused.violations] == [
        RefusalReason.TAKEN,
        RefusalReason.PLAN_NOT_ACCEPTED,
        RefusalReason.NOT_OFFERED,
    ]
    [info] = refused.reasons
    assert info.code == "BOOKING_REFUSED"
    assert info.metadata["reasons"] == "TAKEN,PLAN_NOT_ACCEPTED,NOT_OFFERED"
    assert "because NOT_OFFERED" in str(refused)


def test_a_refusal_needs_a_violation() -> None:
    with pytest.raises(ValueError, match="at least one violation"):
        BookingRefused([])


def test_refusal_reason_numbers_match_the_contract() -> None:
    from medsched.booking.v1 import appointment_pb2

    for reason in RefusalReason:
        assert appointment_pb2.BookingRefusal.Reason.Value(reason.name) == reason.value


# ---- the status workflow ------------------------------------------------------------------

PRINCIPALS = {
    Role.PATIENT: Principal(subject="u-1", role=Role.PATIENT, patient_id="p-1"),
    Role.STAFF: Principal(subject="s-1", role=Role.STAFF, organization_ids=frozenset({"o"})),
    Role.ADMIN: Principal(subject="a-1", role=Role.ADMIN),
    Role.SERVICE: Principal(subject="svc", role=Role.SERVICE),
}
LIVE = {Status.BOOKED, Status.PENDING_VERIFICATION}
# The contract (appointment.proto, "Status workflow"), written out independently of domain.py:
# move -> (statuses it may leave, status it reaches, staff only).
CONTRACT: dict[Move, tuple[set[Status], Status | None, bool]] = {
    Move.CHECK_IN: (LIVE, Status.CHECKED_IN, True),
    Move.NO_SHOW: (LIVE, Status.NO_SHOW, True),
    Move.COMPLETE: ({Status.CHECKED_IN}, Status.COMPLETED, True),
    Move.CANCEL: (LIVE, Status.CANCELLED, False),
    Move.RESCHEDULE: (LIVE, None, False),
    Move.CONFIRM: ({Status.PENDING_VERIFICATION}, Status.BOOKED, False),
}


def expected_outcome(move: Move, status: Status, role: Role, started: bool) -> object:
    sources, target, staff_only = CONTRACT[move]
    if staff_only and role not in (Role.STAFF, Role.ADMIN):
        return PermissionDenied
    if status not in sources:
        return FailedPrecondition
    if move is Move.NO_SHOW and not started:
        return FailedPrecondition
    if role is Role.PATIENT and move in (Move.CANCEL, Move.RESCHEDULE) and started:
        return FailedPrecondition
    return target


@pytest.mark.parametrize(
    ("move", "status", "role", "started"),
    list(itertools.product(Move, Status, Role, (False, True))),
)
def test_every_move_from_every_status_for_every_role(
    move: Move, status: Status, role: Role, started: bool
) -> None:
    start = NOW - timedelta(minutes=1) if started else NOW + timedelta(hours=1)
    expected = expected_outcome(move, status, role, started)
    context = MoveContext(status=status, start=start, now=NOW)
    if isinstance(expected, type):
        with pytest.raises((FailedPrecondition, PermissionDenied)) as caught:
            check_move(move, PRINCIPALS[role], context)
        assert type(caught.value) is expected
        if isinstance(caught.value, FailedPrecondition):
            assert [r.code for r in caught.value.reasons] == ["APPOINTMENT_STATUS"]
    else:
        assert check_move(move, PRINCIPALS[role], context) == expected


def test_final_statuses_never_move() -> None:
    for status in (Status.COMPLETED, Status.NO_SHOW, Status.CANCELLED):
        for move in Move:
            with pytest.raises((FailedPrecondition, PermissionDenied)):
                check_move(move, PRINCIPALS[Role.STAFF], MoveContext(status, NOW, NOW))


def test_no_show_at_the_exact_start_is_allowed() -> None:
    context = MoveContext(Status.BOOKED, start=NOW, now=NOW)
    assert check_move(Move.NO_SHOW, PRINCIPALS[Role.STAFF], context) == Status.NO_SHOW


# ---- validators ------------------------------------------------------------------------------


def collect() -> ViolationCollector:
    return ViolationCollector()


def paths(errors: ViolationCollector) -> list[str]:
    return [v.field for v in errors.violations]


def test_parse_uuid() -> None:
    errors = collect()
    value = uuid.uuid4()
    assert parse_uuid(f" {value} ", "a", errors) == value
    assert parse_uuid("", "b", errors) is None
    assert parse_uuid("", "c", errors, required=False) is None
    assert parse_uuid("nope", "d", errors, required=False) is None
    assert paths(errors) == ["b", "d"]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("p-1", True),
        ("A.b:c_9", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        ("has space", False),
        ("é", False),
    ],
)
def test_patient_id(value: str, ok: bool) -> None:
    errors = collect()
    check_patient_id(value, "patient_id", errors)
    assert (paths(errors) == []) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("k" * IDEMPOTENCY_KEY_MIN, True),
        ("k" * IDEMPOTENCY_KEY_MAX, True),
        ("k" * (IDEMPOTENCY_KEY_MIN - 1), False),
        ("k" * (IDEMPOTENCY_KEY_MAX + 1), False),
        ("", False),
        ("abcdefgh\n", False),
        (str(uuid.uuid4()), True),
    ],
)
def test_idempotency_key(value: str, ok: bool) -> None:
    errors = collect()
    check_idempotency_key(value, "idempotency_key", errors)
    assert (paths(errors) == []) is ok


def test_free_text_limit() -> None:
    errors = collect()
    check_free_text("x" * 500, "a", errors)
    check_free_text("x" * 501, "b", errors)
    assert paths(errors) == ["b"]


@pytest.mark.parametrize(
    ("plan", "payer", "member", "bad"),
    [
        ("", "", "", []),
        ("simplan", "", "M1", []),
        ("simplan", "SIMPAYER", "M1", []),
        ("simplan", "", "", ["insurance_member_id"]),
        ("Bad Plan", "", "M1", ["insurance_plan_id"]),
        ("", "", "M1", ["insurance_member_id"]),
        ("", "SIMPAYER", "", ["insurance_payer_id"]),
        ("simplan", "", "M*1~", ["insurance_member_id"]),
        ("simplan", "", "M" * 81, ["insurance_member_id"]),
        ("simplan", "P" * 81, "M1", ["insurance_payer_id"]),
    ],
)
def test_insurance(plan: str, payer: str, member: str, bad: list[str]) -> None:
    errors = collect()
    assert check_insurance(f" {plan} ", payer, member, errors) == (plan, payer, member)
    assert paths(errors) == bad


def test_person_name() -> None:
    errors = collect()
    check_person_name("O'Brien-Smith", "a", errors)
    check_person_name("x" * 61, "b", errors)
    check_person_name("SMITH~ST*", "c", errors)
    assert paths(errors) == ["b", "c"]


def test_confirmation_codes_and_etags() -> None:
    codes = {new_confirmation_code() for _ in range(200)}
    assert all(len(c) == 6 and set(c) <= set(CONFIRMATION_ALPHABET) for c in codes)
    assert len(codes) > 190
    assert not set("01OIL") & set(CONFIRMATION_ALPHABET)
    assert etag_of(7) == 'W/"7"'


# ---- which hold a booking consumed ---------------------------------------------------------


def test_consumed_hold_is_the_named_one_or_the_only_one() -> None:
    checked = Checked(
        rules=None,  # type: ignore[arg-type]  # not read by consumed_hold
        provider_id=uuid.uuid4(),
        location_id=uuid.uuid4(),
        start=NOW,
        end=NOW,
        starts=[NOW],
        time_zone="UTC",
        visit_type_id=uuid.uuid4(),
    )
    mine, other = uuid.uuid4(), uuid.uuid4()
    assert consumed_hold(None, checked) is None
    checked.consumed_holds.add(mine)
    assert consumed_hold(None, checked) == mine
    assert consumed_hold(mine, checked) == mine
    assert consumed_hold(other, checked) is None
    checked.consumed_holds.add(other)
    assert consumed_hold(None, checked) is None
