"""The eligibility use cases on real PostgreSQL and Redis against the payer simulator:
cache, single flight (in and across processes), PENDING with its late event, audit privacy,
authorization and the sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest

from common.auth import Principal, Role
from common.crypto import BlindIndex, field_context
from common.errors import NotFound, PermissionDenied
from deploy.certs import DevPki
from eligibility_svc import store
from eligibility_svc.domain import (
    CheckCommand,
    CheckStatus,
    ErrorKind,
    Person,
    Source,
)
from eligibility_svc.service import MEMBER_ID_PURPOSE
from medsched.eligibility.v1 import eligibility_pb2
from medsched.events.v1 import envelope_pb2
from tests.integration.eligibility.conftest import (
    ORGANIZATION,
    PAYER_ID,
    SLOW_MEMBER,
    Harness,
    make_service,
    route_to,
    wait_for,
)

BOOKING = Principal(subject="svc-booking", role=Role.SERVICE)
STAFF = Principal(subject="staff-1", role=Role.STAFF, organization_ids=frozenset({ORGANIZATION}))
ADMIN = Principal(subject="admin-1", role=Role.ADMIN)
# PHI of the patient in these tests: none of it may appear in clear text at rest.
MEMBER_ID = "SIMA00001"
FAMILY_NAME = "SMITH"
GIVEN_NAME = "JOHN"
BIRTH_DATE = date(1980, 1, 15)


def command(
    member_id: str = MEMBER_ID,
    *,
    patient_id: str = "pat-1",
    payer_id: str = PAYER_ID,
    max_wait_s: float | None = None,
    max_cache_age_s: float | None = None,
    appointment_id: str = "appt-1",
) -> CheckCommand:
    # The simulator checks birth dates: only the member the PHI constants describe gets one.
    birth_date = BIRTH_DATE if member_id == MEMBER_ID else None
    return CheckCommand(
        organization_id=ORGANIZATION,
        patient_id=patient_id,
        payer_id=payer_id,
        member_id=member_id,
        service_type="98",
        service_date=date(2026, 3, 2),
        patient=Person(FAMILY_NAME, GIVEN_NAME, birth_date=birth_date, sex="M"),
        appointment_id=appointment_id,
        max_wait_s=max_wait_s,
        max_cache_age_s=max_cache_age_s,
    )


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


async def events(harness: Harness) -> list[envelope_pb2.EventEnvelope]:
    async with harness.pool.connection() as conn:
        cursor = await conn.execute("SELECT subject, payload FROM eligibility.outbox ORDER BY id")
        rows = await cursor.fetchall()
    assert all(subject == "medsched.eligibility.verified" for subject, _ in rows)
    return [envelope_pb2.EventEnvelope.FromString(bytes(payload)) for _, payload in rows]


async def test_second_check_is_answered_from_the_cache_without_calling_the_payer(
    harness: Harness,
) -> None:
    first = await harness.service.check(command(), BOOKING, deadline=soon())
    second = await harness.service.check(command(appointment_id="appt-2"), BOOKING, deadline=soon())

    assert (first.status, first.source) == (CheckStatus.ACTIVE, Source.PAYER)
    assert (second.status, second.source) == (CheckStatus.ACTIVE, Source.CACHE)
    assert second.check_id != first.check_id
    assert second.outcome == first.outcome
    assert harness.simulator.stats.requests == 1
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert timedelta(minutes=5) <= second.age(later) < timedelta(minutes=6)
    assert first.age(later) == timedelta(0)
    # Only the live exchange announces itself.
    assert [e.eligibility_verified.check_id for e in await events(harness)] == [first.check_id]


async def test_a_cache_hit_is_on_record_before_it_is_answered(harness: Harness) -> None:
    await harness.service.check(command(), BOOKING, deadline=soon())
    hit = await harness.service.check(command(appointment_id="appt-2"), BOOKING, deadline=soon())
    assert hit.source is Source.CACHE

    # Read back at once, from the row alone: written and committed before the answer.
    stored = await harness.service.get(hit.check_id, STAFF, full=False)
    assert stored.check == hit
    async with harness.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT c.status, c.source, c.exchange_id, c.outcome, e.exchange_id IS NOT NULL"
            " FROM eligibility.checks AS c LEFT JOIN eligibility.exchanges AS e"
            " ON e.exchange_id = c.exchange_id WHERE c.check_id = %s",
            (uuid.UUID(hit.check_id),),
        )
        status, source, exchange_id, sealed, exchange_kept = await cursor.fetchone() or ()
        cursor = await conn.execute("SELECT count(*) FROM eligibility.exchanges")
        assert await cursor.fetchone() == (1,)
    assert (status, source) == ("ACTIVE", "CACHE")
    # The hit points at the audited exchange its answer came from, and adds none of its own.
    assert hit.outcome is not None
    assert str(exchange_id) == hit.outcome.exchange_id
    assert exchange_kept
    # The row holds exactly the bytes the cache held, sealed to this check.
    (answer_key,) = [k async for k in harness.redis.scan_iter(match=f"{harness.prefix}:answer:*")]
    digest = _bytes(answer_key).decode().rsplit(":", 1)[-1]
    cached = harness.cipher.decrypt(
        _bytes(await harness.redis.get(answer_key)),
        context=field_context("eligibility.cache.answer", digest),
    )
    stored_outcome = harness.cipher.decrypt(
        bytes(sealed), context=store.outcome_context(hit.check_id)
    )
    assert stored_outcome == cached


async def test_failed_check_write_returns_its_connection_ready_for_transactions(
    harness: Harness,
) -> None:
    await harness.service.check(command(), BOOKING, deadline=soon())
    async with harness.pool.connection() as conn:
        await conn.execute(
            "ALTER TABLE eligibility.checks ADD CONSTRAINT test_no_cache_rows"
            " CHECK (source IS DISTINCT FROM 'CACHE')"
        )
    with pytest.raises(psycopg.errors.CheckViolation):
        await harness.service.check(command(appointment_id="appt-2"), BOOKING, deadline=soon())
    after_failed_hit = await _idle_connections_in_transaction_mode(harness)
    await harness.service.check(command(max_cache_age_s=0), BOOKING, deadline=soon())

    assert after_failed_hit
    assert await _idle_connections_in_transaction_mode(harness)
    # Transaction mode really holds: a rolled-back write leaves nothing behind.
    async with harness.pool.connection() as conn:
        await conn.execute("DELETE FROM eligibility.checks")
        await conn.rollback()
        cursor = await conn.execute("SELECT count(*) FROM eligibility.checks")
        assert await cursor.fetchone() == (2,)


async def _idle_connections_in_transaction_mode(harness: Harness) -> bool:
    """Whether every idle pooled connection has autocommit off, as the pool hands them out."""
    idle = harness.pool.get_stats().get("pool_available", 0)
    assert idle > 0
    async with contextlib.AsyncExitStack() as stack:
        connections = [
            await stack.enter_async_context(harness.pool.connection()) for _ in range(idle)
        ]
        return all(not conn.autocommit for conn in connections)


async def test_zero_max_cache_age_always_asks_the_payer(harness: Harness) -> None:
    await harness.service.check(command(), BOOKING, deadline=soon())
    fresh = await harness.service.check(command(max_cache_age_s=0), BOOKING, deadline=soon())
    assert fresh.source is Source.PAYER
    assert harness.simulator.stats.requests == 2


async def test_concurrent_identical_checks_share_one_payer_call(harness: Harness) -> None:
    checks = await asyncio.gather(
        *(harness.service.check(command(), BOOKING, deadline=soon()) for _ in range(10))
    )
    assert harness.simulator.stats.requests == 1
    assert {c.status for c in checks} == {CheckStatus.ACTIVE}
    assert {c.source for c in checks} == {Source.PAYER}
    assert len({c.check_id for c in checks}) == 10
    async with harness.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT status, count(DISTINCT exchange_id), count(*) FROM eligibility.checks"
            " GROUP BY status"
        )
        assert await cursor.fetchall() == [("ACTIVE", 1, 10)]
    assert len(await events(harness)) == 10


async def test_identical_checks_in_two_processes_share_one_payer_call(
    harness: Harness, pki: DevPki
) -> None:
    # A second service instance is another process's in-process state: only Redis is shared.
    other = make_service(
        pool=harness.pool,
        redis=harness.redis,
        client=harness.client,
        route=route_to(harness.simulator, pki),
        cipher=harness.cipher,
        blind_index=harness.blind_index,
        prefix=harness.prefix,
    )
    try:
        slow = command(SLOW_MEMBER.member_id)
        checks = await asyncio.gather(
            *(harness.service.check(slow, BOOKING, deadline=soon()) for _ in range(5)),
            *(other.check(slow, BOOKING, deadline=soon()) for _ in range(5)),
        )
    finally:
        await other.close(grace_s=2.0)
    assert harness.simulator.stats.requests == 1
    assert {c.status for c in checks} == {CheckStatus.ACTIVE}
    assert len({c.outcome.exchange_id for c in checks if c.outcome is not None}) == 1


async def test_slow_payer_gives_pending_then_the_check_completes_with_an_event(
    harness: Harness,
) -> None:
    started = time.monotonic()
    pending = await harness.service.check(
        command(SLOW_MEMBER.member_id, max_wait_s=0.05), BOOKING, deadline=soon()
    )
    assert time.monotonic() - started < 0.2
    assert pending.status is CheckStatus.PENDING
    assert pending.source is None

    async def completed() -> bool:
        view = await harness.service.get(pending.check_id, BOOKING, full=False)
        return view.check.status is not CheckStatus.PENDING

    await wait_for(completed, timeout_s=3.0, what="the slow payer's answer")
    view = await harness.service.get(pending.check_id, BOOKING, full=False)
    assert (view.check.status, view.check.source) == (CheckStatus.ACTIVE, Source.PAYER)
    assert view.check.outcome is not None
    assert view.check.outcome.plan is not None
    assert view.check.outcome.plan.name == "SILVER PPO 2000"

    (event,) = await events(harness)
    assert event.event_type == "eligibility.verified"
    assert event.aggregate_id == pending.check_id
    assert event.organization_id == ORGANIZATION
    verified = event.eligibility_verified
    assert (verified.check_id, verified.patient_id, verified.appointment_id) == (
        pending.check_id,
        "pat-1",
        "appt-1",
    )
    assert (verified.payer_id, verified.service_type_code) == (PAYER_ID, "98")
    assert verified.status == eligibility_pb2.ACTIVE
    assert verified.HasField("response_time")


async def test_payer_that_never_answers_costs_the_caller_no_more_than_its_deadline(
    harness: Harness,
) -> None:
    started = time.monotonic()
    check = await harness.service.check(command("SIMT00006"), BOOKING, deadline=soon(0.3))
    elapsed = time.monotonic() - started
    assert check.status is CheckStatus.PENDING
    assert elapsed < 0.3


async def test_audit_rows_and_cache_hold_no_plaintext_phi(harness: Harness) -> None:
    check = await harness.service.check(command(), BOOKING, deadline=soon())
    assert check.status is CheckStatus.ACTIVE
    secrets_at_rest = [
        MEMBER_ID.encode(),
        FAMILY_NAME.encode(),
        GIVEN_NAME.encode(),
        BIRTH_DATE.strftime("%Y%m%d").encode(),
        b"SILVER PPO",
        b"ACME WIDGETS",
    ]
    async with harness.pool.connection() as conn:
        raw: list[bytes] = []
        for table in ("checks", "exchanges", "outbox"):
            cursor = await conn.execute(f"SELECT * FROM eligibility.{table}")
            for row in await cursor.fetchall():
                raw += [
                    bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode() for v in row
                ]
        cursor = await conn.execute("SELECT request_x12, exchange_id FROM eligibility.exchanges")
        sealed_request, exchange_id = await cursor.fetchone() or (b"", None)
    keys = [key async for key in harness.redis.scan_iter(match=f"{harness.prefix}:*")]
    values = [_bytes(await harness.redis.get(key) or b"") for key in keys]
    assert len(keys) == 2  # the answer and the exchange's published result
    blob = b"\n".join([*raw, *(_bytes(k) for k in keys), *values])
    for secret in secrets_at_rest:
        assert secret not in blob, f"{secret!r} stored in clear text"
    # The ciphertexts do hold the 270: decrypted under their context it names the member.
    request = harness.cipher.decrypt(
        bytes(sealed_request), context=store.request_context(str(exchange_id))
    )
    assert MEMBER_ID.encode() in request
    assert FAMILY_NAME.encode() in request
    # The member is findable by its keyed hash only.
    digest = harness.blind_index.digest(MEMBER_ID, purpose=MEMBER_ID_PURPOSE)
    async with harness.pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT check_id FROM eligibility.checks WHERE member_digest = %s", (digest,)
        )
        assert [str(r[0]) for r in await cursor.fetchall()] == [check.check_id]
    other_key = BlindIndex(secrets.token_bytes(32)).digest(MEMBER_ID, purpose=MEMBER_ID_PURPOSE)
    assert other_key != digest


def _bytes(value: object) -> bytes:
    return bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode()


async def test_full_view_returns_the_x12_bodies_to_administrators_only(harness: Harness) -> None:
    check = await harness.service.check(command(), BOOKING, deadline=soon())
    full = await harness.service.get(check.check_id, ADMIN, full=True)
    assert full.x12_request.startswith(b"ISA*")
    assert b"ST*270*" in full.x12_request
    assert b"ST*271*" in full.x12_response
    basic = await harness.service.get(check.check_id, STAFF, full=False)
    assert (basic.x12_request, basic.x12_response) == (b"", b"")
    with pytest.raises(PermissionDenied):
        await harness.service.get(check.check_id, STAFF, full=True)


async def test_patients_check_and_read_only_their_own_eligibility(harness: Harness) -> None:
    patient = Principal(subject="user-1", role=Role.PATIENT, patient_id="pat-1")
    intruder = Principal(subject="user-2", role=Role.PATIENT, patient_id="pat-2")
    outsider = Principal(subject="staff-9", role=Role.STAFF, organization_ids=frozenset({"x"}))
    own = await harness.service.check(command(), patient, deadline=soon())
    assert own.status is CheckStatus.ACTIVE
    assert (await harness.service.get(own.check_id, patient, full=False)).check == own
    with pytest.raises(PermissionDenied):
        await harness.service.check(command(), intruder, deadline=soon())
    with pytest.raises(PermissionDenied):
        await harness.service.check(command(), outsider, deadline=soon())
    for stranger in (intruder, outsider):
        with pytest.raises(NotFound):
            await harness.service.get(own.check_id, stranger, full=False)
    with pytest.raises(NotFound):
        await harness.service.get(str(uuid.uuid4()), ADMIN, full=False)


async def test_unknown_payer_is_an_error_answer_not_a_failure(harness: Harness) -> None:
    check = await harness.service.check(command(payer_id="NOPAYER"), BOOKING, deadline=soon())
    assert check.status is CheckStatus.ERROR
    assert check.outcome is not None
    assert check.outcome.error is not None
    assert check.outcome.error.kind is ErrorKind.UNKNOWN_PAYER
    assert not check.outcome.error.retryable
    stored = await harness.service.get(check.check_id, BOOKING, full=False)
    assert stored.check.status is CheckStatus.ERROR
    assert harness.simulator.stats.requests == 0


async def test_sweeper_closes_checks_a_stopped_process_left_pending(harness: Harness) -> None:
    abandoned = store.CheckRow(
        check_id=str(uuid.uuid4()),
        organization_id=ORGANIZATION,
        patient_id="pat-3",
        payer_id=PAYER_ID,
        service_type="30",
        service_date=date(2026, 3, 2),
        member_digest=b"\x00" * 32,
        requested_by="svc-booking",
        requested_at=datetime.now(UTC) - timedelta(minutes=10),
        appointment_id="appt-3",
    )
    recent = replace(abandoned, check_id=str(uuid.uuid4()), requested_at=datetime.now(UTC))
    async with harness.pool.connection() as conn:
        await store.insert_pending(conn, abandoned)
        await store.insert_pending(conn, recent)

    assert await harness.service.sweep() == 1
    assert await harness.service.sweep() == 0
    closed = await harness.service.get(abandoned.check_id, BOOKING, full=False)
    assert closed.check.status is CheckStatus.ERROR
    assert closed.check.outcome is not None
    assert closed.check.outcome.error is not None
    assert closed.check.outcome.error.kind is ErrorKind.PAYER_TIMEOUT
    still = await harness.service.get(recent.check_id, BOOKING, full=False)
    assert still.check.status is CheckStatus.PENDING
    (event,) = await events(harness)
    assert event.eligibility_verified.check_id == abandoned.check_id
    assert event.eligibility_verified.status == eligibility_pb2.ERROR
