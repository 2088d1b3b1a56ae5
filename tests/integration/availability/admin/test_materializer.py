"""Materialization against PostgreSQL: granules, the diff rules, conflicts, events, DST."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta

from availability_svc import store
from availability_svc.admin_model import (
    ConflictCause,
    ExceptionKind,
    ExceptionRecord,
    OverrideKind,
    OverrideRecord,
)
from availability_svc.materializer import ChangeCause, materialize_providers
from common.db import Connection, Pool
from medsched.events.v1 import envelope_pb2

from .conftest import NOW, Clinic, add_template, create_clinic, new_id, outbox_count, slot_rows

MONDAY = date(2026, 3, 2)


def utc(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def granules(first: datetime, count: int) -> list[datetime]:
    """Starts of `count` back-to-back 15-minute granules from `first`."""
    return [first + timedelta(minutes=15 * i) for i in range(count)]


async def run(
    conn: Connection, clinic: Clinic, first: date, last: date, cause: ChangeCause | None = None
) -> tuple[int, int, int, tuple[str, ...]]:
    stats = await materialize_providers(
        conn, clinic.org, [clinic.provider.id], first, last, cause=cause, now=NOW
    )
    assert stats.failures == ()
    return stats.opened, stats.blocked, stats.unchanged, stats.conflict_ids


async def events(conn: Connection) -> list[envelope_pb2.EventEnvelope]:
    cursor = await conn.execute("SELECT payload FROM availability.outbox ORDER BY id")
    return [envelope_pb2.EventEnvelope.FromString(row[0]) for row in await cursor.fetchall()]


def latest_granule_states(
    envelopes: list[envelope_pb2.EventEnvelope],
) -> dict[datetime, tuple[str, int]]:
    """What a consumer applying the slot events (newer version wins) ends up with."""
    state: dict[datetime, tuple[str, int]] = {}
    for env in envelopes:
        kind = env.WhichOneof("payload")
        if kind not in ("slots_materialized", "slots_blocked"):
            continue
        message = getattr(env, kind)
        status = "OPEN" if kind == "slots_materialized" else "BLOCKED"
        for granule in message.granules:
            start = granule.start_time.ToDatetime(tzinfo=UTC)
            if start not in state or state[start][1] < granule.version:
                state[start] = (status, granule.version)
    return state


async def test_template_becomes_granules_in_local_time(pool: Pool) -> None:
    async with pool.connection() as conn:
        clinic = await create_clinic(conn)
        await add_template(conn, clinic, clinic.midtown, [(1, "08:00", "12:00")])
        opened, blocked, unchanged, conflicts = await run(
            conn, clinic, MONDAY, MONDAY + timedelta(6)
        )
        rows = await slot_rows(conn, clinic.provider.id)

    assert (opened, blocked, unchanged, conflicts) == (16, 0, 0, ())
    # 08:00 EST is 13:00 UTC; 16 granules of 15 minutes, all OPEN, version 1, at Midtown.
    assert [r[0] for r in rows] == granules(utc(2026, 3, 2, 13), 16)
    assert all(r[1] - r[0] == timedelta(minutes=15) for r in rows)
    assert {(r[2], r[3], r[4]) for r in rows} == {(clinic.midtown.id, "OPEN", 1)}


async def test_second_run_changes_nothing_and_writes_no_events(pool: Pool) -> None:
    async with pool.connection() as conn:
        clinic = await create_clinic(conn)
        await add_template(
            conn, clinic, clinic.midtown, [(1, "08:00", "17:00"), (3, "09:00", "13:00")]
        )
        first = await run(conn, clinic, MONDAY, MONDAY + timedelta(13))
        rows_before = await slot_rows(conn, clinic.provider.id)
        events_before = await outbox_count(conn)
        second = await run(conn, clinic, MONDAY, MONDAY + timedelta(13))
        rows_after = await slot_rows(conn, clinic.provider.id)
        events_after = await outbox_count(conn)

    assert first[0] == 2 * (36 + 16)
    assert second == (0, 0, 2 * (36 + 16), ())
    assert rows_after == rows_before
    assert events_after == events_before == 4  # one SlotsMaterialized per provider-day


async def test_spring_forward_skips_the_missing_hour(pool: Pool) -> None:
    sunday = date(2026, 3, 8)
    async with pool.connection() as conn:
        clinic = await create_clinic(conn)
        await add_template(conn, clinic, clinic.midtown, [(7, "00:00", "06:00")])
        await run(conn, clinic, sunday, sunday)
        starts = [r[0] for r in await slot_rows(conn, clinic.provider.id)]

    # 00:00-02:00 EST (05:00-07:00Z), then 03:00-06:00 EDT (07:00-10:00Z); 02:00-02:45 local
    # never exists that night.
    expected = granules(utc(2026, 3, 8, 5), 8) + granules(utc(2026, 3, 8, 7), 12)
    assert starts == expected


async def test_fall_back_materializes_the_repeated_hour_once(pool: Pool) -> None:
    sunday = date(2026, 11, 1)
    async with pool.connection() as conn:
        clinic = await create_clinic(conn)
        await add_template(conn, clinic, clinic.midtown, [(7, "00:00", "03:00")])
        await run(conn, clinic, sunday, sunday)
        starts = [r[0] for r in await slot_rows(conn, clinic.provider.id)]

    # 00:00-01:45 EDT (04:00-05:45Z) with 01:xx at its first occurrence, then 02:00-02:45 EST
    # (07:00-07:45Z); the second pass through 01:xx (06:00-06:45Z) has no granules.
    expected = granules(utc(2026, 11, 1, 4), 8) + granules(utc(2026, 11, 1, 7), 4)
    assert starts == expected


async def test_multi_location_day_puts_each_window_at_its_location(pool: Pool) -> None:
    async with pool.connection() as conn:
        clinic = await create_clinic(conn)
        await add_template(conn, clinic, clinic.midtown, [(1, "08:00", "12:00")])
        await add_template(conn, clinic, clinic.uptown, [(1, "13:00", "17:00")])
        await run(conn, clinic, MONDAY, MONDAY)
        rows = await slot_rows(conn, clinic.provider.id)
        envelopes = await events(conn)

    by_location = defaultdict(list)
    for start, _, location, _, _ in rows:
        by_location[location].append(start)
    assert by_location[clinic.midtown.id][0] == utc(2026, 3, 2, 13)
    assert by_location[clinic.uptown.id][0] == utc(2026, 3, 2, 18)
    assert [len(by_location[clinic.midtown.id]), len(by_location[clinic.uptown.id])] == [16, 16]
    materialized = [e.slots_materialized for e in envelopes]
    assert sorted((m.location_id, m.local_date, len(m.granules)) for m in materialized) == sorted(
        [(clinic.midtown.id, "2026-03-02", 16), (clinic.uptown.id, "2026-03-02", 16)]
    )
    assert all(list(m.visit_type_ids) == [clinic.visit_type.id] for m in materialized)


async def test_whole_day_pto_blocks_and_deleting_it_reopens(pool: Pool) -> None:
    async with pool.connection() as conn:
        clinic = await create_clinic(conn)
        await add_template(
            conn, clinic, clinic.midtown, [(1, "08:00", "12:00"), (2, "08:00", "12:00")]
        )
        await run(conn, clinic, MONDAY, MONDAY + timedelta(1))
        pto = await store.insert_exception(
            conn,
            ExceptionRecord(
                new_id(),
                clinic.org.id,
                clinic.provider.id,
                None,
                ExceptionKind.PTO,
                MONDAY,
                MONDAY,
                None,
                None,
                "",
            ),
        )
        cause = ChangeCause(ConflictCause.EXCEPTION, pto.id)
        blocked_run = await run(conn, clinic, MONDAY, MONDAY, cause)
        rows = await slot_rows(conn, clinic.provider.id)
        await store.delete_exception(conn, clinic.org.id, pto.id)
        reopened_run = await run(conn, clinic, MONDAY, MONDAY)
        rows_after = await slot_rows(conn, clinic.provider.id)
        envelopes = await events(conn)

    assert blocked_run == (0, 16, 0, ())
    monday = [r for r in rows if r[0].date() == MONDAY]
    tuesday = [r for r in rows if r[0].date() == MONDAY + timedelta(1)]
    assert {(r[3], r[4]) for r in monday} == {("BLOCKED", 2)}
    assert {(r[3], r[4]) for r in tuesday} == {("OPEN", 1)}
    assert reopened_run == (16, 0, 0, ())
    assert {(r[3], r[4]) for r in rows_after if r[0].date() == MONDAY} == {("OPEN", 3)}
    blocked_event = next(e.slots_blocked for e in envelopes if e.HasField("slots_blocked"))
    assert blocked_event.cause_id == pto.id
    # The events, applied in order with "newer version wins", give exactly the slot rows.
    assert latest_granule_states(envelopes) == {r[0]: (r[3], r[4]) for r in rows_after}


async def test_part_day_admin_block_blocks_only_its_window(pool: Pool) -> None:
    async with pool.connection() as conn:
        clinic = await create_clinic(conn)
        await add_template(conn, clinic, clinic.midtown, [(1, "08:00", "12:00")])
        await run(conn, clinic, MONDAY, MONDAY)
        await store.insert_exception(
            conn,
            ExceptionRecord(
                new_id(),
                clinic.org.id,
                clinic.provider.id,
                clinic.midtown.id,
                ExceptionKind.ADMIN_BLOCK,
                MONDAY,
                MONDAY,
                9 * 60,
                10 * 60 + 30,
                "",
            ),
        )
        result = await run(conn, clinic, MONDAY, MONDAY)
        rows = await slot_rows(conn, clinic.provider.id)

    assert result == (0, 6, 10, ())
    blocked = [r[0] for r in rows if r[3] == "BLOCKED"]
    assert blocked == granules(utc(2026, 3, 2, 14), 6)


async def test_leave_early_and_add_hours_overrides(pool: Pool) -> None:
    async with pool.connection() as conn:
        clinic = await create_clinic(conn)
        await add_template(conn, clinic, clinic.midtown, [(1, "08:00", "17:00")])
        await store.insert_override(
            conn,
            OverrideRecord(
                new_id(),
                clinic.org.id,
                clinic.provider.id,
                clinic.midtown.id,
                MONDAY,
                OverrideKind.LEAVE_EARLY,
                15 * 60,
                24 * 60,
                (),
                "",
            ),
        )
        await store.insert_override(
            conn,
            OverrideRecord(
                new_id(),
                clinic.org.id,
                clinic.provider.id,
                clinic.uptown.id,
                MONDAY,
                OverrideKind.ADD_HOURS,
                18 * 60,
                19 * 60,
                (clinic.visit_type.id,),
                "",
            ),
        )
        result = await run(conn, clinic, MONDAY, MONDAY)
        rows = await slot_rows(conn, clinic.provider.id)

    # 08:00-15:00 at Midtown (28 granules), 18:00-19:00 at Uptown (4 granules).
    assert result[0] == 32
    assert (rows[-5][0], rows[-5][2]) == (utc(2026, 3, 2, 19, 45), clinic.midtown.id)
    assert [r[0] for r in rows[-4:]] == granules(utc(2026, 3, 2, 23), 4)
    assert {r[2] for r in rows[-4:]} == {clinic.uptown.id}


async def test_block_over_booked_visit_is_a_conflict_and_leaves_it_booked(pool: Pool) -> None:
    appointment = new_id()
    async with pool.connection() as conn:
        clinic = await create_clinic(conn)
        await add_template(conn, clinic, clinic.midtown, [(1, "08:00", "12:00")])
        await run(conn, clinic, MONDAY, MONDAY)
        # What booking_svc does when it books 09:00-09:30: the granules become BOOKED.
        await conn.execute(
            "UPDATE availability.slots SET status = 'BOOKED', appointment_id = %s::uuid,"
            " version = version + 1 WHERE provider_id = %s::uuid AND start_time IN (%s, %s)",
            (appointment, clinic.provider.id, utc(2026, 3, 2, 14), utc(2026, 3, 2, 14, 15)),
        )
        events_before = await outbox_count(conn)
        pto = await store.insert_exception(
            conn,
            ExceptionRecord(
                new_id(),
                clinic.org.id,
                clinic.provider.id,
                None,
                ExceptionKind.PTO,
                MONDAY,
                MONDAY,
                None,
                None,
                "",
            ),
        )
        opened, blocked, _, conflict_ids = await run(
            conn, clinic, MONDAY, MONDAY, ChangeCause(ConflictCause.EXCEPTION, pto.id)
        )
        again = await run(
            conn, clinic, MONDAY, MONDAY, ChangeCause(ConflictCause.EXCEPTION, pto.id)
        )
        rows = await slot_rows(conn, clinic.provider.id)
        conflict = await store.get_conflict(conn, clinic.org.id, conflict_ids[0])
        envelopes = (await events(conn))[events_before:]

    assert (opened, blocked, len(conflict_ids)) == (0, 14, 1)
    assert again == (0, 0, 0, ())  # the same visit is not reported twice
    booked = [(r[0], r[3], r[4]) for r in rows if r[3] == "BOOKED"]
    assert booked == [(utc(2026, 3, 2, 14), "BOOKED", 2), (utc(2026, 3, 2, 14, 15), "BOOKED", 2)]
    assert conflict is not None
    assert (conflict.appointment_id, conflict.start_time, conflict.end_time) == (
        appointment,
        utc(2026, 3, 2, 14),
        utc(2026, 3, 2, 14, 30),
    )
    assert (conflict.cause, conflict.cause_id) == (ConflictCause.EXCEPTION, pto.id)
    detected = [
        e.schedule_conflict_detected for e in envelopes if e.HasField("schedule_conflict_detected")
    ]
    assert [(d.conflict_id, d.appointment_id, d.cause_id) for d in detected] == [
        (conflict.id, appointment, pto.id)
    ]
    blocked_starts = {
        g.start_time.ToDatetime(tzinfo=UTC)
        for e in envelopes
        if e.HasField("slots_blocked")
        for g in e.slots_blocked.granules
    }
    assert utc(2026, 3, 2, 14) not in blocked_starts
    assert len(blocked_starts) == 14
