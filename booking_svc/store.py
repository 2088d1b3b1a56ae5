"""SQL of the booking service: every statement runs on a connection the caller holds in a
transaction, so a booking's reads, locks and writes commit (or vanish) together.

The slot inventory (`availability.slots`, `availability.resource_busy`) is the one table set
shared with availability_svc (see ARCHITECTURE.md: only booking moves a granule to HELD or
BOOKED and back). Booking also reads the schedule's reference rows (visit types, resources,
plans, locations) inside its transaction, so the rooms it picks and the rules it applies are
the ones that hold at commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from psycopg.rows import tuple_row
from psycopg.types.range import Range

from common.db import Connection

SCHEMA = "booking"


@dataclass(frozen=True)
class Need:
    kind: str
    category: str  # ROOM | EQUIPMENT
    count: int


@dataclass(frozen=True)
class VisitTypeRules:
    organization_id: uuid.UUID
    duration_granules: int
    patient_kind: str  # NEW | RETURNING | ANY
    minimum_notice_s: int
    maximum_days_ahead: int
    service_type_code: str
    active: bool
    granule_minutes: int
    horizon_days: int
    needs: tuple[Need, ...]
    provider_found: bool
    provider_organization_id: uuid.UUID | None
    provider_active: bool
    provider_accepting_new: bool
    provider_npi: str


async def visit_type_rules(
    conn: Connection, visit_type_id: uuid.UUID, provider_id: uuid.UUID
) -> VisitTypeRules | None:
    cursor = await conn.execute(
        """
        SELECT vt.organization_id, vt.duration_granules, vt.patient_kind,
               vt.minimum_notice_seconds, vt.maximum_days_ahead, vt.service_type_code,
               vt.active, o.granule_minutes, o.horizon_days,
               coalesce((SELECT array_agg(n.kind || ':' || n.category || ':' || n.count
                                          ORDER BY n.kind)
                         FROM availability.visit_type_resource_needs n
                         WHERE n.visit_type_id = vt.id), '{}'),
               p.id IS NOT NULL, p.organization_id, coalesce(p.active, false),
               coalesce(p.accepting_new_patients, false), coalesce(p.npi, '')
        FROM availability.visit_types vt
        JOIN availability.organizations o ON o.id = vt.organization_id
        LEFT JOIN availability.providers p ON p.id = %s
        WHERE vt.id = %s
        """,
        (provider_id, visit_type_id),
    )
    row = await cursor.fetchone()
    if row is None:
        return None
    needs = []
    for item in row[9]:
        kind, category, count = item.split(":")
        needs.append(Need(kind, category, int(count)))
    return VisitTypeRules(
        organization_id=row[0],
        duration_granules=row[1],
        patient_kind=row[2],
        minimum_notice_s=int(row[3]),
        maximum_days_ahead=row[4],
        service_type_code=row[5],
        active=row[6],
        granule_minutes=row[7],
        horizon_days=row[8],
        needs=tuple(needs),
        provider_found=row[10],
        provider_organization_id=row[11],
        provider_active=row[12],
        provider_accepting_new=row[13],
        provider_npi=row[14],
    )


@dataclass(frozen=True)
class Granule:
    provider_id: uuid.UUID
    start: datetime
    end: datetime
    location_id: uuid.UUID
    organization_id: uuid.UUID
    status: str
    version: int
    appointment_id: uuid.UUID | None
    hold_id: uuid.UUID | None


async def lock_granules(
    conn: Connection, keys: Sequence[tuple[uuid.UUID, datetime]]
) -> list[Granule]:
    """Row-lock the granules `keys` (those that exist), in (provider, start) order.

    Every transaction that claims granules locks them through here, in the same global
    order, so two bookings (or a booking and a reschedule touching two providers) cannot
    deadlock on them.
    """
    if not keys:
        return []
    cursor = await conn.execute(
        """
        SELECT s.provider_id, s.start_time, s.end_time, s.location_id, s.organization_id,
               s.status, s.version, s.appointment_id, s.hold_id
        FROM availability.slots s
        JOIN unnest(%s::uuid[], %s::timestamptz[]) AS k(p, t)
          ON s.provider_id = k.p AND s.start_time = k.t
        ORDER BY s.provider_id, s.start_time
        FOR UPDATE OF s
        """,
        ([k[0] for k in keys], [k[1] for k in keys]),
    )
    return [Granule(*row) for row in await cursor.fetchall()]


@dataclass(frozen=True)
class PlaceFacts:
    location_found: bool
    location_active: bool
    time_zone: str
    location_name: str
    offered: bool
    plan_found: bool
    plan_active: bool
    plan_payer_id: str
    plan_accepted: bool
    returning_patient: bool


async def place_facts(
    conn: Connection,
    *,
    organization_id: uuid.UUID,
    provider_id: uuid.UUID,
    location_id: uuid.UUID,
    visit_type_id: uuid.UUID,
    plan_id: str,
    patient_id: str,
) -> PlaceFacts:
    """Everything a booking checks about where and for whom, in one round trip."""
    cursor = await conn.execute(
        """
        SELECT l.id IS NOT NULL, coalesce(l.active, false), coalesce(l.time_zone, 'UTC'),
               coalesce(l.display_name, ''),
               EXISTS (SELECT 1 FROM availability.provider_location_visit_types v
                       WHERE v.provider_id = %(provider)s AND v.location_id = %(location)s
                         AND v.visit_type_id = %(visit_type)s)
               AND (NOT EXISTS (SELECT 1 FROM availability.visit_type_locations w
                                WHERE w.visit_type_id = %(visit_type)s)
                    OR EXISTS (SELECT 1 FROM availability.visit_type_locations w
                               WHERE w.visit_type_id = %(visit_type)s
                                 AND w.location_id = %(location)s)),
               ip.plan_id IS NOT NULL, coalesce(ip.active, false), coalesce(ip.payer_id, ''),
               EXISTS (SELECT 1 FROM availability.provider_plans pp
                       WHERE pp.provider_id = %(provider)s AND pp.plan_id = %(plan)s),
               EXISTS (SELECT 1 FROM booking.appointments a
                       WHERE a.patient_id = %(patient)s AND a.provider_id = %(provider)s
                         AND a.status = 'COMPLETED')
        FROM (SELECT 1) AS one
        LEFT JOIN availability.locations l
          ON l.id = %(location)s AND l.organization_id = %(org)s
        LEFT JOIN availability.insurance_plans ip
          ON ip.organization_id = %(org)s AND ip.plan_id = %(plan)s
        """,
        {
            "provider": provider_id,
            "location": location_id,
            "visit_type": visit_type_id,
            "plan": plan_id,
            "patient": patient_id,
            "org": organization_id,
        },
    )
    row = await cursor.fetchone()
    assert row is not None  # a SELECT from one row always answers one row
    return PlaceFacts(*row)


@dataclass(frozen=True)
class Resource:
    resource_id: uuid.UUID
    kind: str
    category: str


async def free_resources(
    conn: Connection,
    *,
    organization_id: uuid.UUID,
    location_id: uuid.UUID,
    kinds: Sequence[str],
    start: datetime,
    end: datetime,
) -> list[Resource]:
    """Active resources of `kinds` at the location with no live reservation in [start, end)."""
    if not kinds:
        return []
    cursor = await conn.execute(
        """
        SELECT r.id, r.kind, r.category
        FROM availability.resources r
        WHERE r.organization_id = %s AND r.location_id = %s AND r.active
          AND r.kind = ANY(%s)
          AND NOT EXISTS (SELECT 1 FROM booking.reservations x
                          WHERE x.resource_id = r.id AND x.released_at IS NULL
                            AND x.during && tstzrange(%s, %s))
        ORDER BY r.kind, r.id
        """,
        (organization_id, location_id, list(kinds), start, end),
    )
    return [Resource(*row) for row in await cursor.fetchall()]


async def resources_by_id(
    conn: Connection, organization_id: uuid.UUID, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, tuple[uuid.UUID, str, str, bool]]:
    """id -> (location, kind, category, active) for the organisation's resources among `ids`."""
    cursor = await conn.execute(
        "SELECT id, location_id, kind, category, active FROM availability.resources"
        " WHERE organization_id = %s AND id = ANY(%s)",
        (organization_id, list(ids)),
    )
    return {row[0]: (row[1], row[2], row[3], row[4]) for row in await cursor.fetchall()}


async def set_granules(
    conn: Connection,
    provider_id: uuid.UUID,
    starts: Sequence[datetime],
    *,
    status: str,
    appointment_id: uuid.UUID | None = None,
    hold_id: uuid.UUID | None = None,
) -> list[tuple[datetime, datetime, int]]:
    """Move locked granules to `status`, bumping versions; (start, end, version) in order."""
    cursor = await conn.execute(
        """
        UPDATE availability.slots
        SET status = %s, version = version + 1, appointment_id = %s, hold_id = %s,
            updated_at = now()
        WHERE provider_id = %s AND start_time = ANY(%s)
        RETURNING start_time, end_time, version
        """,
        (status, appointment_id, hold_id, provider_id, list(starts)),
    )
    return sorted(await cursor.fetchall())


async def release_hold_granules(
    conn: Connection, hold_id: uuid.UUID, *, skip_locked: bool = False
) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID, list[tuple[datetime, datetime, int]]] | None:
    """HELD granules of `hold_id` back to OPEN; (org, provider, location, granules) or None.

    `skip_locked` leaves out granules another transaction has locked instead of waiting.
    """
    lock = "FOR UPDATE SKIP LOCKED" if skip_locked else "FOR UPDATE"
    cursor = await conn.execute(
        f"""
        WITH held AS (
            SELECT provider_id, start_time FROM availability.slots
            WHERE hold_id = %s AND status = 'HELD'
            ORDER BY provider_id, start_time
            {lock}
        )
        UPDATE availability.slots s
        SET status = 'OPEN', version = s.version + 1, hold_id = NULL, updated_at = now()
        FROM held
        WHERE s.provider_id = held.provider_id AND s.start_time = held.start_time
        RETURNING s.organization_id, s.provider_id, s.location_id, s.start_time, s.end_time,
                  s.version
        """,
        (hold_id,),
    )
    rows = await cursor.fetchall()
    if not rows:
        return None
    granules = sorted((r[3], r[4], r[5]) for r in rows)
    return rows[0][0], rows[0][1], rows[0][2], granules


async def held_hold_ids(conn: Connection, limit: int = 1000) -> list[uuid.UUID]:
    cursor = await conn.execute(
        "SELECT DISTINCT hold_id FROM availability.slots WHERE status = 'HELD' LIMIT %s",
        (limit,),
    )
    return [row[0] for row in await cursor.fetchall() if row[0] is not None]


# ---- appointments --------------------------------------------------------------------------

APPOINTMENT_COLUMNS = (
    "id, organization_id, patient_id, provider_id, location_id, visit_type_id, start_time,"
    " end_time, time_zone, granule_minutes, status, insurance_plan_id, insurance_payer_id,"
    " member_id_enc, visit_reason_enc, demographics_enc, eligibility_check_id,"
    " eligibility_status, eligibility_verified_at, next_check_at, cancellation_reason,"
    " cancellation_note_enc, confirmation_code, booked_by, hold_id, version, created_at,"
    " updated_at"
)


@dataclass(frozen=True)
class AppointmentRow:
    id: uuid.UUID
    organization_id: uuid.UUID
    patient_id: str
    provider_id: uuid.UUID
    location_id: uuid.UUID
    visit_type_id: uuid.UUID
    start_time: datetime
    end_time: datetime
    time_zone: str
    granule_minutes: int
    status: str
    insurance_plan_id: str
    insurance_payer_id: str
    member_id_enc: bytes | None
    visit_reason_enc: bytes | None
    demographics_enc: bytes | None
    eligibility_check_id: str
    eligibility_status: str
    eligibility_verified_at: datetime | None
    next_check_at: datetime | None
    cancellation_reason: str
    cancellation_note_enc: bytes | None
    confirmation_code: str
    booked_by: str
    hold_id: uuid.UUID | None
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ReservationRow:
    resource_id: uuid.UUID
    resource_type: str
    kind: str
    start: datetime
    end: datetime


async def insert_appointment(conn: Connection, values: dict[str, object]) -> None:
    columns = ", ".join(values)
    placeholders = ", ".join(f"%({name})s" for name in values)
    await conn.execute(
        f"INSERT INTO booking.appointments ({columns}) VALUES ({placeholders})",
        values,
    )


async def get_appointment(
    conn: Connection, appointment_id: uuid.UUID, *, lock: bool = False
) -> AppointmentRow | None:
    suffix = " FOR UPDATE" if lock else ""
    cursor = conn.cursor(row_factory=tuple_row)
    await cursor.execute(
        f"SELECT {APPOINTMENT_COLUMNS} FROM booking.appointments WHERE id = %s{suffix}",
        (appointment_id,),
    )
    row = await cursor.fetchone()
    return None if row is None else AppointmentRow(*row)


# The reservations that belong to an appointment's current placement, as a predicate on
# `booking.reservations r`: the live ones, or, once it is cancelled (nothing live), the set the
# cancel released. A reschedule releases the old set in its own transaction, so the old set
# has an earlier `released_at` than the cancel's and never counts, even when the time stayed
# the same and only the provider or room changed. (`release_reservations` stamps one
# `statement_timestamp()` per release, taken after the appointment's row lock, so releases of
# one appointment are strictly ordered.)
CURRENT_RESERVATION = """
    r.released_at IS NOT DISTINCT FROM (
        SELECT CASE WHEN bool_or(x.released_at IS NULL) THEN NULL ELSE max(x.released_at) END
        FROM booking.reservations x WHERE x.appointment_id = r.appointment_id)
"""


async def reservations_of(
    conn: Connection, appointment_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[ReservationRow]]:
    """Each appointment's reservations at its current time (live, or released by a cancel)."""
    found: dict[uuid.UUID, list[ReservationRow]] = {a: [] for a in appointment_ids}
    if not appointment_ids:
        return found
    cursor = await conn.execute(
        f"""
        SELECT r.appointment_id, r.resource_id, r.resource_type, r.kind, lower(r.during),
               upper(r.during)
        FROM booking.reservations r
        WHERE r.appointment_id = ANY(%s) AND {CURRENT_RESERVATION}
        """,
        (list(appointment_ids),),
    )
    for row in await cursor.fetchall():
        found[row[0]].append(ReservationRow(row[1], row[2], row[3], row[4], row[5]))
    for rows in found.values():
        rows.sort(key=lambda r: (r.resource_type, r.kind, str(r.resource_id)))
    return found


async def insert_reservation(
    conn: Connection,
    appointment_id: uuid.UUID,
    resource_id: uuid.UUID,
    resource_type: str,
    kind: str,
    start: datetime,
    end: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO booking.reservations (appointment_id, resource_id, resource_type, kind,"
        " during) VALUES (%s, %s, %s, %s, %s)",
        (appointment_id, resource_id, resource_type, kind, Range(start, end, "[)")),
    )
    if resource_type != "PROVIDER":
        # The mirror the search index reads (availability's inventory contract).
        await conn.execute(
            "INSERT INTO availability.resource_busy (resource_id, appointment_id, during)"
            " VALUES (%s, %s, %s)",
            (resource_id, appointment_id, Range(start, end, "[)")),
        )


async def release_reservations(conn: Connection, appointment_id: uuid.UUID) -> list[ReservationRow]:
    cursor = await conn.execute(
        """
        UPDATE booking.reservations SET released_at = statement_timestamp()
        WHERE appointment_id = %s AND released_at IS NULL
        RETURNING resource_id, resource_type, kind, lower(during), upper(during)
        """,
        (appointment_id,),
    )
    released = [ReservationRow(*row) for row in await cursor.fetchall()]
    await conn.execute(
        "DELETE FROM availability.resource_busy WHERE appointment_id = %s", (appointment_id,)
    )
    return sorted(released, key=lambda r: (r.resource_type, r.kind, str(r.resource_id)))


async def booked_granules(
    conn: Connection, appointment_id: uuid.UUID, provider_id: uuid.UUID, *, lock: bool = False
) -> list[tuple[datetime, datetime]]:
    """The appointment's BOOKED granules in time order; `lock` row-locks them in that order
    (the global lock order of `lock_granules`), for a caller that changes only these."""
    suffix = " FOR UPDATE" if lock else ""
    cursor = await conn.execute(
        "SELECT start_time, end_time FROM availability.slots"
        " WHERE provider_id = %s AND appointment_id = %s AND status = 'BOOKED'"
        f" ORDER BY start_time{suffix}",
        (provider_id, appointment_id),
    )
    return [(row[0], row[1]) for row in await cursor.fetchall()]


@dataclass(frozen=True)
class OpenConflict:
    """An OPEN schedule conflict naming an appointment: the schedule no longer wants its time."""

    id: uuid.UUID
    start: datetime
    end: datetime
    cause: str  # EXCEPTION | OVERRIDE | TEMPLATE_CHANGE
    cause_id: uuid.UUID | None


async def open_conflicts(conn: Connection, appointment_id: uuid.UUID) -> list[OpenConflict]:
    cursor = await conn.execute(
        "SELECT id, start_time, end_time, cause, cause_id FROM availability.schedule_conflicts"
        " WHERE appointment_id = %s AND state = 'OPEN' ORDER BY start_time, id"
        " FOR UPDATE",
        (appointment_id,),
    )
    return [OpenConflict(*row) for row in await cursor.fetchall()]


async def resolve_conflicts(conn: Connection, conflict_ids: Sequence[uuid.UUID]) -> None:
    await conn.execute(
        "UPDATE availability.schedule_conflicts SET state = 'RESOLVED', resolved_at = now()"
        " WHERE id = ANY(%s)",
        (list(conflict_ids),),
    )


# ---- idempotency and verifications ---------------------------------------------------------


async def claim_idempotency_key(
    conn: Connection, scope: str, key: str, digest: bytes, appointment_id: uuid.UUID
) -> bool:
    """Record the key for this transaction; False if it is already taken (committed).

    A concurrent transaction inserting the same key makes this wait until it ends: if it
    commits the key is taken, if it rolls back the key is ours.
    """
    cursor = await conn.execute(
        "INSERT INTO booking.idempotency_keys (scope, key, request_digest, appointment_id)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
        (scope, key, digest, appointment_id),
    )
    return await cursor.fetchone() is not None


async def find_idempotency_key(
    conn: Connection, scope: str, key: str
) -> tuple[bytes, uuid.UUID] | None:
    cursor = await conn.execute(
        "SELECT request_digest, appointment_id FROM booking.idempotency_keys"
        " WHERE scope = %s AND key = %s",
        (scope, key),
    )
    row = await cursor.fetchone()
    return None if row is None else (bytes(row[0]), row[1])


async def prune_idempotency_keys(conn: Connection, older_than_days: int) -> int:
    cursor = await conn.execute(
        "DELETE FROM booking.idempotency_keys WHERE created_at < now() - make_interval(days => %s)",
        (older_than_days,),
    )
    return cursor.rowcount


async def record_verification(
    conn: Connection,
    patient_id: str,
    payer_id: str,
    member_digest: bytes,
    check_id: str,
    verified_at: datetime,
) -> None:
    await conn.execute(
        """
        INSERT INTO booking.verifications (patient_id, payer_id, member_digest, check_id,
                                           verified_at)
        VALUES (%s, %s, %s, %s, %s)
        ON CONFLICT (patient_id, payer_id, member_digest) DO UPDATE
        SET check_id = EXCLUDED.check_id, verified_at = EXCLUDED.verified_at
        WHERE booking.verifications.verified_at < EXCLUDED.verified_at
        """,
        (patient_id, payer_id, member_digest, check_id, verified_at),
    )


async def recent_verification(
    conn: Connection, patient_id: str, payer_id: str, member_digest: bytes
) -> tuple[str, datetime] | None:
    cursor = await conn.execute(
        "SELECT check_id, verified_at FROM booking.verifications"
        " WHERE patient_id = %s AND payer_id = %s AND member_digest = %s",
        (patient_id, payer_id, member_digest),
    )
    row = await cursor.fetchone()
    return None if row is None else (row[0], row[1])
