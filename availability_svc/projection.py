"""The search read model: the in-memory index, built from PostgreSQL, kept current from JetStream.

Start (`Projection.build`):

1. read the stream's last sequence `S`;
2. in one REPEATABLE READ snapshot, load every organisation's reference data (providers,
   locations, plans, visit types, resources, offered visit types), its granules (status and
   version of every row of `availability.slots`, one row per provider and location with the
   values packed by `array_send`, parsed with numpy) and its busy resources
   (`availability.resource_busy`);
3. consume `medsched.slots.>` from `S + 1` (`start`).

Why reading `S` *before* the snapshot is safe: the outbox relay publishes an event only after
the transaction that wrote it committed, so every event at or below `S` describes a change
that had committed before our snapshot began and is therefore in it. Events above `S` may or
may not be in the snapshot; applying one that is changes nothing, because every granule in
an event carries the row's version after the change and a change is applied only when its
version is newer than the one held (the snapshot loads the versions too). Reading `S` after
the snapshot instead could skip an event committed and published between the two reads.

Applying events (`Projection._handle`), per granule, newest version wins:
materialized / released / freed -> OPEN at the event's location; blocked / held / booked ->
not OPEN. A held granule counts as OPEN again after the hold's `expire_time` unless a newer
version arrived (as `slot_events.proto` specifies). Resource reservations carry no version,
so they ride on their event's granules: a booking's rooms become busy only when its granules
were news; a freed reservation makes the projection re-read those resources' reservations
from the database (truth at least as new as the event), so a cancellation and another
appointment's booking of the same room, published in either order, end right.

Reference data has no events yet: it is reloaded every `reload_interval_s` (and soon after an
event names a provider or location the projection does not know), so attribute changes reach
search within that interval; slot changes within milliseconds. Each organisation has its
own index (its own granule length and dense ids); inactive providers stay in the index under
a hidden organisation number, so reactivating them needs no reload of their granules.

Restart: an in-memory projection keeps nothing on disk. A process that restarts builds a new
snapshot and resumes from that snapshot's `S`; a consumer restarted inside a running process
(`restart_consumer`) resumes from `position + 1`. Either way no event is missed, and any
event seen twice is recognised by its versions.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import time as time_module
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import nats.errors
import nats.js.errors
import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig

from availability_svc.domain import PatientKind, ValidationError
from availability_svc.geo import distance_km, place
from availability_svc.index import (
    AvailabilityIndex,
    DenseIds,
    LocationEntry,
    ProviderEntry,
    ResourceEntry,
    SearchPage,
    SearchQuery,
    SortOrder,
    VisitTypeEntry,
)
from availability_svc.search_service import (
    AvailabilityQuery,
    Catalog,
    LocationInfo,
    Offer,
    OfferPage,
    OrganizationInfo,
    ProviderInfo,
    VisitTypeInfo,
)
from common.bus import STREAM_NAME, ConsumerOptions, ReceivedEvent, StreamConsumer
from common.db import Connection, Pool
from common.errors import DependencyUnavailable, FieldViolation, InvalidArgument
from medsched.events.v1 import envelope_pb2, slot_events_pb2

__all__ = [
    "SLOT_SUBJECTS",
    "BuildReport",
    "GranuleVersions",
    "IndexBackend",
    "OrgIndex",
    "Projection",
    "ReferenceData",
    "grid_base_for",
    "load_reference",
    "reference_digest",
]

logger = logging.getLogger(__name__)

SLOT_SUBJECTS = ("medsched.slots.>",)
DEFAULT_RELOAD_INTERVAL_S = 30.0
# How soon after an unknown provider or location shows up in an event the reference data is
# reloaded: soon enough that a new provider is searchable in about a second, late enough that
# a burst of materialization events costs one reload.
UNKNOWN_ID_RELOAD_DELAY_S = 0.5
_TICK_S = 0.25
_PG_EPOCH_S = 946_684_800  # 2000-01-01T00:00:00Z: PostgreSQL's timestamp epoch
_US_PER_S = 1_000_000
_VISIBLE = 0
"""The index's organisation number for searchable providers (one index per organisation)."""
_HIDDEN = 1
"""The number inactive providers are filed under: in no search, granules kept."""
_SNAPSHOT_TIMEOUT = "600s"
_SNAPSHOT_WORK_MEM = "256MB"
_MAX_VERSION = np.iinfo(np.uint32).max
_EMPTY_NUMBERS: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
_EMPTY_VERSIONS: npt.NDArray[np.uint32] = np.zeros(0, dtype=np.uint32)


def _utc_now() -> datetime:
    return datetime.now(UTC)


# ---- reference data --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProviderRow:
    """A provider with the attributes the index filters on."""

    info: ProviderInfo
    plan_ids: frozenset[str]
    accepts_new_patients: bool
    active: bool


@dataclass(frozen=True, slots=True)
class LocationRow:
    info: LocationInfo
    active: bool


@dataclass(frozen=True, slots=True)
class ResourceRow:
    id: str
    organization_id: str
    location_id: str
    kind: str
    active: bool


@dataclass(frozen=True, slots=True)
class VisitTypeRow:
    info: VisitTypeInfo
    resource_needs: tuple[tuple[str, int], ...]
    location_ids: frozenset[str]


@dataclass(frozen=True)
class ReferenceData:
    """Every organisation's searchable reference data, read in one snapshot."""

    organizations: dict[str, OrganizationInfo] = field(default_factory=dict)
    providers: dict[str, ProviderRow] = field(default_factory=dict)
    locations: dict[str, LocationRow] = field(default_factory=dict)
    resources: dict[str, ResourceRow] = field(default_factory=dict)
    visit_types: dict[str, VisitTypeRow] = field(default_factory=dict)
    offers: dict[str, dict[tuple[str, str], frozenset[str]]] = field(default_factory=dict)
    """Per organisation: (provider, location) -> visit types offered there."""

    def catalog(self) -> Catalog:
        return Catalog(
            organizations=dict(self.organizations),
            providers={k: row.info for k, row in self.providers.items()},
            locations={k: row.info for k, row in self.locations.items()},
            visit_types={k: row.info for k, row in self.visit_types.items()},
        )

    def of(self, organization_id: str) -> ReferenceData:
        """The part of this data that belongs to one organisation."""
        return ReferenceData(
            organizations={k: v for k, v in self.organizations.items() if k == organization_id},
            providers={
                k: v for k, v in self.providers.items() if v.info.organization_id == organization_id
            },
            locations={
                k: v for k, v in self.locations.items() if v.info.organization_id == organization_id
            },
            resources={
                k: v for k, v in self.resources.items() if v.organization_id == organization_id
            },
            visit_types={
                k: v
                for k, v in self.visit_types.items()
                if v.info.organization_id == organization_id
            },
            offers={organization_id: self.offers.get(organization_id, {})},
        )


# Ids are read as text: they are used as text everywhere, and building 50,000 UUID objects
# only to format them again costs a tenth of a second of the event loop at full scale.
_ORGANIZATIONS_SQL = """
SELECT id::text, time_zone, granule_minutes, horizon_days, active
FROM availability.organizations
"""
_PROVIDERS_SQL = """
SELECT p.id::text, p.organization_id::text, p.display_name, p.specialties, p.languages,
       p.accepting_new_patients, p.active,
       coalesce((SELECT array_agg(pp.plan_id) FROM availability.provider_plans pp
                 WHERE pp.provider_id = p.id), '{}') AS plan_ids
FROM availability.providers p
"""
_LOCATIONS_SQL = """
SELECT id::text, organization_id::text, display_name, latitude, longitude, time_zone, active
FROM availability.locations
"""
_RESOURCES_SQL = """
SELECT id::text, organization_id::text, location_id::text, kind, active
FROM availability.resources
"""
_VISIT_TYPES_SQL = """
SELECT v.id::text, v.organization_id::text, v.display_name, v.duration_granules,
       v.patient_kind, v.minimum_notice_seconds, v.maximum_days_ahead, v.active,
       coalesce((SELECT array_agg(n.kind ORDER BY n.kind)
                 FROM availability.visit_type_resource_needs n WHERE n.visit_type_id = v.id),
                '{}') AS need_kinds,
       coalesce((SELECT array_agg(n.count ORDER BY n.kind)
                 FROM availability.visit_type_resource_needs n WHERE n.visit_type_id = v.id),
                '{}') AS need_counts,
       coalesce((SELECT array_agg(l.location_id::text) FROM availability.visit_type_locations l
                 WHERE l.visit_type_id = v.id), '{}') AS location_ids
FROM availability.visit_types v
"""
_OFFERS_SQL = """
SELECT organization_id::text, provider_id::text, location_id::text,
       array_agg(visit_type_id::text)
FROM availability.provider_location_visit_types
GROUP BY organization_id, provider_id, location_id
"""
# A cheap fingerprint of everything `load_reference` reads (the offers view included, by
# its tables and the current date it depends on): per table the row count and the sum of the
# rows' `xmin`, the transaction that wrote each row version, so any insert, update or delete
# changes it. A periodic reload compares it and skips reading and applying (Python work on
# the event loop, about 0.3 s at full scale) when nothing changed. It costs the database
# about 20 ms at full scale, where hashing the rows' text cost 110 ms.
_REFERENCE_TABLES = (
    "organizations",
    "providers",
    "provider_plans",
    "locations",
    "resources",
    "visit_types",
    "visit_type_resource_needs",
    "visit_type_locations",
    "schedule_templates",
    "template_visit_types",
    "template_window_visit_types",
    "schedule_overrides",
    "override_visit_types",
)
_REFERENCE_DIGEST_SQL = "SELECT concat_ws(',', current_date::text, {})".format(
    ", ".join(
        f"(SELECT count(*) || ':' || coalesce(sum(xmin::text::bigint), 0)"
        f" FROM availability.{table})"
        for table in _REFERENCE_TABLES
    )
)
# Rows converted per step; the event loop runs searches between steps.
_ROWS_PER_STEP = 500


async def _rows(conn: Connection, query: str) -> AsyncIterator[tuple[Any, ...]]:
    """The rows of `query`, converted a few hundred at a time with a pause for other tasks
    between batches, so a reload never holds the event loop for long."""
    cursor = await conn.execute(query)
    while batch := await cursor.fetchmany(_ROWS_PER_STEP):
        for row in batch:
            yield row
        await asyncio.sleep(0)


async def reference_digest(conn: Connection) -> str:
    """A digest that changes whenever anything `load_reference` reads changes."""
    row = await (await conn.execute(_REFERENCE_DIGEST_SQL)).fetchone()
    return "" if row is None or row[0] is None else str(row[0])


async def load_reference(conn: Connection) -> ReferenceData:
    """Read every organisation's reference data (run it inside the caller's snapshot)."""
    data = ReferenceData()
    async for row in _rows(conn, _ORGANIZATIONS_SQL):
        data.organizations[row[0]] = OrganizationInfo(
            id=row[0],
            time_zone=row[1],
            granule_minutes=row[2],
            horizon_days=row[3],
            active=row[4],
        )
    async for row in _rows(conn, _PROVIDERS_SQL):
        data.providers[row[0]] = ProviderRow(
            info=ProviderInfo(
                id=row[0],
                organization_id=row[1],
                display_name=row[2],
                specialties=tuple(row[3]),
                languages=tuple(row[4]),
            ),
            plan_ids=frozenset(row[7]),
            accepts_new_patients=row[5],
            active=row[6],
        )
    async for row in _rows(conn, _LOCATIONS_SQL):
        data.locations[row[0]] = LocationRow(
            info=LocationInfo(
                id=row[0],
                organization_id=row[1],
                display_name=row[2],
                latitude=row[3],
                longitude=row[4],
                time_zone=row[5],
            ),
            active=row[6],
        )
    async for row in _rows(conn, _RESOURCES_SQL):
        data.resources[row[0]] = ResourceRow(*row)
    async for row in _rows(conn, _VISIT_TYPES_SQL):
        data.visit_types[row[0]] = VisitTypeRow(
            info=VisitTypeInfo(
                id=row[0],
                organization_id=row[1],
                display_name=row[2],
                duration_granules=row[3],
                patient_kind=PatientKind(row[4]),
                minimum_notice_s=row[5],
                maximum_days_ahead=row[6],
                active=row[7],
            ),
            resource_needs=tuple(zip(row[8], row[9], strict=True)),
            location_ids=frozenset(row[10]),
        )
    async for row in _rows(conn, _OFFERS_SQL):
        data.offers.setdefault(row[0], {})[(row[1], row[2])] = frozenset(row[3])
    return data


# ---- granule versions ------------------------------------------------------------------------


class GranuleVersions:
    """The version of every granule row, per provider: what makes applying events idempotent.

    Per provider two numpy arrays, sorted granule numbers (start epoch second / granule
    length, int32) and versions (uint32): 8 bytes a granule, about 90 MB at 10.8 million.
    An unknown granule has version 0 (rows start at 1).
    """

    def __init__(self) -> None:
        self._numbers: dict[int, npt.NDArray[np.int32]] = {}
        self._versions: dict[int, npt.NDArray[np.uint32]] = {}
        self._pending: dict[int, list[tuple[npt.NDArray[np.int32], npt.NDArray[np.uint32]]]] = {}

    def add_snapshot(
        self, provider: int, numbers: npt.NDArray[np.int64], versions: npt.NDArray[np.int64]
    ) -> None:
        """Collect snapshot rows; `seal()` sorts them once everything is loaded."""
        if versions.size and int(versions.max()) > _MAX_VERSION:
            raise ValueError("a granule version exceeds 2^32-1")
        self._pending.setdefault(provider, []).append(
            (numbers.astype(np.int32), versions.astype(np.uint32))
        )

    def seal(self) -> None:
        for provider, parts in self._pending.items():
            parts.append((self._numbers.get(provider, _EMPTY_NUMBERS), self.versions_of(provider)))
            numbers = np.concatenate([p[0] for p in parts])
            versions = np.concatenate([p[1] for p in parts])
            order = np.argsort(numbers, kind="stable")
            self._numbers[provider] = numbers[order]
            self._versions[provider] = versions[order]
        self._pending.clear()

    def versions_of(self, provider: int) -> npt.NDArray[np.uint32]:
        return self._versions.get(provider, _EMPTY_VERSIONS)

    def current(self, provider: int, numbers: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The version held for each granule number (0 where none is)."""
        known = self._numbers.get(provider)
        if known is None or known.size == 0:
            return np.zeros(numbers.size, dtype=np.int64)
        position = np.minimum(np.searchsorted(known, numbers), known.size - 1)
        found = known[position] == numbers
        return np.where(found, self._versions[provider][position], 0).astype(np.int64)

    def record(
        self, provider: int, numbers: npt.NDArray[np.int64], versions: npt.NDArray[np.int64]
    ) -> None:
        """Store `versions` for `numbers` (callers pass only newer versions)."""
        if numbers.size == 0:
            return
        if int(versions.max()) > _MAX_VERSION:
            raise ValueError("a granule version exceeds 2^32-1")
        known = self._numbers.get(provider, _EMPTY_NUMBERS)
        held = self.versions_of(provider)
        position = np.searchsorted(known, numbers)
        found = position < known.size
        found[found] = known[position[found]] == numbers[found]
        if found.any():
            held[position[found]] = versions[found]
        missing = ~found
        if missing.any():
            known = np.insert(known, position[missing], numbers[missing].astype(np.int32))
            held = np.insert(held, position[missing], versions[missing].astype(np.uint32))
            order = np.argsort(known, kind="stable")  # inserted numbers may share a position
            known, held = known[order], held[order]
        self._numbers[provider] = known
        self._versions[provider] = held

    def prune_before(self, number: int) -> None:
        """Forget granules that start before granule `number` (the past)."""
        for provider, known in self._numbers.items():
            cut = int(np.searchsorted(known, number))
            if cut:
                self._numbers[provider] = known[cut:].copy()
                self._versions[provider] = self._versions[provider][cut:].copy()

    def __len__(self) -> int:
        return sum(v.size for v in self._numbers.values())

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self._numbers.values()) + sum(
            v.nbytes for v in self._versions.values()
        )


# ---- one organisation's index ----------------------------------------------------------------


class _Fresh(NamedTuple):
    """The granules of an event that are news: their numbers, starts and versions."""

    numbers: npt.NDArray[np.int64]
    starts: npt.NDArray[np.int64]
    versions: npt.NDArray[np.int64]


class _Hold(NamedTuple):
    expires_s: float
    order: int
    organization_id: str
    provider: int
    location: int
    numbers: tuple[int, ...]
    versions: tuple[int, ...]


def grid_base_for(now: datetime) -> int:
    """The UTC midnight the index grid starts at: yesterday's, so that every location's
    local "today" (up to 14 hours behind or ahead of UTC) is inside the grid."""
    today = now.astimezone(UTC).date()
    return int(datetime.combine(today - timedelta(days=1), datetime.min.time(), UTC).timestamp())


class OrgIndex:
    """One organisation's availability index with the id maps and versions that feed it."""

    def __init__(self, info: OrganizationInfo, base_epoch_s: int) -> None:
        self.info = info
        self.granule_s = info.granule_minutes * 60
        self.index = AvailabilityIndex(
            base_epoch_s,
            horizon_days=info.horizon_days + 2,
            granule_minutes=info.granule_minutes,
            max_days=max(400, info.horizon_days + 32),
        )
        self.providers = DenseIds()
        self.locations = DenseIds()
        self.resources = DenseIds()
        self.visit_types = DenseIds()
        self.versions = GranuleVersions()
        self._provider_entries: dict[int, ProviderEntry] = {}
        self._location_entries: dict[int, LocationEntry] = {}
        self._resource_entries: dict[int, ResourceEntry] = {}
        self._visit_type_entries: dict[int, VisitTypeEntry] = {}
        self._offers: dict[tuple[int, int], frozenset[int]] = {}

    # -- reference data

    def apply_reference(self, data: ReferenceData) -> None:
        """Bring the index's attributes in line with `data` (this organisation's part)."""
        self._apply_locations(data)
        self._apply_providers(data)
        self._apply_resources(data)
        self._apply_visit_types(data)
        self._apply_offers(data.offers.get(self.info.id, {}))

    def _apply_locations(self, data: ReferenceData) -> None:
        seen = set()
        for key in sorted(data.locations):
            row = data.locations[key]
            number = self.locations.intern(key)
            seen.add(number)
            if not row.active:
                self._drop_location(number)
                continue
            entry = LocationEntry(
                number,
                key,
                _VISIBLE,
                row.info.latitude,
                row.info.longitude,
                row.info.time_zone,
            )
            if self._location_entries.get(number) != entry:
                self.index.upsert_location(entry)
                self._location_entries[number] = entry
        for number in set(self._location_entries) - seen:
            self._drop_location(number)

    def _drop_location(self, number: int) -> None:
        if self._location_entries.pop(number, None) is not None:
            self.index.remove_location(number)

    def _apply_providers(self, data: ReferenceData) -> None:
        seen = set()
        for key in sorted(data.providers):
            row = data.providers[key]
            number = self.providers.intern(key)
            seen.add(number)
            entry = ProviderEntry(
                id=number,
                key=key,
                organization_id=_VISIBLE if row.active else _HIDDEN,
                specialties=frozenset(row.info.specialties),
                languages=frozenset(row.info.languages),
                plan_ids=row.plan_ids,
                accepts_new_patients=row.accepts_new_patients,
            )
            if self._provider_entries.get(number) != entry:
                self.index.upsert_provider(entry)
                self._provider_entries[number] = entry
        for number in set(self._provider_entries) - seen:
            # Deleted: nothing of it may be offered any more.
            self.index.remove_provider(number)
            del self._provider_entries[number]

    def _apply_resources(self, data: ReferenceData) -> None:
        seen = set()
        for key in sorted(data.resources):
            row = data.resources[key]
            number = self.resources.intern(key)
            seen.add(number)
            location = self.locations.intern(row.location_id)
            entry = ResourceEntry(number, location, row.kind)
            if not row.active:
                self._drop_resource(number)
            elif self._resource_entries.get(number) != entry:
                self.index.upsert_resource(entry)
                self._resource_entries[number] = entry
        for number in set(self._resource_entries) - seen:
            self._drop_resource(number)

    def _drop_resource(self, number: int) -> None:
        if self._resource_entries.pop(number, None) is not None:
            # Its reservations stay: they are real, and it may come back.
            self.index.remove_resource(number, keep_busy=True)

    def _apply_visit_types(self, data: ReferenceData) -> None:
        for key in sorted(data.visit_types):
            row = data.visit_types[key]
            number = self.visit_types.intern(key)
            entry = VisitTypeEntry(
                id=number,
                organization_id=_VISIBLE,
                duration_granules=row.info.duration_granules,
                resource_needs=row.resource_needs,
                patient_kind=row.info.patient_kind,
                location_ids=frozenset(self.locations.intern(v) for v in row.location_ids),
            )
            if self._visit_type_entries.get(number) != entry:
                self.index.upsert_visit_type(entry)
                self._visit_type_entries[number] = entry

    def _apply_offers(self, offers: dict[tuple[str, str], frozenset[str]]) -> None:
        wanted: dict[tuple[int, int], frozenset[int]] = {}
        for (provider_key, location_key), visit_type_keys in offers.items():
            pair = (self.providers.intern(provider_key), self.locations.intern(location_key))
            wanted[pair] = frozenset(self.visit_types.intern(v) for v in visit_type_keys)
        for pair in set(self._offers) | set(wanted):
            offered = wanted.get(pair, frozenset())
            if self._offers.get(pair, frozenset()) != offered:
                self.index.set_offered_visit_types(pair[0], pair[1], offered)
                if offered:
                    self._offers[pair] = offered
                else:
                    self._offers.pop(pair, None)

    def add_offers(self, provider: int, location: int, visit_type_keys: Iterable[str]) -> None:
        """Visit types an event says are offered: added now, confirmed by the next reload."""
        pair = (provider, location)
        before = self._offers.get(pair, frozenset())
        offered = before | {self.visit_types.intern(v) for v in visit_type_keys}
        if offered != before:
            self.index.set_offered_visit_types(provider, location, offered)
            self._offers[pair] = offered

    def knows(self, provider: int, location: int) -> bool:
        return provider in self._provider_entries and location in self._location_entries

    def location_entry(self, number: int) -> LocationEntry | None:
        return self._location_entries.get(number)

    # -- granules

    def fresh(self, provider: int, granules: Sequence[slot_events_pb2.Granule]) -> _Fresh:
        """The granules whose version is newer than the one held (nothing is recorded yet)."""
        starts = np.fromiter((g.start_time.seconds for g in granules), np.int64, len(granules))
        versions = np.fromiter((g.version for g in granules), np.int64, len(granules))
        on_grid = starts % self.granule_s == 0
        if not on_grid.all():
            logger.warning(
                "slot event granules off the granule grid ignored",
                extra={"organization_id": self.info.id, "count": int((~on_grid).sum())},
            )
            starts, versions = starts[on_grid], versions[on_grid]
        numbers = starts // self.granule_s
        newer = versions > self.versions.current(provider, numbers)
        return _Fresh(numbers[newer], starts[newer], versions[newer])

    def commit(self, provider: int, location: int, fresh: _Fresh, is_open: bool) -> None:
        """Record the fresh granules' versions and set them OPEN at `location` or not OPEN."""
        self.versions.record(provider, fresh.numbers, fresh.versions)
        for start, count in _runs(fresh.starts, self.granule_s):
            if is_open:
                self.index.open_granules(provider, location, start, count)
            else:
                self.index.close_granules(provider, start, count)

    def reopen_expired(self, hold: _Hold) -> None:
        """Open a lapsed hold's granules that nothing has changed since."""
        numbers = np.asarray(hold.numbers, dtype=np.int64)
        still = self.versions.current(hold.provider, numbers) == np.asarray(hold.versions)
        for start, count in _runs(numbers[still] * self.granule_s, self.granule_s):
            self.index.open_granules(hold.provider, hold.location, start, count)

    def set_busy(self, resource: int, start_s: int, end_s: int, busy: bool) -> None:
        """Mark a reservation span busy or free, widened to whole granules."""
        first = start_s - (start_s - self.index.base_epoch_s) % self.granule_s
        count = -(-(end_s - first) // self.granule_s)
        if count > 0:
            self.index.set_resource_busy(resource, first, count, busy)

    def roll_forward(self, base_epoch_s: int) -> None:
        if base_epoch_s > self.index.base_epoch_s:
            self.index.roll_forward(base_epoch_s)
            self.versions.prune_before(base_epoch_s // self.granule_s)


def _runs(starts: npt.NDArray[np.int64], granule_s: int) -> Iterator[tuple[int, int]]:
    """(first start, count) of each run of consecutive granules in sorted `starts`."""
    if starts.size == 0:
        return
    ordered = np.sort(starts)
    breaks = np.flatnonzero(np.diff(ordered) != granule_s) + 1
    for run in np.split(ordered, breaks):
        yield int(run[0]), int(run.size)


# ---- loading granules and reservations from the snapshot ------------------------------------

_GRANULES_SQL = """
SELECT provider_id, location_id,
       array_send(array_agg(start_time)),
       array_send(array_agg(CASE WHEN status = 'OPEN' THEN version ELSE -version END))
FROM availability.slots
WHERE organization_id = %s AND start_time >= %s
GROUP BY provider_id, location_id
"""
_BUSY_SQL = """
SELECT b.resource_id, array_send(array_agg(lower(b.during))),
       array_send(array_agg(upper(b.during)))
FROM availability.resource_busy b
JOIN availability.resources r ON r.id = b.resource_id
WHERE r.organization_id = %s AND upper(b.during) > %s
  AND NOT lower_inf(b.during) AND NOT upper_inf(b.during)
GROUP BY b.resource_id
"""
_RESOURCE_BUSY_SQL = """
SELECT resource_id, lower(during), upper(during)
FROM availability.resource_busy
WHERE resource_id = ANY(%s) AND during && tstzrange(%s, %s)
  AND NOT lower_inf(during) AND NOT upper_inf(during)
"""
# Rows per round trip of the server-side cursor: each row is one provider at one location
# (about 26 KB per 1,000 granules), so a batch is a few MB.
_SNAPSHOT_BATCH_ROWS = 256


def _int8_array(data: bytes) -> npt.NDArray[np.int64]:
    """The values of a one-dimensional `bigint[]`/`timestamptz[]` in `array_send` format.

    Layout (big-endian): ndim, has-nulls flag, element type, then per dimension its length
    and lower bound; then per element a 4-byte length (8) and the 8-byte value.
    """
    header = np.frombuffer(data, dtype=">i4", count=3)
    if header[0] == 0:
        return np.zeros(0, dtype=np.int64)
    if header[0] != 1 or header[1] != 0:
        raise ValueError("expected a one-dimensional array without nulls")
    count = int(np.frombuffer(data, dtype=">i4", count=1, offset=12)[0])
    items = np.frombuffer(
        data, dtype=np.dtype([("length", ">i4"), ("value", ">i8")]), count=count, offset=20
    )
    return items["value"].astype(np.int64)


def _epoch_seconds(pg_microseconds: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    return pg_microseconds // _US_PER_S + _PG_EPOCH_S


async def _load_granules(conn: Connection, org: OrgIndex) -> int:
    """Load the organisation's granules from the snapshot; return how many rows were read."""
    total = 0
    base = datetime.fromtimestamp(org.index.base_epoch_s, UTC)
    # Streamed rather than read through a server-side cursor: PostgreSQL runs no parallel
    # plan for a cursor, and this scan and aggregation of every granule is what the build
    # spends most of its time on (at full scale, 5.9 s with two parallel workers against
    # 9-13 s without).
    rows: list[tuple[Any, ...]] = []
    async with conn.cursor(binary=True) as cursor:
        async for row in cursor.stream(_GRANULES_SQL, (org.info.id, base)):
            rows.append(row)
            if len(rows) == _SNAPSHOT_BATCH_ROWS:
                total += _load_granule_rows(org, rows)
                rows = []
    if rows:
        total += _load_granule_rows(org, rows)
    org.versions.seal()
    return total


def _load_granule_rows(org: OrgIndex, rows: Sequence[tuple[Any, ...]]) -> int:
    providers, locations, starts, opens = [], [], [], []
    for provider_id, location_id, raw_starts, raw_versions in rows:
        provider = org.providers.intern(str(provider_id))
        location = org.locations.intern(str(location_id))
        start = _epoch_seconds(_int8_array(raw_starts))
        signed = _int8_array(raw_versions)
        org.versions.add_snapshot(provider, start // org.granule_s, np.abs(signed))
        providers.append(np.full(start.size, provider, dtype=np.int64))
        locations.append(np.full(start.size, location, dtype=np.int64))
        starts.append(start)
        opens.append(signed > 0)
    if not starts:
        return 0
    all_starts = np.concatenate(starts)
    org.index.bulk_load_granules(
        np.concatenate(providers), np.concatenate(locations), all_starts, np.concatenate(opens)
    )
    return int(all_starts.size)


async def _load_busy(conn: Connection, org: OrgIndex) -> int:
    resources, starts, ends = [], [], []
    base = datetime.fromtimestamp(org.index.base_epoch_s, UTC)
    cursor = await conn.execute(_BUSY_SQL, (org.info.id, base), binary=True)
    for resource_id, raw_lower, raw_upper in await cursor.fetchall():
        lower = _epoch_seconds(_int8_array(raw_lower))
        resources.append(np.full(lower.size, org.resources.intern(str(resource_id)), np.int64))
        starts.append(lower)
        ends.append(_epoch_seconds(_int8_array(raw_upper)))
    if not starts:
        return 0
    return org.index.bulk_load_resource_busy(
        np.concatenate(resources), np.concatenate(starts), np.concatenate(ends)
    )


# ---- the projection --------------------------------------------------------------------------


@dataclass(frozen=True)
class _IndexConsumerOptions(ConsumerOptions):
    """Consumer options plus an inactivity threshold.

    Every process has its own consumer (its own copy of the index); if a process dies
    without deleting it, the server removes it after `inactive_threshold_s` without pulls.
    """

    inactive_threshold_s: float = 300.0

    def consumer_config(self, durable: str, subjects: Sequence[str]) -> ConsumerConfig:
        config = super().consumer_config(durable, subjects)
        config.inactive_threshold = self.inactive_threshold_s
        return config


@dataclass(frozen=True)
class BuildReport:
    """What a build loaded and how long it took."""

    organizations: int
    granule_rows: int
    busy_granules: int
    position: int
    seconds: float


class Projection:
    """Every organisation's index, built from a snapshot and kept current from the stream.

    Not thread-safe: events, reloads and searches all run on the event loop; each index
    mutation runs to completion without awaiting, so a search never sees half an event.
    """

    def __init__(
        self,
        pool: Pool,
        js: JetStreamContext | None,
        *,
        stream: str = STREAM_NAME,
        subjects: Sequence[str] = SLOT_SUBJECTS,
        reload_interval_s: float = DEFAULT_RELOAD_INTERVAL_S,
        consumer_name: str | None = None,
        consumer_options: ConsumerOptions | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._pool = pool
        self._js = js
        self.stream = stream
        self.subjects = tuple(subjects)
        self._reload_interval_s = reload_interval_s
        self.consumer_name = consumer_name or f"availability-index-{uuid.uuid4().hex[:12]}"
        self._consumer_options = consumer_options or _IndexConsumerOptions(batch_size=256)
        self._clock = clock
        self._orgs: dict[str, OrgIndex] = {}
        self._catalog = Catalog()
        self._reference_digest = ""
        self._snapshot_position = 0
        self._position = 0
        self._index_time: datetime | None = None
        self._ready = False
        self._consumer: StreamConsumer | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._next_reload_s = math.inf
        self._holds: list[_Hold] = []
        self._hold_order = 0
        self._org_lock = asyncio.Lock()
        self.events_applied = 0
        """Events that changed the index."""
        self.events_stale = 0
        """Events that changed nothing: every granule already at that version (replays,
        duplicates, events the snapshot reflects) or not a slot event at all."""

    # -- state

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def position(self) -> int:
        """Stream sequence of the last event handled (the snapshot's before any)."""
        return self._position

    @property
    def index_time(self) -> datetime | None:
        """Commit time of the newest change the index reflects (snapshot time at first)."""
        return self._index_time

    def catalog(self) -> Catalog:
        return self._catalog

    def org(self, organization_id: str) -> OrgIndex | None:
        return self._orgs.get(organization_id)

    def organizations(self) -> list[str]:
        return sorted(self._orgs)

    # -- build

    async def build(self) -> BuildReport:
        """Load the snapshot of every organisation; see the module docstring for the order."""
        started = time_module.perf_counter()
        position = await self._stream_last_sequence()
        orgs: dict[str, OrgIndex] = {}
        granule_rows = busy = 0
        async with self._pool.connection() as conn, conn.transaction():
            await _begin_snapshot(conn)
            snapshot_time = datetime.now(UTC)
            digest = await reference_digest(conn)
            data = await load_reference(conn)
            for key, info in sorted(data.organizations.items()):
                org = OrgIndex(info, grid_base_for(self._clock()))
                org.apply_reference(data.of(key))
                granule_rows += await _load_granules(conn, org)
                busy += await _load_busy(conn, org)
                org.index.set_position(position)
                orgs[key] = org
        self._orgs = orgs
        self._catalog = data.catalog()
        self._reference_digest = digest
        self._snapshot_position = self._position = position
        self._index_time = snapshot_time
        self._ready = True
        report = BuildReport(
            len(orgs), granule_rows, busy, position, time_module.perf_counter() - started
        )
        logger.info(
            "availability index built",
            extra={
                "organization_count": report.organizations,
                "granule_count": report.granule_rows,
                "busy_granule_count": report.busy_granules,
                "stream_seq_id": report.position,
                "build_seconds": round(report.seconds, 3),
            },
        )
        return report

    async def _stream_last_sequence(self) -> int:
        if self._js is None:
            return 0  # an index that will not follow the stream (`medsched verify-index`)
        try:
            info = await self._js.stream_info(self.stream)
        except (TimeoutError, nats.errors.Error) as e:
            raise DependencyUnavailable(f"stream {self.stream!r} could not be read") from e
        return int(info.state.last_seq)

    async def _load_org(self, organization_id: str) -> OrgIndex | None:
        """Snapshot one organisation that appeared after the build (None if it does not exist).

        Events of it that arrived before this snapshot are in it; later ones are
        recognised by their versions, exactly as for the initial build.
        """
        async with self._pool.connection() as conn, conn.transaction():
            await _begin_snapshot(conn)
            data = await load_reference(conn)
            info = data.organizations.get(organization_id)
            if info is None:
                return None
            org = OrgIndex(info, grid_base_for(self._clock()))
            part = data.of(organization_id)
            org.apply_reference(part)
            await _load_granules(conn, org)
            await _load_busy(conn, org)
        org.index.set_position(self._position)
        self._catalog = data.catalog()
        logger.info("organization added to the index", extra={"organization_id": organization_id})
        return org

    async def _org_for(self, organization_id: str) -> OrgIndex | None:
        org = self._orgs.get(organization_id)
        if org is not None:
            return org
        async with self._org_lock:
            org = self._orgs.get(organization_id)
            if org is None:
                org = await self._load_org(organization_id)
                if org is not None:
                    self._orgs[organization_id] = org
        return org

    # -- run

    async def start(self) -> None:
        """Consume slot events from the snapshot's position and run periodic upkeep."""
        if not self._ready:
            raise RuntimeError("build() the projection before starting it")
        await self._start_consumer(self._position + 1)
        self._next_reload_s = time_module.monotonic() + self._reload_interval_s
        self._stopping.clear()
        self._maintenance = asyncio.create_task(self._maintain(), name="availability-upkeep")

    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("a projection without JetStream cannot follow the stream")
        return self._js

    async def _start_consumer(self, start_sequence: int) -> None:
        js = self._jetstream()
        # A fresh consumer each time: its start sequence must be exactly ours, and a durable
        # left over from an earlier life of this consumer name would start elsewhere.
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_consumer(self.stream, self.consumer_name)
        options = replace(self._consumer_options, start_sequence=start_sequence)
        self._consumer = StreamConsumer(
            js,
            stream=self.stream,
            durable=self.consumer_name,
            subjects=self.subjects,
            handler=self._handle,
            options=options,
        )
        await self._consumer.start()

    async def restart_consumer(self) -> None:
        """Stop consuming and start again from `position + 1` (e.g. after losing NATS state)."""
        await self._stop_consumer()
        await self._start_consumer(self._position + 1)

    async def _stop_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        await consumer.stop()
        with contextlib.suppress(nats.js.errors.NotFoundError, nats.errors.Error, TimeoutError):
            await self._jetstream().delete_consumer(self.stream, self.consumer_name)

    async def stop(self) -> None:
        """Stop upkeep and the consumer (the one being applied finishes first)."""
        self._stopping.set()
        if self._maintenance is not None:
            await self._maintenance
            self._maintenance = None
        await self._stop_consumer()

    async def _maintain(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=_TICK_S)
            if self._stopping.is_set():
                return
            try:
                self.expire_holds(time_module.time())
                self.roll_forward(self._clock())
                if time_module.monotonic() >= self._next_reload_s:
                    await self.reload_reference()
                    await self._check_consumer()
            except Exception as e:  # upkeep must outlive a failed round; it retries next tick
                logger.warning(
                    "availability index upkeep failed", extra={"error_type": type(e).__name__}
                )
                self._next_reload_s = time_module.monotonic() + self._reload_interval_s

    async def _check_consumer(self) -> None:
        """Recreate the consumer if the server lost it (a NATS restart without its state)."""
        consumer = self._consumer
        if consumer is None:
            return
        try:
            await consumer.lag()
        except nats.js.errors.NotFoundError:
            logger.warning(
                "index consumer missing on the server; resuming after the applied position",
                extra={"consumer": self.consumer_name, "stream_seq_id": self._position},
            )
            await self.restart_consumer()

    def request_reload(self, delay_s: float = UNKNOWN_ID_RELOAD_DELAY_S) -> None:
        """Reload reference data within `delay_s` (sooner if one was due anyway)."""
        self._next_reload_s = min(self._next_reload_s, time_module.monotonic() + delay_s)

    async def reload_reference(self) -> bool:
        """Re-read reference data if it changed and apply the changes to every organisation's
        index; returns whether anything was re-read."""
        self._next_reload_s = time_module.monotonic() + self._reload_interval_s
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            digest = await reference_digest(conn)
            if digest == self._reference_digest:
                return False
            data = await load_reference(conn)
        self._reference_digest = digest
        for key, org in self._orgs.items():
            await asyncio.sleep(0)  # let searches run between organisations
            info = data.organizations.get(key)
            if info is not None and info.granule_minutes == org.info.granule_minutes:
                # The granule length is fixed once an organisation exists; the rest may change.
                org.info = info
            org.apply_reference(data.of(key))
        self._catalog = data.catalog()
        return True

    def roll_forward(self, now: datetime) -> None:
        """Drop past days once a UTC day has passed (granules before yesterday)."""
        base = grid_base_for(now)
        for org in self._orgs.values():
            org.roll_forward(base)

    def expire_holds(self, now_s: float) -> int:
        """Reopen granules of holds that lapsed without a newer change; return how many."""
        expired = 0
        while self._holds and self._holds[0].expires_s <= now_s:
            hold = heapq.heappop(self._holds)
            org = self._orgs.get(hold.organization_id)
            if org is not None:
                org.reopen_expired(hold)
                expired += 1
        return expired

    # -- events

    async def _handle(self, event: ReceivedEvent) -> None:
        if event.stream_seq <= self._snapshot_position:
            return  # reflected by the snapshot
        try:
            envelope = envelope_pb2.EventEnvelope.FromString(event.payload)
        except DecodeError:
            logger.error(
                "undecodable slot event skipped",
                extra={"event_id": str(event.event_id), "stream_seq_id": event.stream_seq},
            )
            return
        org = await self._org_for(envelope.organization_id)
        if org is None:
            logger.warning(
                "slot event of an unknown organization skipped",
                extra={"event_id": str(event.event_id), "stream_seq_id": event.stream_seq},
            )
        elif await self._apply(org, envelope):
            self.events_applied += 1
        else:
            self.events_stale += 1
        self._position = max(self._position, event.stream_seq)
        if org is not None:
            org.index.set_position(max(org.index.position, event.stream_seq))
        if envelope.HasField("occurred_at"):
            occurred = envelope.occurred_at.ToDatetime(tzinfo=UTC)
            if self._index_time is None or occurred > self._index_time:
                self._index_time = occurred

    async def _apply(self, org: OrgIndex, envelope: envelope_pb2.EventEnvelope) -> bool:
        """Apply one slot event; False if none of its granules was news."""
        kind = envelope.WhichOneof("payload")
        if kind == "slots_materialized":
            m = envelope.slots_materialized
            provider, location = self._ids(org, m.provider_id, m.location_id)
            org.add_offers(provider, location, m.visit_type_ids)
            return self._set(org, provider, location, m.granules, is_open=True)
        if kind == "slots_blocked":
            b = envelope.slots_blocked
            provider, location = self._ids(org, b.provider_id, b.location_id)
            return self._set(org, provider, location, b.granules, is_open=False)
        if kind == "slots_held":
            return self._hold(org, envelope.organization_id, envelope.slots_held)
        if kind == "slots_released":
            r = envelope.slots_released
            provider, location = self._ids(org, r.provider_id, r.location_id)
            return self._set(org, provider, location, r.granules, is_open=True)
        if kind == "slots_booked":
            return self._book(org, envelope.slots_booked)
        if kind == "slot_freed":
            return await self._free(org, envelope.slot_freed)
        return False  # not a slot event (another subject routed here): nothing to apply

    def _ids(self, org: OrgIndex, provider_key: str, location_key: str) -> tuple[int, int]:
        provider = org.providers.intern(provider_key)
        location = org.locations.intern(location_key)
        if not org.knows(provider, location):
            self.request_reload()
        return provider, location

    @staticmethod
    def _set(
        org: OrgIndex,
        provider: int,
        location: int,
        granules: Sequence[slot_events_pb2.Granule],
        *,
        is_open: bool,
    ) -> bool:
        fresh = org.fresh(provider, granules)
        org.commit(provider, location, fresh, is_open)
        return fresh.numbers.size > 0

    def _hold(self, org: OrgIndex, organization_id: str, held: slot_events_pb2.SlotsHeld) -> bool:
        provider, location = self._ids(org, held.provider_id, held.location_id)
        fresh = org.fresh(provider, held.granules)
        org.commit(provider, location, fresh, is_open=False)
        if fresh.numbers.size and held.HasField("expire_time"):
            self._hold_order += 1
            heapq.heappush(
                self._holds,
                _Hold(
                    held.expire_time.ToNanoseconds() / 1e9,
                    self._hold_order,
                    organization_id,
                    provider,
                    location,
                    tuple(int(n) for n in fresh.numbers),
                    tuple(int(v) for v in fresh.versions),
                ),
            )
        return fresh.numbers.size > 0

    def _book(self, org: OrgIndex, booked: slot_events_pb2.SlotsBooked) -> bool:
        provider, location = self._ids(org, booked.provider_id, booked.location_id)
        fresh = org.fresh(provider, booked.granules)
        if fresh.numbers.size == 0:
            return False  # a replay: its reservations are in the snapshot or were applied
        org.commit(provider, location, fresh, is_open=False)
        for span in booked.resources:
            org.set_busy(
                org.resources.intern(span.resource_id),
                span.start_time.seconds,
                span.end_time.seconds,
                busy=True,
            )
        return True

    async def _free(self, org: OrgIndex, freed: slot_events_pb2.SlotFreed) -> bool:
        provider, location = self._ids(org, freed.provider_id, freed.location_id)
        fresh = org.fresh(provider, freed.granules)
        if fresh.numbers.size == 0:
            return False
        if freed.resources:
            # Read before recording anything: if the read fails, the event is redelivered
            # and must still look like news.
            busy = await self._reservations(freed.resources)
            for span in freed.resources:
                resource = org.resources.intern(span.resource_id)
                org.set_busy(resource, span.start_time.seconds, span.end_time.seconds, False)
            for resource_key, start_s, end_s in busy:
                org.set_busy(org.resources.intern(resource_key), start_s, end_s, busy=True)
        org.commit(provider, location, fresh, is_open=True)
        return True

    async def _reservations(
        self, spans: Sequence[slot_events_pb2.ResourceSpan]
    ) -> list[tuple[str, int, int]]:
        """Current reservations of the spans' resources that overlap the spans."""
        ids = sorted({uuid.UUID(s.resource_id) for s in spans})
        lower = min(s.start_time.seconds for s in spans)
        upper = max(s.end_time.seconds for s in spans)
        async with self._pool.connection() as conn:
            cursor = await conn.execute(
                _RESOURCE_BUSY_SQL,
                (ids, datetime.fromtimestamp(lower, UTC), datetime.fromtimestamp(upper, UTC)),
            )
            rows = await cursor.fetchall()
        return [(str(r[0]), int(r[1].timestamp()), int(r[2].timestamp())) for r in rows]


async def _begin_snapshot(conn: Connection) -> None:
    """Make the current transaction a consistent read-only snapshot that may run long."""
    await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    await conn.execute(f"SET LOCAL statement_timeout = '{_SNAPSHOT_TIMEOUT}'")
    await conn.execute(f"SET LOCAL work_mem = '{_SNAPSHOT_WORK_MEM}'")


# ---- the search backend over the projection --------------------------------------------------


class IndexBackend:
    """`SearchBackend` answered from the in-memory index (what the service serves)."""

    def __init__(self, projection: Projection) -> None:
        self._projection = projection

    async def search(self, query: AvailabilityQuery) -> OfferPage:
        return self.search_now(query)

    def search_now(self, query: AvailabilityQuery) -> OfferPage:
        """The search itself: synchronous, it never waits."""
        if not self._projection.ready:
            raise DependencyUnavailable("the search index is being built; retry shortly")
        org = self._projection.org(query.organization_id)
        if org is None or query.date_to < query.date_from:
            # An empty date range arises when a visit type's booking window ends before
            # the first date asked for: nothing to offer, not a bad request.
            return OfferPage((), False)
        try:
            index_query = _index_query(org, query)
            if index_query is None:
                return OfferPage((), False)
            page: SearchPage = org.index.search(index_query)
        except ValidationError as e:
            # `parse_query` validates first; this keeps any rule the index adds a client error.
            raise InvalidArgument(FieldViolation(v.field, v.reason) for v in e.violations) from e
        return OfferPage(_offers(org, query, page), page.more)


def _dense(ids: DenseIds, keys: frozenset[str] | None) -> frozenset[int] | None:
    if keys is None:
        return None
    numbers = (ids.get(k) for k in keys)
    return frozenset(n for n in numbers if n is not None)


def _index_query(org: OrgIndex, query: AvailabilityQuery) -> SearchQuery | None:
    """The index's form of `query`, or None when it names a visit type the index lacks."""
    visit_type = None
    if query.visit_type_id is not None:
        visit_type = org.visit_types.get(query.visit_type_id)
        if visit_type is None:
            return None
    # The first fields by position: CPython compiles a call with more than 15 keyword
    # arguments to building and unpacking a dict of them (about 0.3 us more here).
    return SearchQuery(
        _VISIBLE,  # organization_id
        query.specialty,
        _dense(org.providers, query.provider_ids),
        _dense(org.locations, query.location_ids),
        query.near,
        query.radius,
        query.unit,
        query.plan_id,
        language=query.language,
        visit_type_id=visit_type,
        date_from=query.date_from,
        date_to=query.date_to,
        time_from=query.time_from,
        time_to=query.time_to,
        not_before_utc=query.not_before_utc,
        patient_kind=query.patient_kind,
        sort=query.sort,
        limit=query.limit,
        after=query.after,
    )


def _offers(org: OrgIndex, query: AvailabilityQuery, page: SearchPage) -> tuple[Offer, ...]:
    """The page's hits as offers in external ids (a tight loop: it runs for every result)."""
    provider_keys, location_keys = org.providers.keys, org.locations.keys
    visit_type_id = query.visit_type_id
    if query.sort is not SortOrder.DISTANCE or query.near is None:
        new_offer = tuple.__new__  # the same Offer as its constructor, at a third of the cost
        return tuple(
            [
                new_offer(
                    Offer,
                    (
                        provider_keys[provider_id],
                        location_keys[location_id],
                        start_utc,
                        end_utc,
                        distance,
                        0.0,
                        visit_type_id,
                    ),
                )
                for provider_id, location_id, start_utc, end_utc, distance, _ in page.hits
            ]
        )
    origin = place(query.near.latitude, query.near.longitude)
    sort_km: dict[int, float] = {}
    offers = []
    for provider_id, location_id, start_utc, end_utc, distance, _ in page.hits:
        km = sort_km.get(location_id)
        if km is None:
            # The same computation the index sorted by, so the page token's key is exact.
            entry = org.location_entry(location_id)
            km = (
                0.0
                if entry is None
                else distance_km(origin, place(entry.latitude, entry.longitude))
            )
            sort_km[location_id] = km
        offers.append(
            Offer(
                provider_keys[provider_id],
                location_keys[location_id],
                start_utc,
                end_utc,
                distance,
                km,
                visit_type_id,
            )
        )
    return tuple(offers)
