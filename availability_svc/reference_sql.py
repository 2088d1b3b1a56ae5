"""The availability search as one PostgreSQL query: the reference the index is checked against.

Used by tests and by `medsched verify-index`; the service itself answers from the in-memory
index. The query follows the shape that measured best here (see PERFORMANCE-NOTES): filter
the providers first (specialty, plan, language, ids, new patients), then per provider read
its OPEN granules in start order through the covering partial index `slots_open
(provider_id, start_time) INCLUDE (location_id) WHERE status = 'OPEN'`, inside a LATERAL
subquery that keeps only starts within the radius, on the right local dates and times,
with enough consecutive OPEN granules at the same location (a correlated count over the
same index), the visit type offered there and its resources free, after the page's key,
and stops at the page size; the outer query merges the providers' rows.

It reads only the tables, never the index's code, so the two implementations are
independent: the same answers from both is evidence that both are right. Distances use the
same haversine formula as `availability_svc.geo`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any

from psycopg import sql

from availability_svc.domain import PatientKind
from availability_svc.geo import EARTH_RADIUS_KM, KM_PER_MILE, DistanceUnit
from availability_svc.index import SortOrder
from availability_svc.search_service import AvailabilityQuery, Offer, OfferPage
from common.db import Connection, Pool

__all__ = ["ReferenceSqlBackend", "reference_search"]

# UTC offsets in use span -12:00 .. +14:00: the UTC bounds of a range of local dates.
_MAX_AHEAD = timedelta(hours=14)
_MAX_BEHIND = timedelta(hours=12)


@dataclass(frozen=True, slots=True)
class _VisitType:
    duration_granules: int
    patient_kind: PatientKind


def _haversine_km(lat: sql.Composable, lon: sql.Composable) -> sql.Composable:
    """Great-circle km from the query point (%(lat)s, %(lon)s) to (lat, lon) columns."""
    return sql.SQL(
        "2.0::float8 * {radius}::float8 * asin(least(1.0, sqrt("
        " power(sin((radians({lat}) - radians(%(lat)s::float8)) / 2), 2)"
        " + cos(radians(%(lat)s::float8)) * cos(radians({lat}))"
        " * power(sin((radians({lon}) - radians(%(lon)s::float8)) / 2), 2))))"
    ).format(radius=sql.Literal(EARTH_RADIUS_KM), lat=lat, lon=lon)


def _build(query: AvailabilityQuery, duration: int) -> sql.Composed:
    """The query text for the filters `query` uses (absent filters add no conditions)."""
    location_filters: list[sql.Composable] = [
        sql.SQL("l.organization_id = %(org)s"),
        sql.SQL("l.active"),
    ]
    if query.location_ids is not None:
        location_filters.append(sql.SQL("l.id = ANY(%(location_ids)s)"))
    if query.visit_type_id is not None:
        location_filters.append(
            sql.SQL(
                "(NOT EXISTS (SELECT 1 FROM availability.visit_type_locations vl"
                "  WHERE vl.visit_type_id = %(vt)s)"
                " OR EXISTS (SELECT 1 FROM availability.visit_type_locations vl"
                "  WHERE vl.visit_type_id = %(vt)s AND vl.location_id = l.id))"
            )
        )
    km = _haversine_km(sql.SQL("l.latitude"), sql.SQL("l.longitude"))
    distance = km if query.near is not None else sql.SQL("NULL::float8")
    in_radius = sql.SQL("TRUE")
    if query.radius is not None:
        in_radius = sql.SQL("km <= %(radius_km)s")

    provider_filters: list[sql.Composable] = [
        sql.SQL("p.organization_id = %(org)s"),
        sql.SQL("p.active"),
    ]
    if query.specialty is not None:
        provider_filters.append(sql.SQL("%(specialty)s = ANY(p.specialties)"))
    if query.language is not None:
        provider_filters.append(sql.SQL("%(language)s = ANY(p.languages)"))
    if query.plan_id is not None:
        provider_filters.append(
            sql.SQL(
                "EXISTS (SELECT 1 FROM availability.provider_plans pp"
                " WHERE pp.provider_id = p.id AND pp.plan_id = %(plan)s)"
            )
        )
    if query.provider_ids is not None:
        provider_filters.append(sql.SQL("p.id = ANY(%(provider_ids)s)"))
    if query.patient_kind is PatientKind.NEW:
        provider_filters.append(sql.SQL("p.accepting_new_patients"))

    start_filters: list[sql.Composable] = [
        sql.SQL("r.start_time >= %(not_before)s"),
        sql.SQL("(r.start_time AT TIME ZONE li.time_zone)::date BETWEEN %(from)s AND %(to)s"),
    ]
    if query.time_from is not None:
        start_filters.append(sql.SQL("(r.start_time AT TIME ZONE li.time_zone)::time >= %(t0)s"))
    if query.time_to is not None:
        start_filters.append(sql.SQL("(r.start_time AT TIME ZONE li.time_zone)::time < %(t1)s"))
    if duration > 1:
        # The visit's other granules: on a grid, d - 1 OPEN rows at this location strictly
        # inside [start, start + d granules) are exactly the d - 1 that follow the start.
        start_filters.append(
            sql.SQL(
                "(SELECT count(*) FROM availability.slots n"
                " WHERE n.provider_id = pr.id AND n.status = 'OPEN'"
                " AND n.location_id = r.location_id AND n.start_time > r.start_time"
                " AND n.start_time < r.start_time + %(visit)s) = %(others)s"
            )
        )
    if query.visit_type_id is not None:
        start_filters.append(
            sql.SQL(
                "EXISTS (SELECT 1 FROM availability.provider_location_visit_types o"
                " WHERE o.provider_id = pr.id AND o.location_id = r.location_id"
                " AND o.visit_type_id = %(vt)s)"
            )
        )
        # Every need of the visit type has enough resources of its kind at the location
        # with no reservation overlapping the visit.
        start_filters.append(
            sql.SQL(
                "NOT EXISTS (SELECT 1 FROM availability.visit_type_resource_needs n"
                " WHERE n.visit_type_id = %(vt)s AND n.count > ("
                "  SELECT count(*) FROM availability.resources rs"
                "  WHERE rs.location_id = r.location_id AND rs.kind = n.kind AND rs.active"
                "  AND NOT EXISTS (SELECT 1 FROM availability.resource_busy b"
                "   WHERE b.resource_id = rs.id AND NOT lower_inf(b.during)"
                "   AND NOT upper_inf(b.during)"
                "   AND b.during && tstzrange(r.start_time, r.start_time + %(visit)s))))"
            )
        )
    sort_km = sql.SQL("li.km") if query.sort is SortOrder.DISTANCE else sql.SQL("0.0::float8")
    if query.after is not None:
        start_filters.append(
            sql.SQL("({sort_km}, r.start_time, pr.id, r.location_id) > {after}").format(
                sort_km=sort_km,
                after=sql.SQL(
                    "(%(after_km)s::float8, %(after_start)s, %(after_provider)s::uuid,"
                    " %(after_location)s::uuid)"
                ),
            )
        )

    return sql.SQL(
        """
WITH loc AS (
    SELECT l.id, l.time_zone, {distance} AS km
    FROM availability.locations l
    WHERE {location_filters}
), loc_in AS (
    SELECT * FROM loc WHERE {in_radius}
), pr AS (
    SELECT p.id FROM availability.providers p WHERE {provider_filters}
)
SELECT pr.id AS provider_id, x.location_id, x.start_time, x.km, x.sort_km
FROM pr
CROSS JOIN LATERAL (
    SELECT r.location_id, r.start_time, li.km, {sort_km} AS sort_km
    FROM availability.slots r
    JOIN loc_in li ON li.id = r.location_id
    WHERE r.provider_id = pr.id AND r.status = 'OPEN'
      AND r.start_time >= %(lo)s AND r.start_time < %(hi)s
      AND {start_filters}
    ORDER BY {sort_km}, r.start_time, r.location_id
    LIMIT %(limit)s
) x
ORDER BY x.sort_km, x.start_time, pr.id, x.location_id
LIMIT %(limit)s
"""
    ).format(
        distance=distance,
        location_filters=sql.SQL(" AND ").join(location_filters),
        in_radius=in_radius,
        provider_filters=sql.SQL(" AND ").join(provider_filters),
        sort_km=sort_km,
        start_filters=sql.SQL(" AND ").join(start_filters),
    )


def _params(query: AvailabilityQuery, duration: int, granule_s: int) -> dict[str, Any]:
    granule = timedelta(seconds=granule_s)
    not_before = datetime.fromtimestamp(query.not_before_utc, UTC)
    first_day = datetime.combine(query.date_from, time(), UTC) - _MAX_AHEAD
    end_day = datetime.combine(query.date_to + timedelta(days=1), time(), UTC) + _MAX_BEHIND
    params: dict[str, Any] = {
        "org": uuid.UUID(query.organization_id),
        "location_ids": _uuids(query.location_ids),
        "provider_ids": _uuids(query.provider_ids),
        "vt": None if query.visit_type_id is None else uuid.UUID(query.visit_type_id),
        "lat": None if query.near is None else query.near.latitude,
        "lon": None if query.near is None else query.near.longitude,
        "radius_km": query.radius_km,
        "specialty": query.specialty,
        "language": query.language,
        "plan": query.plan_id,
        "visit": granule * duration,
        "others": duration - 1,
        "not_before": not_before,
        "from": query.date_from,
        "to": query.date_to,
        "t0": query.time_from,
        "t1": query.time_to,
        "lo": max(not_before, first_day),
        "hi": end_day,
        # One row more than a page tells whether another page follows.
        "limit": query.limit + 1,
    }
    if query.after is not None:
        after_km, after_start, after_provider, after_location = query.after
        params.update(
            after_km=after_km,
            after_start=datetime.fromtimestamp(after_start, UTC),
            after_provider=after_provider,
            after_location=after_location,
        )
    return params


def _uuids(values: frozenset[str] | None) -> list[uuid.UUID] | None:
    return None if values is None else sorted(uuid.UUID(v) for v in values)


async def reference_search(pool: Pool, query: AvailabilityQuery) -> OfferPage:
    """Answer `query` from the tables alone."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = await (
            await conn.execute(
                "SELECT granule_minutes FROM availability.organizations WHERE id = %s",
                (uuid.UUID(query.organization_id),),
            )
        ).fetchone()
        if row is None:
            return OfferPage((), False)
        granule_s = int(row[0]) * 60
        duration = 1
        if query.visit_type_id is not None:
            visit_type = await _visit_type(conn, query)
            if visit_type is None or not _kind_allows(visit_type.patient_kind, query.patient_kind):
                return OfferPage((), False)
            duration = visit_type.duration_granules
        cursor = await conn.execute(_build(query, duration), _params(query, duration, granule_s))
        rows = await cursor.fetchall()
    offers = tuple(_offer(query, r, duration * granule_s) for r in rows[: query.limit])
    return OfferPage(offers, len(rows) > query.limit)


async def _visit_type(conn: Connection, query: AvailabilityQuery) -> _VisitType | None:
    assert query.visit_type_id is not None
    row = await (
        await conn.execute(
            "SELECT duration_granules, patient_kind FROM availability.visit_types"
            " WHERE id = %s AND organization_id = %s",
            (uuid.UUID(query.visit_type_id), uuid.UUID(query.organization_id)),
        )
    ).fetchone()
    return None if row is None else _VisitType(int(row[0]), PatientKind(row[1]))


def _kind_allows(visit_kind: PatientKind, patient: PatientKind) -> bool:
    return patient is PatientKind.ANY or visit_kind in (PatientKind.ANY, patient)


def _offer(query: AvailabilityQuery, row: tuple[Any, ...], length_s: int) -> Offer:
    provider_id, location_id, start, km, sort_km = row
    start_utc = int(start.timestamp())
    distance = None
    if km is not None:
        distance = km / KM_PER_MILE if query.unit is DistanceUnit.MI else float(km)
    return Offer(
        provider_id=str(provider_id),
        location_id=str(location_id),
        start_utc=start_utc,
        end_utc=start_utc + length_s,
        distance=distance,
        sort_km=float(sort_km),
        visit_type_id=query.visit_type_id,
    )


class ReferenceSqlBackend:
    """`SearchBackend` answered by `reference_search`."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def search(self, query: AvailabilityQuery) -> OfferPage:
        return await reference_search(self._pool, query)
