"""Materialization runner: applies `materialize.py`'s rules to `availability.slots`, set-wise.

For a batch of providers and local dates, in the caller's transaction:

1. lock the providers (transaction-scoped advisory locks, in id order), so two runs for one
   provider never interleave; then load their templates, exceptions and overrides;
2. compute the desired granules with `materialize.materialize_provider` (the pure core) and
   compress them into runs: back-to-back granules at one location on one local date;
3. providers with no stored granules in the window (a new provider, a new horizon) take the
   fast path: every desired granule is new. For the others the runs go to PostgreSQL by
   binary COPY and one set-wise query classifies every desired and every stored granule (a
   full join), applying `materialize.diff_granules`' rule: new -> insert OPEN; BLOCKED and
   desired -> reopen; OPEN/BLOCKED desired at another location -> relocate; OPEN and no
   longer desired -> block; HELD/BOOKED and no longer desired where they are -> conflict
   (never changed);
4. write: inserts by binary COPY built with numpy (the whole horizon is 10.8 million rows),
   reopen/relocate/block by guarded UPDATEs that re-check the status (a granule booking_svc
   took meanwhile is left alone), conflicts as rows of `schedule_conflicts` (one open conflict
   per visit), and resolution of open conflicts that no longer apply;
5. write the events into the outbox (`event_batch.OutboxBatchWriter`): `SlotsMaterialized`
   and `SlotsBlocked` per provider, location and local date, `ScheduleConflictDetected` /
   `ScheduleConflictResolved` per conflict, each granule with its slot version after the
   change.

A run that finds nothing to change writes nothing (no rows, no events). Whole organisations
are materialized in batches, each its own transaction, by `materialize_organization`; the
daily roll-forward (`roll_forward`) extends every provider to the end of the horizon.
"""

from __future__ import annotations

import asyncio
import logging
import time as clock
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from itertools import chain
from operator import attrgetter
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from availability_svc import store
from availability_svc.admin_model import (
    ConflictCause,
    LocationRecord,
    OrganizationRecord,
    exceptions_for_materialization,
    location_for_materialization,
    overrides_for_materialization,
    templates_for_materialization,
)
from availability_svc.domain import ValidationError
from availability_svc.event_batch import (
    EnvelopeHeader,
    GranuleEncoder,
    OutboxBatchWriter,
    PendingEvent,
    pending_event,
)
from availability_svc.materialize import (
    DayGrids,
    Granule,
    materialize_provider,
    offered_visit_types,
)
from common.auth import Role
from common.db import Connection, Pool
from medsched.availability.v1 import schedule_resources_pb2
from medsched.common.v1 import types_pb2
from medsched.events.v1 import schedule_events_pb2, slot_events_pb2

__all__ = [
    "ChangeCause",
    "EventContext",
    "MaterializeStats",
    "ProviderFailure",
    "horizon_dates",
    "materialize_organization",
    "materialize_providers",
    "roll_forward",
]

logger = logging.getLogger(__name__)

SCHEMA = "availability"
DEFAULT_BATCH_SIZE = 100
# Long enough for a batch of a hundred providers over a whole horizon on a busy machine; the
# pool's default (5 s) is meant for requests, not for bulk work.
_BATCH_STATEMENT_TIMEOUT = "300s"
_PG_EPOCH_S = 946_684_800  # 2000-01-01T00:00:00Z, the origin of PostgreSQL's binary timestamps


# ---------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class ChangeCause:
    """What a run applies, for conflicts and `SlotsBlocked.cause`.

    `announce_freed` additionally emits `SlotFreed` (NEW_CAPACITY) for granules that open, as
    added hours and removed exceptions are capacity the waitlist may use.
    """

    cause: ConflictCause = ConflictCause.TEMPLATE_CHANGE
    cause_id: str | None = None
    announce_freed: bool = False


@dataclass(frozen=True, slots=True)
class EventContext:
    """Who caused a run, for the event envelopes: ids only. `role` None means the system."""

    role: Role | None = None
    actor_id: str = ""
    correlation_id: str = ""


@dataclass(frozen=True, slots=True)
class ProviderFailure:
    """A provider whose schedule could not be materialized (e.g. at two locations at once)."""

    provider_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class MaterializeStats:
    """What a run changed."""

    provider_count: int = 0
    opened: int = 0
    blocked: int = 0
    unchanged: int = 0
    conflict_ids: tuple[str, ...] = ()
    resolved_conflict_ids: tuple[str, ...] = ()
    events: int = 0
    failures: tuple[ProviderFailure, ...] = ()

    def __add__(self, other: MaterializeStats) -> MaterializeStats:
        return MaterializeStats(
            provider_count=self.provider_count + other.provider_count,
            opened=self.opened + other.opened,
            blocked=self.blocked + other.blocked,
            unchanged=self.unchanged + other.unchanged,
            conflict_ids=self.conflict_ids + other.conflict_ids,
            resolved_conflict_ids=self.resolved_conflict_ids + other.resolved_conflict_ids,
            events=self.events + other.events,
            failures=self.failures + other.failures,
        )


def horizon_dates(org: OrganizationRecord, now: datetime) -> tuple[date, date]:
    """Today in the organisation's zone and the last date of its horizon (inclusive)."""
    today = now.astimezone(ZoneInfo(org.time_zone)).date()
    return today, today + timedelta(days=org.horizon_days - 1)


# ---------------------------------------------------------------- desired granules (pure)


class _Run(NamedTuple):
    """`length` back-to-back granules from `first_start` (epoch seconds), one location and date."""

    provider_id: str
    location_id: str
    local_date: date
    first_start: int
    length: int


class _Midnights:
    """UTC instants (epoch seconds) of local midnights per zone, to date granules by zone."""

    def __init__(self, first: date, last: date) -> None:
        # One day of margin each side: a granule's local date may differ from its UTC date.
        self._origin = first - timedelta(days=1)
        self._days = (last - first).days + 3
        self._by_zone: dict[str, npt.NDArray[np.int64]] = {}

    def local_day_index(self, zone: str, starts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        midnights = self._by_zone.get(zone)
        if midnights is None:
            tz = ZoneInfo(zone)
            midnights = np.array(
                [
                    int(datetime.combine(self._origin + timedelta(days=i), time(), tz).timestamp())
                    for i in range(self._days + 1)
                ],
                dtype=np.int64,
            )
            self._by_zone[zone] = midnights
        return np.searchsorted(midnights, starts, side="right").astype(np.int64) - 1

    def date_of(self, index: int) -> date:
        return self._origin + timedelta(days=index)


def _runs_of(
    provider_id: str,
    granules: Sequence[Granule],
    zones: Mapping[str, str],
    midnights: _Midnights,
    granule_seconds: int,
) -> list[_Run]:
    """Compress a provider's desired granules (sorted by start) into runs, with numpy.

    A working day is typically one to three runs, so a whole horizon crosses to PostgreSQL in
    a few hundred thousand rows instead of ten million.
    """
    count = len(granules)
    if not count:
        return []
    starts = np.fromiter(
        map(datetime.timestamp, map(attrgetter("start_utc"), granules)),
        dtype=np.float64,
        count=count,
    ).astype(np.int64)
    location_ids = list(map(attrgetter("location_id"), granules))
    names = sorted(set(location_ids))
    if len(names) == 1:
        location_codes = np.zeros(count, dtype=np.int64)
        day_index = midnights.local_day_index(zones[names[0]], starts)
    else:
        codes = {name: code for code, name in enumerate(names)}
        location_codes = np.fromiter(map(codes.__getitem__, location_ids), np.int64, count)
        day_index = np.empty(count, dtype=np.int64)
        for code, location_id in enumerate(names):
            mask = location_codes == code
            day_index[mask] = midnights.local_day_index(zones[location_id], starts[mask])
    breaks = (
        (np.diff(starts) != granule_seconds)
        | (np.diff(location_codes) != 0)
        | (np.diff(day_index) != 0)
    )
    firsts = np.concatenate(([0], np.flatnonzero(breaks) + 1))
    lengths = np.diff(np.append(firsts, count))
    return [
        _Run(
            provider_id,
            names[location_codes[i]],
            midnights.date_of(int(day_index[i])),
            int(starts[i]),
            int(n),
        )
        for i, n in zip(firsts.tolist(), lengths.tolist(), strict=True)
    ]


@dataclass
class _Desired:
    """The desired granules of a batch, as runs, and what the events need to know."""

    runs: list[_Run] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    offered: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    failures: list[ProviderFailure] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _desired_granules(
    inputs: Mapping[str, store.ProviderInputs],
    locations: Mapping[str, LocationRecord],
    first: date,
    last: date,
    granule_minutes: int,
    grids: DayGrids,
) -> _Desired:
    """Run the pure core for every provider of a batch (in the batch's order) as runs.

    A provider whose inputs are invalid is reported, not raised, so one bad schedule does not
    stop an organisation's run.
    """
    domain_locations = {lid: location_for_materialization(loc) for lid, loc in locations.items()}
    zones = {lid: loc.time_zone for lid, loc in locations.items()}
    midnights = _Midnights(first, last)
    desired = _Desired()
    for provider_id, provider in inputs.items():
        templates = templates_for_materialization(provider.templates, first, last)
        exceptions = exceptions_for_materialization(provider.exceptions, first, last)
        removals, additions = overrides_for_materialization(provider.overrides, first, last)
        try:
            granules = materialize_provider(
                provider_id,
                templates,
                [*exceptions, *removals],
                additions,
                domain_locations,
                first,
                last,
                granule_minutes,
                grids,
            )
        except ValidationError as e:
            desired.failures.append(ProviderFailure(provider_id, str(e)))
            continue
        for key, visit_types in offered_visit_types(templates, additions).items():
            desired.offered[key] = tuple(sorted(visit_types))
        desired.counts[provider_id] = len(granules)
        desired.runs.extend(_runs_of(provider_id, granules, zones, midnights, granule_minutes * 60))
    return desired


def _runs_from_starts(
    provider_id: str, location_id: str, local_date: date, starts: Sequence[int], step: int
) -> Iterator[_Run]:
    """Runs of sorted granule starts of one provider, location and date."""
    first = previous = starts[0]
    for start in starts[1:]:
        if start != previous + step:
            yield _Run(provider_id, location_id, local_date, first, (previous - first) // step + 1)
            first = start
        previous = start
    yield _Run(provider_id, location_id, local_date, first, (previous - first) // step + 1)


def _run_starts(run: _Run, step: int) -> range:
    return range(run.first_start, run.first_start + run.length * step, step)


# ---------------------------------------------------------------- SQL

_HAS_GRANULES = """
SELECT p FROM unnest(%(providers)s::uuid[]) AS p
WHERE EXISTS (SELECT 1 FROM availability.slots s
              WHERE s.provider_id = p AND s.start_time >= %(lo)s AND s.start_time < %(hi)s)
"""

_CREATE_RUNS = (
    "CREATE TEMP TABLE IF NOT EXISTS materialize_runs ("
    " provider_id uuid NOT NULL, location_id uuid NOT NULL,"
    " first_start bigint NOT NULL, n integer NOT NULL) ON COMMIT DELETE ROWS"
)

# One pass over the providers that have stored granules: the desired granules (runs expanded)
# fully joined with the stored ones between `lo` and `hi` (UTC bounds wide enough for every
# zone of the organisation). Stored granules that are not desired count only when their start
# falls on a run date in their own location's zone (materialize.DateScope): other dates are
# left alone. Results come back grouped per action, provider, location and local date, starts
# as epoch seconds, which is also how the events group them.
_CLASSIFY = """
WITH desired AS (
    SELECT r.provider_id, g.start_time, r.location_id
    FROM materialize_runs r
    CROSS JOIN LATERAL generate_series(
        to_timestamp(r.first_start),
        to_timestamp(r.first_start + (r.n - 1) * %(step)s::bigint),
        make_interval(secs => %(step)s)
    ) AS g(start_time)
), existing AS (
    SELECT s.provider_id, s.start_time, s.location_id, s.status
    FROM availability.slots s
    WHERE s.provider_id = ANY(%(providers)s::uuid[])
      AND s.start_time >= %(lo)s AND s.start_time < %(hi)s
), classified AS (
    SELECT COALESCE(d.provider_id, e.provider_id) AS provider_id,
           COALESCE(d.start_time, e.start_time) AS start_time,
           CASE WHEN d.provider_id IS NULL OR e.status IN ('HELD', 'BOOKED')
                THEN e.location_id ELSE d.location_id END AS location_id,
           d.provider_id IS NOT NULL AS desired,
           CASE
               WHEN e.provider_id IS NULL THEN 'insert'
               WHEN d.provider_id IS NOT NULL AND d.location_id = e.location_id THEN
                   CASE WHEN e.status = 'BLOCKED' THEN 'reopen' END
               WHEN e.status IN ('HELD', 'BOOKED') THEN 'conflict'
               WHEN d.provider_id IS NOT NULL THEN 'relocate'
               WHEN e.status = 'OPEN' THEN 'block'
           END AS action
    FROM desired d
    FULL JOIN existing e ON e.provider_id = d.provider_id AND e.start_time = d.start_time
)
SELECT c.action, c.provider_id, c.location_id, c.desired,
       (c.start_time AT TIME ZONE l.time_zone)::date AS local_date,
       array_agg(extract(epoch FROM c.start_time)::int8 ORDER BY c.start_time) AS starts
FROM classified c
LEFT JOIN availability.locations l ON l.id = c.location_id
WHERE c.action IS NOT NULL
  AND (c.desired OR l.id IS NULL
       OR (c.start_time AT TIME ZONE l.time_zone)::date BETWEEN %(first)s AND %(last)s)
GROUP BY 1, 2, 3, 4, 5
ORDER BY 2, 5, 3, 1
"""

# Guarded updates: the WHERE clause re-checks the status on the row's latest version, so a
# granule booking_svc held or booked since the classification is left untouched (and is
# reported as a conflict by the next run if it still does not fit).
_OPEN_GRANULES = """
WITH changed AS (
    UPDATE availability.slots s
    SET status = 'OPEN', location_id = u.location_id, version = s.version + 1,
        updated_at = now()
    FROM unnest(%(providers)s::uuid[], %(starts)s::int8[], %(locations)s::uuid[])
         AS u(provider_id, start_s, location_id)
    WHERE s.provider_id = u.provider_id AND s.start_time = to_timestamp(u.start_s)
      AND (s.status = 'BLOCKED' OR (s.status = 'OPEN' AND s.location_id <> u.location_id))
    RETURNING s.provider_id, s.location_id, s.start_time, s.version
)
SELECT c.provider_id, c.location_id, (c.start_time AT TIME ZONE l.time_zone)::date,
       array_agg(extract(epoch FROM c.start_time)::int8 ORDER BY c.start_time),
       array_agg(c.version ORDER BY c.start_time)
FROM changed c JOIN availability.locations l ON l.id = c.location_id
GROUP BY 1, 2, 3
"""

_BLOCK_GRANULES = """
WITH changed AS (
    UPDATE availability.slots s
    SET status = 'BLOCKED', version = s.version + 1, updated_at = now()
    FROM unnest(%(providers)s::uuid[], %(starts)s::int8[], %(locations)s::uuid[])
         AS u(provider_id, start_s, location_id)
    WHERE s.provider_id = u.provider_id AND s.start_time = to_timestamp(u.start_s)
      AND s.status = 'OPEN'
    RETURNING s.provider_id, s.location_id, s.start_time, s.version
)
SELECT c.provider_id, c.location_id, (c.start_time AT TIME ZONE l.time_zone)::date,
       array_agg(extract(epoch FROM c.start_time)::int8 ORDER BY c.start_time),
       array_agg(c.version ORDER BY c.start_time)
FROM changed c LEFT JOIN availability.locations l ON l.id = c.location_id
GROUP BY 1, 2, 3
"""

# The visits behind conflicting granules: every granule of the same appointment (or hold)
# of the provider, so a conflict spans the whole visit even where only part of it no longer
# fits. Granules with neither id (not expected from booking_svc) stand for themselves.
_CONFLICTING_VISITS = """
WITH hit AS (
    SELECT s.provider_id, s.start_time, s.appointment_id, s.hold_id
    FROM availability.slots s
    JOIN unnest(%(providers)s::uuid[], %(starts)s::int8[]) AS u(provider_id, start_s)
      ON s.provider_id = u.provider_id AND s.start_time = to_timestamp(u.start_s)
    WHERE s.status IN ('HELD', 'BOOKED')
)
SELECT h.provider_id, min(v.location_id::text)::uuid, h.appointment_id, h.hold_id,
       min(v.start_time), max(v.end_time)
FROM hit h
JOIN availability.slots v ON v.provider_id = h.provider_id
 AND ((h.appointment_id IS NOT NULL AND v.appointment_id = h.appointment_id)
      OR (h.appointment_id IS NULL AND h.hold_id IS NOT NULL AND v.hold_id = h.hold_id)
      OR (h.appointment_id IS NULL AND h.hold_id IS NULL AND v.start_time = h.start_time))
GROUP BY h.provider_id, h.appointment_id, h.hold_id,
         CASE WHEN h.appointment_id IS NULL AND h.hold_id IS NULL THEN h.start_time END
ORDER BY 1, 5
"""

_INSERT_CONFLICTS = """
INSERT INTO availability.schedule_conflicts AS c (organization_id, provider_id, location_id,
    appointment_id, hold_id, start_time, end_time, cause, cause_id)
SELECT %(org)s::uuid, u.provider_id, u.location_id, u.appointment_id, u.hold_id, u.start_time,
       u.end_time, %(cause)s, %(cause_id)s::uuid
FROM unnest(%(providers)s::uuid[], %(locations)s::uuid[], %(appointments)s::uuid[],
            %(holds)s::uuid[], %(starts)s::timestamptz[], %(ends)s::timestamptz[])
     AS u(provider_id, location_id, appointment_id, hold_id, start_time, end_time)
ON CONFLICT (provider_id, start_time) WHERE state = 'OPEN' DO NOTHING
RETURNING c.id, c.provider_id, c.location_id, c.appointment_id, c.start_time, c.end_time
"""

# Open conflicts of the batch in its window whose visit no longer conflicts: the visit was
# moved or cancelled, or the change that caused it was undone.
_RESOLVE_CONFLICTS = """
UPDATE availability.schedule_conflicts c
SET state = 'RESOLVED', resolved_at = now()
WHERE c.provider_id = ANY(%(batch)s::uuid[]) AND c.state = 'OPEN'
  AND c.start_time >= %(lo)s AND c.start_time < %(hi)s
  AND NOT EXISTS (
      SELECT 1 FROM unnest(%(providers)s::uuid[], %(starts)s::timestamptz[]) AS k(p, t)
      WHERE k.p = c.provider_id AND k.t = c.start_time)
RETURNING c.id, c.provider_id, c.appointment_id
"""

# Progress only ever grows without gaps: a run counts if it starts where the provider's
# materialized dates end (or, for a provider never materialized, today or earlier). A run over
# a few dates further ahead (an exception next month) must not make the roll-forward skip the
# dates in between.
_RECORD_PROGRESS = """
INSERT INTO availability.materialization_state AS m
    (provider_id, organization_id, materialized_through)
SELECT p.id, %(org)s::uuid, %(last)s::date
FROM unnest(%(providers)s::uuid[]) AS p(id)
LEFT JOIN availability.materialization_state s ON s.provider_id = p.id
WHERE (s.provider_id IS NULL AND %(first)s::date <= %(today)s::date)
   OR s.materialized_through >= %(first)s::date - 1
ON CONFLICT (provider_id) DO UPDATE
SET materialized_through = EXCLUDED.materialized_through, updated_at = now()
WHERE m.materialized_through < EXCLUDED.materialized_through
"""


# ---------------------------------------------------------------- classification


@dataclass
class _Group:
    """Granules of one provider, location and local date that take the same action."""

    provider_id: str
    location_id: str
    local_date: date | None
    starts: list[int]
    versions: list[int] | None = None


@dataclass
class _Classified:
    inserts: list[_Run] = field(default_factory=list)
    opens: list[_Group] = field(default_factory=list)
    blocks: list[_Group] = field(default_factory=list)
    conflicts: list[_Group] = field(default_factory=list)
    desired_conflicts: int = 0


async def _providers_with_granules(
    conn: Connection, provider_ids: Sequence[str], lo: datetime, hi: datetime
) -> set[str]:
    cursor = await conn.execute(
        _HAS_GRANULES, {"providers": list(provider_ids), "lo": lo, "hi": hi}
    )
    return {str(row[0]) for row in await cursor.fetchall()}


async def _classify(
    conn: Connection,
    runs: Sequence[_Run],
    provider_ids: Sequence[str],
    bounds: tuple[datetime, datetime],
    first: date,
    last: date,
    granule_seconds: int,
) -> _Classified:
    result = _Classified()
    if not provider_ids:
        return result
    await conn.execute(_CREATE_RUNS)
    await conn.execute("TRUNCATE materialize_runs")
    if runs:
        async with (
            conn.cursor() as cursor,
            cursor.copy(
                "COPY materialize_runs (provider_id, location_id, first_start, n)"
                " FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(["uuid", "uuid", "int8", "int4"])
            ids: dict[str, uuid.UUID] = {}
            for run in runs:
                provider = ids.get(run.provider_id) or ids.setdefault(
                    run.provider_id, uuid.UUID(run.provider_id)
                )
                location = ids.get(run.location_id) or ids.setdefault(
                    run.location_id, uuid.UUID(run.location_id)
                )
                await copy.write_row((provider, location, run.first_start, run.length))
    cursor = await conn.execute(
        _CLASSIFY,
        {
            "step": granule_seconds,
            "providers": list(provider_ids),
            "lo": bounds[0],
            "hi": bounds[1],
            "first": first,
            "last": last,
        },
    )
    for action, provider, location, desired, local_date, starts in await cursor.fetchall():
        group = _Group(str(provider), str(location), local_date, starts)
        if action == "insert":
            result.inserts.extend(
                _runs_from_starts(
                    group.provider_id, group.location_id, local_date, starts, granule_seconds
                )
            )
        elif action in ("reopen", "relocate"):
            result.opens.append(group)
        elif action == "block":
            result.blocks.append(group)
        else:
            result.conflicts.append(group)
            if desired:
                result.desired_conflicts += len(starts)
    return result


def _flatten(groups: Iterable[_Group]) -> dict[str, list[Any]]:
    providers: list[str] = []
    starts: list[int] = []
    locations: list[str] = []
    for group in groups:
        providers.extend([group.provider_id] * len(group.starts))
        starts.extend(group.starts)
        locations.extend([group.location_id] * len(group.starts))
    return {"providers": providers, "starts": starts, "locations": locations}


async def _apply_updates(conn: Connection, query: str, groups: Sequence[_Group]) -> list[_Group]:
    if not groups:
        return []
    cursor = await conn.execute(query, _flatten(groups))
    return [
        _Group(str(p), str(loc), local_date, starts, versions)
        for p, loc, local_date, starts, versions in await cursor.fetchall()
    ]


# ---------------------------------------------------------------- inserts by binary COPY

_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8
_COPY_TRAILER = b"\xff\xff"
_SLOT_ROW = np.dtype(
    [
        ("fields", ">i2"),
        ("provider_len", ">i4"),
        ("provider_id", "V16"),
        ("start_len", ">i4"),
        ("start_time", ">i8"),
        ("end_len", ">i4"),
        ("end_time", ">i8"),
        ("location_len", ">i4"),
        ("location_id", "V16"),
        ("organization_len", ">i4"),
        ("organization_id", "V16"),
        ("status_len", ">i4"),
        ("status", "S4"),
    ]
)
_COPY_SLOTS = (
    "COPY availability.slots (provider_id, start_time, end_time, location_id, organization_id,"
    " status) FROM STDIN (FORMAT BINARY)"
)
_COPY_CHUNK_BYTES = 8 << 20


def _uuid_column(values: Sequence[str]) -> npt.NDArray[np.void]:
    """16-byte UUIDs of `values` as a numpy column (each distinct id parsed once)."""
    parsed: dict[str, bytes] = {}
    raw = b"".join(parsed.get(v) or parsed.setdefault(v, uuid.UUID(v).bytes) for v in values)
    return np.frombuffer(raw, dtype="V16")


def _slot_rows(
    runs: Sequence[_Run], organization_id: str, granule_seconds: int
) -> npt.NDArray[np.void]:
    """Binary COPY tuples of the new OPEN granules of `runs` (sorted by provider and start).

    Rows are laid out with a numpy structured type in PostgreSQL's binary COPY format (a field
    count, then length-prefixed big-endian values): runs are expanded to granules with array
    arithmetic, so a million rows take tens of milliseconds. Rows in (provider, start) order
    keep index insertion near the right edge of each provider's key range.
    """
    counts = np.fromiter((r.length for r in runs), dtype=np.int64, count=len(runs))
    total = int(counts.sum())
    rows = np.empty(total, dtype=_SLOT_ROW)
    if not total:
        return rows
    firsts = np.fromiter((r.first_start for r in runs), dtype=np.int64, count=len(runs))
    run_of_row = np.repeat(np.arange(len(runs)), counts)
    position = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    micros = (firsts[run_of_row] + position * granule_seconds - _PG_EPOCH_S) * 1_000_000
    rows["fields"] = 6
    rows["provider_len"] = 16
    rows["provider_id"] = _uuid_column([r.provider_id for r in runs])[run_of_row]
    rows["start_len"] = 8
    rows["start_time"] = micros
    rows["end_len"] = 8
    rows["end_time"] = micros + granule_seconds * 1_000_000
    rows["location_len"] = 16
    rows["location_id"] = _uuid_column([r.location_id for r in runs])[run_of_row]
    rows["organization_len"] = 16
    rows["organization_id"] = _uuid_column([organization_id])[0]
    rows["status_len"] = 4
    rows["status"] = b"OPEN"
    return rows


async def _insert_granules(
    conn: Connection, runs: Sequence[_Run], organization_id: str, granule_seconds: int
) -> None:
    rows = _slot_rows(runs, organization_id, granule_seconds)
    if not len(rows):
        return
    data = memoryview(rows.tobytes())
    async with conn.cursor() as cursor, cursor.copy(_COPY_SLOTS) as copy:
        await copy.write(_COPY_HEADER)
        for offset in range(0, len(data), _COPY_CHUNK_BYTES):
            await copy.write(data[offset : offset + _COPY_CHUNK_BYTES])
        await copy.write(_COPY_TRAILER)


# ---------------------------------------------------------------- events

_ACTOR_ROLES: dict[Role | None, types_pb2.ActorRole.ValueType] = {
    None: types_pb2.SYSTEM,
    Role.PATIENT: types_pb2.PATIENT,
    Role.STAFF: types_pb2.STAFF,
    Role.ADMIN: types_pb2.ADMIN,
    Role.SERVICE: types_pb2.SYSTEM,
}
_MATERIALIZED_GRANULES = slot_events_pb2.SlotsMaterialized.DESCRIPTOR.fields_by_name[
    "granules"
].number
_BLOCKED_GRANULES = slot_events_pb2.SlotsBlocked.DESCRIPTOR.fields_by_name["granules"].number
_FREED_GRANULES = slot_events_pb2.SlotFreed.DESCRIPTOR.fields_by_name["granules"].number
_CAUSES = {
    ConflictCause.EXCEPTION: schedule_resources_pb2.ScheduleConflict.EXCEPTION,
    ConflictCause.OVERRIDE: schedule_resources_pb2.ScheduleConflict.OVERRIDE,
    ConflictCause.TEMPLATE_CHANGE: schedule_resources_pb2.ScheduleConflict.TEMPLATE_CHANGE,
}

_OpenKey = tuple[str, str, date | None]


@dataclass
class _Opened:
    """Granules of one provider, location and date that became OPEN: new ones as runs
    (version 1), re-opened ones with their versions."""

    runs: list[_Run] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)


def _opened_by_key(inserted: Sequence[_Run], reopened: Sequence[_Group]) -> dict[_OpenKey, _Opened]:
    opened: dict[_OpenKey, _Opened] = defaultdict(_Opened)
    for run in inserted:
        opened[(run.provider_id, run.location_id, run.local_date)].runs.append(run)
    for group in reopened:
        assert group.versions is not None
        entry = opened[(group.provider_id, group.location_id, group.local_date)]
        entry.starts.extend(group.starts)
        entry.versions.extend(group.versions)
    return opened


def _open_events(
    opened: Mapping[_OpenKey, _Opened],
    offered: Mapping[tuple[str, str], tuple[str, ...]],
    cause: ChangeCause,
    encoder: GranuleEncoder,
    granule_seconds: int,
) -> list[PendingEvent]:
    events: list[PendingEvent] = []
    for key in sorted(opened, key=lambda k: (k[0], k[2] or date.min, k[1])):
        provider_id, location_id, local_date = key
        entry = opened[key]
        runs = sorted(entry.runs, key=attrgetter("first_start"))
        if entry.starts:
            pairs = sorted(
                chain(
                    ((s, 1) for run in runs for s in _run_starts(run, granule_seconds)),
                    zip(entry.starts, entry.versions, strict=True),
                )
            )
            starts = [p[0] for p in pairs]
            granules = encoder.granules(_MATERIALIZED_GRANULES, starts, [p[1] for p in pairs])
            first_start, last_start = starts[0], starts[-1]
        else:
            granules = encoder.new_granules(
                _MATERIALIZED_GRANULES,
                chain.from_iterable(_run_starts(run, granule_seconds) for run in runs),
            )
            pairs = []
            first_start = runs[0].first_start
            last_start = runs[-1].first_start + (runs[-1].length - 1) * granule_seconds
        message = slot_events_pb2.SlotsMaterialized(
            provider_id=provider_id,
            location_id=location_id,
            local_date=local_date.isoformat() if local_date else "",
            visit_type_ids=offered.get((provider_id, location_id), ()),
        )
        events.append(pending_event(message, "slots_materialized", "slots", provider_id, granules))
        if cause.announce_freed:
            freed = slot_events_pb2.SlotFreed(
                provider_id=provider_id,
                location_id=location_id,
                cause=slot_events_pb2.SlotFreed.NEW_CAPACITY,
            )
            freed.start_time.seconds = first_start
            freed.end_time.seconds = last_start + granule_seconds
            if pairs:
                extra = encoder.granules(
                    _FREED_GRANULES, [p[0] for p in pairs], [p[1] for p in pairs]
                )
            else:
                extra = encoder.new_granules(
                    _FREED_GRANULES,
                    chain.from_iterable(_run_starts(run, granule_seconds) for run in runs),
                )
            events.append(pending_event(freed, "slot_freed", "slots", provider_id, extra))
    return events


def _block_events(
    blocked: Sequence[_Group], cause: ChangeCause, encoder: GranuleEncoder
) -> list[PendingEvent]:
    events = []
    for group in sorted(blocked, key=lambda g: (g.provider_id, g.local_date or date.min)):
        assert group.versions is not None
        message = slot_events_pb2.SlotsBlocked(
            provider_id=group.provider_id,
            location_id=group.location_id,
            cause=_CAUSES[cause.cause],
            cause_id=cause.cause_id or "",
        )
        granules = encoder.granules(_BLOCKED_GRANULES, group.starts, group.versions)
        events.append(pending_event(message, "slots_blocked", "slots", group.provider_id, granules))
    return events


# ---------------------------------------------------------------- conflicts


@dataclass
class _ConflictOutcome:
    events: list[PendingEvent] = field(default_factory=list)
    new_ids: list[str] = field(default_factory=list)
    resolved_ids: list[str] = field(default_factory=list)


async def _record_conflicts(
    conn: Connection,
    org: OrganizationRecord,
    groups: Sequence[_Group],
    batch: Sequence[str],
    bounds: tuple[datetime, datetime],
    cause: ChangeCause,
) -> _ConflictOutcome:
    """Open a conflict for each newly hit visit; resolve open ones that no longer apply."""
    outcome = _ConflictOutcome()
    visits: list[tuple[Any, ...]] = []
    if groups:
        flat = _flatten(groups)
        cursor = await conn.execute(
            _CONFLICTING_VISITS, {"providers": flat["providers"], "starts": flat["starts"]}
        )
        visits = list(await cursor.fetchall())
    if visits:
        cursor = await conn.execute(
            _INSERT_CONFLICTS,
            {
                "org": org.id,
                "cause": cause.cause.value,
                "cause_id": cause.cause_id,
                "providers": [v[0] for v in visits],
                "locations": [v[1] for v in visits],
                "appointments": [v[2] for v in visits],
                "holds": [v[3] for v in visits],
                "starts": [v[4] for v in visits],
                "ends": [v[5] for v in visits],
            },
        )
        for conflict_id, provider, location, appointment, start, end in sorted(
            await cursor.fetchall(), key=lambda row: (str(row[1]), row[4])
        ):
            detected = schedule_events_pb2.ScheduleConflictDetected(
                conflict_id=str(conflict_id),
                provider_id=str(provider),
                location_id=str(location),
                appointment_id=str(appointment) if appointment else "",
                cause=_CAUSES[cause.cause],
                cause_id=cause.cause_id or "",
            )
            detected.start_time.FromDatetime(start)
            detected.end_time.FromDatetime(end)
            outcome.events.append(
                pending_event(detected, "schedule_conflict_detected", "schedule", str(provider))
            )
            outcome.new_ids.append(str(conflict_id))
    cursor = await conn.execute(
        _RESOLVE_CONFLICTS,
        {
            "batch": list(batch),
            "lo": bounds[0],
            "hi": bounds[1],
            "providers": [v[0] for v in visits],
            "starts": [v[4] for v in visits],
        },
    )
    for conflict_id, provider, appointment in sorted(
        await cursor.fetchall(), key=lambda row: (str(row[1]), str(row[0]))
    ):
        resolved = schedule_events_pb2.ScheduleConflictResolved(
            conflict_id=str(conflict_id),
            provider_id=str(provider),
            appointment_id=str(appointment) if appointment else "",
        )
        outcome.events.append(
            pending_event(resolved, "schedule_conflict_resolved", "schedule", str(provider))
        )
        outcome.resolved_ids.append(str(conflict_id))
    return outcome


# ---------------------------------------------------------------- one batch


def _utc_bounds(
    locations: Mapping[str, LocationRecord], fallback_zone: str, first: date, last: date
) -> tuple[datetime, datetime]:
    """UTC instants from local midnight starting `first` to local midnight after `last`,
    widened over every zone of the organisation."""
    zones = {loc.time_zone for loc in locations.values()} or {fallback_zone}
    starts = [datetime.combine(first, time(), tzinfo=ZoneInfo(z)).astimezone(UTC) for z in zones]
    ends = [
        datetime.combine(last + timedelta(days=1), time(), tzinfo=ZoneInfo(z)).astimezone(UTC)
        for z in zones
    ]
    return min(starts), max(ends)


async def _lock_providers(conn: Connection, provider_ids: Sequence[str]) -> None:
    # Serialises materialization per provider across processes (an admin request, the bulk
    # runner, the roll-forward): each computes the desired state from inputs read after
    # taking the lock, so a run never applies a schedule older than the one last applied.
    # Taken in id order, so two runs over overlapping batches cannot deadlock.
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('availability.materialize.' || p, 0))"
        " FROM unnest(%s::text[]) AS p ORDER BY p",
        (sorted(provider_ids),),
    )


async def materialize_providers(
    conn: Connection,
    org: OrganizationRecord,
    provider_ids: Sequence[str],
    first: date,
    last: date,
    *,
    cause: ChangeCause | None = None,
    context: EventContext | None = None,
    grids: DayGrids | None = None,
    locations: Mapping[str, LocationRecord] | None = None,
    compute_in_thread: bool = False,
    now: datetime | None = None,
) -> MaterializeStats:
    """Bring the granules of `provider_ids` on local dates `[first, last]` in line with their
    schedules, in the caller's transaction (which must be open). Idempotent.

    Providers whose schedule is invalid are skipped and listed in `failures`; callers that
    must not skip (an admin request changing one schedule) check `failures` and roll back.
    `compute_in_thread` runs the pure computation in a worker thread, so a bulk runner's
    other batches can use the database meanwhile.
    """
    if first > last or not provider_ids:
        return MaterializeStats()
    cause = cause or ChangeCause()
    context = context or EventContext()
    batch = sorted(str(uuid.UUID(p)) for p in provider_ids)
    await _lock_providers(conn, batch)
    if locations is None:
        locations = await store.load_locations(conn, org.id)
    inputs = await store.load_provider_inputs(conn, org.id, batch, first, last)
    grids = grids if grids is not None else DayGrids()
    compute = (inputs, locations, first, last, org.granule_minutes, grids)
    if compute_in_thread:
        desired = await asyncio.to_thread(_desired_granules, *compute)
    else:
        desired = _desired_granules(*compute)
    failed = {f.provider_id for f in desired.failures}
    batch = [p for p in batch if p not in failed]
    if not batch:
        return MaterializeStats(failures=tuple(desired.failures))

    granule_seconds = org.granule_minutes * 60
    bounds = _utc_bounds(locations, org.time_zone, first, last)
    stored = await _providers_with_granules(conn, batch, *bounds)
    # Providers with nothing stored in the window need no diff: every desired granule is new.
    fresh_runs = [r for r in desired.runs if r.provider_id not in stored]
    classified = await _classify(
        conn,
        [r for r in desired.runs if r.provider_id in stored],
        [p for p in batch if p in stored],
        bounds,
        first,
        last,
        granule_seconds,
    )
    inserts = fresh_runs
    if classified.inserts:
        inserts = sorted(
            fresh_runs + classified.inserts, key=attrgetter("provider_id", "first_start")
        )
    await _insert_granules(conn, inserts, org.id, granule_seconds)
    reopened = await _apply_updates(conn, _OPEN_GRANULES, classified.opens)
    blocked = await _apply_updates(conn, _BLOCK_GRANULES, classified.blocks)
    conflicts = await _record_conflicts(conn, org, classified.conflicts, batch, bounds, cause)

    encoder = GranuleEncoder(granule_seconds)
    events = _open_events(
        _opened_by_key(inserts, reopened), desired.offered, cause, encoder, granule_seconds
    )
    events.extend(_block_events(blocked, cause, encoder))
    events.extend(conflicts.events)
    if events:
        cursor = await conn.execute("SELECT now()")
        row = await cursor.fetchone()
        assert row is not None
        header = EnvelopeHeader(
            organization_id=org.id,
            occurred_at=row[0],
            actor_role=_ACTOR_ROLES[context.role],
            actor_id=context.actor_id,
            correlation_id=context.correlation_id,
        )
        await OutboxBatchWriter(SCHEMA, header).write(conn, events)
    today, _ = horizon_dates(org, now or datetime.now(UTC))
    await conn.execute(
        _RECORD_PROGRESS,
        {"org": org.id, "first": first, "last": last, "today": today, "providers": batch},
    )

    opened = sum(r.length for r in inserts) + sum(len(g.starts) for g in reopened)
    return MaterializeStats(
        provider_count=len(batch),
        opened=opened,
        blocked=sum(len(g.starts) for g in blocked),
        unchanged=desired.total - opened - classified.desired_conflicts,
        conflict_ids=tuple(conflicts.new_ids),
        resolved_conflict_ids=tuple(conflicts.resolved_ids),
        events=len(events),
        failures=tuple(desired.failures),
    )


# ---------------------------------------------------------------- whole organisations


async def materialize_organization(
    pool: Pool,
    organization_id: str,
    *,
    provider_ids: Sequence[str] | None = None,
    first: date | None = None,
    last: date | None = None,
    now: datetime | None = None,
    context: EventContext | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 2,
) -> MaterializeStats:
    """Materialize many providers (default: every active one) in batches of `batch_size`,
    each batch its own transaction, `workers` batches at a time.

    Dates default to the organisation's horizon from today. Two workers keep both cores busy:
    while PostgreSQL writes one batch, Python computes the next.
    """
    async with pool.connection() as conn:
        org = await store.get_organization(conn, organization_id)
        if org is None:
            raise LookupError(f"organization {organization_id} does not exist")
        if provider_ids is None:
            provider_ids = await store.active_provider_ids(conn, organization_id)
        locations = await store.load_locations(conn, organization_id)
    today, horizon_end = horizon_dates(org, now or datetime.now(UTC))
    first = first or today
    last = last or horizon_end
    ordered = sorted(str(uuid.UUID(p)) for p in provider_ids)
    queue: asyncio.Queue[list[str]] = asyncio.Queue()
    for offset in range(0, len(ordered), batch_size):
        queue.put_nowait(ordered[offset : offset + batch_size])
    totals: list[MaterializeStats] = []
    started = clock.perf_counter()

    errors: list[Exception] = []

    async def worker() -> None:
        grids = DayGrids()  # not thread-safe: one per worker
        # No await between the emptiness check and the get: workers cannot race for the item.
        while not queue.empty() and not errors:
            batch = queue.get_nowait()
            try:
                stats = await materialize_batch(batch, grids)
            except Exception as e:
                # Stop the other workers too; committed batches stay (the run is idempotent).
                errors.append(e)
                return
            totals.append(stats)
            for failure in stats.failures:
                logger.warning(
                    "provider schedule not materialized",
                    extra={"provider_id": failure.provider_id, "organization_id": org.id},
                )

    async def materialize_batch(batch: list[str], grids: DayGrids) -> MaterializeStats:
        async with pool.connection() as conn, conn.transaction():
            await conn.execute(
                "SELECT set_config('statement_timeout', %s, true)", (_BATCH_STATEMENT_TIMEOUT,)
            )
            return await materialize_providers(
                conn,
                org,
                batch,
                first,
                last,
                context=context,
                grids=grids,
                locations=locations,
                compute_in_thread=True,
                now=now,
            )

    await asyncio.gather(*(worker() for _ in range(max(1, min(workers, queue.qsize())))))
    if errors:
        raise errors[0]
    total = sum(totals, MaterializeStats())
    logger.info(
        "organization materialized",
        extra={
            "organization_id": org.id,
            "providers": total.provider_count,
            "opened": total.opened,
            "blocked": total.blocked,
            "events": total.events,
            "seconds": round(clock.perf_counter() - started, 3),
        },
    )
    return total


async def roll_forward(
    pool: Pool,
    *,
    now: datetime | None = None,
    context: EventContext | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[str, MaterializeStats]:
    """The daily job: extend every active provider of every active organisation to the end of
    its horizon, from the day after what is already materialized (or today for new ones)."""
    now = now or datetime.now(UTC)
    async with pool.connection() as conn:
        organization_ids = await store.list_organization_ids(conn)
    results: dict[str, MaterializeStats] = {}
    for organization_id in organization_ids:
        async with pool.connection() as conn:
            org = await store.get_organization(conn, organization_id)
            assert org is not None
            today, horizon_end = horizon_dates(org, now)
            cursor = await conn.execute(
                "SELECT p.id, m.materialized_through FROM availability.providers p"
                " LEFT JOIN availability.materialization_state m ON m.provider_id = p.id"
                " WHERE p.organization_id = %s::uuid AND p.active ORDER BY p.id",
                (organization_id,),
            )
            by_start: dict[date, list[str]] = defaultdict(list)
            for provider_id, through in await cursor.fetchall():
                start = today if through is None else max(today, through + timedelta(days=1))
                if start <= horizon_end:
                    by_start[start].append(str(provider_id))
        total = MaterializeStats()
        for start, providers in sorted(by_start.items()):
            total = total + await materialize_organization(
                pool,
                organization_id,
                provider_ids=providers,
                first=start,
                last=horizon_end,
                now=now,
                context=context,
                batch_size=batch_size,
            )
        results[organization_id] = total
    return results
