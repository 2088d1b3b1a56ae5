"""In-memory availability index: the read model every search is answered from.

Layout (chosen by measurement on our 2-core machines, see bench/bench_index.py):

- **Grid.** Time is a fixed grid of UTC granules (`granule_minutes`, 15 by default) counted
  from `base_epoch_s`, a UTC midnight: granule `g` covers `[base + g*G, base + (g+1)*G)`.
  A grid *day* is a UTC day (96 granules). Local dates and times never enter the grid; they
  become per-query bit masks computed from per-zone tables, so a location's DST change is
  just a different mask, never a differently sized day.
- **Open time.** For each (provider, location) one Python int holds a bit per granule of the
  horizon: set = OPEN at that location. It is the per-day 96-bit words of the provider laid
  end to end: cutting a 14-day window out of a 90-day row is one shift and one mask
  (about 0.2 us), and a visit that crosses UTC midnight needs no special case. A visit of `d`
  granules may start where `d` consecutive bits are set: a shifted AND (log2(d) steps).
  A provider is in one place at a time: opening a granule at one location clears it at the
  provider's other locations, and closing it clears it everywhere.
- **Resources.** For each room or piece of equipment one int of *busy* granules; absent means
  free throughout (most are), so only booked resources cost memory.
- **Attributes.** Provider sets are ints used as bitsets over provider ids: organization,
  specialty, plan, language, new-patient acceptance, visit type offered, providers at a
  location. A query's candidates are a few ANDs of those ints.
- **Places.** Locations sorted by latitude: a bisected latitude band, a longitude check
  (bounding box), then the haversine distance for locations that have a candidate.
- **Search.** Candidates are grouped by location (a radius search walks the locations in its
  box; other searches walk the candidate providers); per location the zone mask (local dates
  and times) and the resource mask are computed once, per pair the window is cut, runs of
  the visit length found and masked. The pairs' start bits are then merged through a heap of
  plain ints that sort like (distance, start, provider key, location key), taking `limit`
  results; cursors carry the last result's key, so the next page resumes after it whatever
  changed in between. Zone masks and per-location resource masks are cached (dropped when
  the grid or that location's resources change).

Why Python ints and not numpy: a variant with a byte-per-granule numpy matrix (vectorised
windows and ordering) was measured slower at the brief's scale (about 235 vs 137 us per
search): a query touches a few dozen pairs, where numpy's per-call cost outweighs its speed.

Ids: the index works on small non-negative integers (bit positions), which the service
assigns densely (see `DenseIds`) to the UUIDs it stores. Providers and locations also carry
their external `key`, which orders ties and goes into cursors, so a cursor stays valid on
any replica and across restarts, whatever dense ids that process assigned. Instants are UTC
epoch seconds (ints).

Concurrency: not thread-safe. The service applies events and answers searches on one event
loop thread; every method runs to completion without awaiting.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import math
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from enum import StrEnum
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt

from availability_svc.domain import (
    DEFAULT_GRANULE_MINUTES,
    GranuleStatus,
    PatientKind,
    ValidationError,
    Violation,
    end_minute_of_day,
    minute_of_day,
    validate_granule_minutes,
)
from availability_svc.geo import (
    EARTH_RADIUS_KM,
    KM_PER_MILE,
    DistanceUnit,
    Place,
    bounding_box,
    distance_km,
    place,
    to_km,
)

__all__ = [
    "AvailabilityIndex",
    "DenseIds",
    "GeoPoint",
    "IndexStats",
    "LocationEntry",
    "ProviderEntry",
    "ResourceChange",
    "ResourceEntry",
    "SearchHit",
    "SearchPage",
    "SearchQuery",
    "SlotChange",
    "SortKey",
    "SortOrder",
    "VisitTypeEntry",
]

_DAY_S = 86_400
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
# UTC offsets in use span -12:00 .. +14:00; a local date lies within these bounds in UTC.
_MAX_AHEAD_S = 14 * 3600
_MAX_BEHIND_S = 12 * 3600
_MAX_LIMIT = 500
_MASK_CACHE_SIZE = 4096
_CURSOR_VERSION = 1
# Above this many candidates, numpy finds the set bits faster than a Python loop.
_NUMPY_BITS_THRESHOLD = 64


class DenseIds:
    """Maps external ids (UUID text) to dense ints 0, 1, 2, ... and back.

    Ids are never reused, so a removed entity's number stays unassigned; the index's bitsets
    are sized by the largest number, which stays close to the entity count.
    """

    def __init__(self) -> None:
        self._numbers: dict[str, int] = {}
        self._keys: list[str] = []

    def intern(self, key: str) -> int:
        """The number for `key`, assigning the next one if `key` is new."""
        number = self._numbers.get(key)
        if number is None:
            number = len(self._keys)
            self._numbers[key] = number
            self._keys.append(key)
        return number

    def get(self, key: str) -> int | None:
        """The number for `key`, or None if it was never interned."""
        return self._numbers.get(key)

    def key(self, number: int) -> str:
        """The external id of `number`."""
        return self._keys[number]

    @property
    def keys(self) -> Sequence[str]:
        """External ids by number (a read-only view for lookups in bulk; do not modify)."""
        return self._keys

    def __len__(self) -> int:
        return len(self._keys)


@dataclass(frozen=True, slots=True)
class ProviderEntry:
    """What the index knows about a provider; `key` is the external id (orders ties)."""

    id: int
    key: str
    organization_id: int
    specialties: frozenset[str]
    languages: frozenset[str]
    plan_ids: frozenset[str]
    accepts_new_patients: bool


@dataclass(frozen=True, slots=True)
class LocationEntry:
    """A location: coordinates in decimal degrees and IANA zone; `key` is the external id."""

    id: int
    key: str
    organization_id: int
    latitude: float
    longitude: float
    timezone: str


@dataclass(frozen=True, slots=True)
class ResourceEntry:
    """A room or piece of equipment of `kind` at a location."""

    id: int
    location_id: int
    kind: str


@dataclass(frozen=True, slots=True)
class VisitTypeEntry:
    """A visit type: duration, resource needs as (kind, count), who it is for, where allowed.

    `location_ids` empty means every location.
    """

    id: int
    organization_id: int
    duration_granules: int
    resource_needs: tuple[tuple[str, int], ...] = ()
    patient_kind: PatientKind = PatientKind.ANY
    location_ids: frozenset[int] = field(default_factory=frozenset)


class SlotChange(NamedTuple):
    """Granules of a provider become OPEN at a location (`open=True`) or stop being OPEN.

    Mapping from slot events: materialized / released / freed / reopened -> `open=True`;
    blocked / held / booked / deleted -> `open=False` (the location is then ignored: a
    provider who is not open at some time is not open anywhere at that time).
    """

    provider_id: int
    location_id: int
    start_utc: int
    granules: int
    open: bool


class ResourceChange(NamedTuple):
    """A resource becomes busy (reserved by a booking) or free again over some granules."""

    resource_id: int
    start_utc: int
    granules: int
    busy: bool


# Where a result sorts: (distance in km, or 0.0 unless sorting by distance; start, UTC epoch
# seconds; provider key; location key). Results are strictly ordered by it.
SortKey = tuple[float, int, str, str]


class SortOrder(StrEnum):
    """Result order: SOONEST = (start, provider, location); DISTANCE = distance first."""

    SOONEST = "SOONEST"
    DISTANCE = "DISTANCE"


class GeoPoint(NamedTuple):
    """A point in decimal degrees."""

    latitude: float
    longitude: float


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """One availability search. Every filter is optional except the organization.

    - `date_from` / `date_to`: inclusive local dates, in each location's own zone;
    - `time_from` / `time_to`: the visit's local *start* time lies in `[time_from, time_to)`;
      `None` means from midnight / until midnight (a `time_to` of 00:00 means midnight too);
    - `not_before_utc`: no start before this instant (the service passes "now");
    - `near` + `radius`: locations within `radius` `unit` of the point; `near` alone only
      computes distances (needed for `SortOrder.DISTANCE`);
    - `visit_type_id`: starts with `duration_granules` consecutive OPEN granules at one
      location, the visit type offered there, and its resources free for the whole visit;
      without it a result is a single granule;
    - `patient_kind`: NEW requires providers accepting new patients, and a visit type for
      new patients (or any); RETURNING a visit type for returning patients (or any);
    - `location_ids`: only these locations;
    - `cursor`: the `next_cursor` of the previous page of the same query; or `after`: the
      `SortKey` of the last result already shown (`SearchPage.next_after`), for callers that
      keep their own page tokens. Either way the next page starts right after that key.
    """

    organization_id: int
    specialty: str | None = None
    provider_ids: frozenset[int] | None = None
    location_ids: frozenset[int] | None = None
    near: GeoPoint | None = None
    radius: float | None = None
    unit: DistanceUnit = DistanceUnit.MI
    plan_id: str | None = None
    language: str | None = None
    visit_type_id: int | None = None
    date_from: date | None = None
    date_to: date | None = None
    time_from: time | None = None
    time_to: time | None = None
    not_before_utc: int | None = None
    patient_kind: PatientKind = PatientKind.ANY
    sort: SortOrder = SortOrder.SOONEST
    limit: int = 20
    cursor: str | None = None
    after: SortKey | None = None

    def __post_init__(self) -> None:
        # Runs for every search, nearly always on a valid query: the checks are written to
        # cost little when they pass (a NaN fails every comparison, so a range check also
        # rejects NaN and the infinities), and problems are gathered only once one is found.
        near, radius, time_from, time_to = self.near, self.radius, self.time_from, self.time_to
        if (
            1 <= self.limit <= _MAX_LIMIT
            and (radius is None or (near is not None and 0 < radius < math.inf))
            and (near is None or (-90 <= near.latitude <= 90 and -180 <= near.longitude <= 180))
            and (near is not None or self.sort is not SortOrder.DISTANCE)
            and not (self.date_from and self.date_to and self.date_from > self.date_to)
            and (
                (time_from is None and time_to is None) or _tod_start(time_from) < _tod_end(time_to)
            )
            and (self.cursor is None or self.after is None)
        ):
            return
        problems: list[Violation] = []
        if not 1 <= self.limit <= _MAX_LIMIT:
            problems.append(Violation("limit", f"must be between 1 and {_MAX_LIMIT}"))
        if radius is not None:
            if near is None:
                problems.append(Violation("radius", "needs a location point"))
            if not (math.isfinite(radius) and radius > 0):
                problems.append(Violation("radius", "must be a positive number"))
        if near is not None:
            if not (math.isfinite(near.latitude) and -90 <= near.latitude <= 90):
                problems.append(Violation("near.latitude", "must be between -90 and 90"))
            if not (math.isfinite(near.longitude) and -180 <= near.longitude <= 180):
                problems.append(Violation("near.longitude", "must be between -180 and 180"))
        if self.sort is SortOrder.DISTANCE and near is None:
            problems.append(Violation("sort", "DISTANCE needs a location point"))
        if self.date_from and self.date_to and self.date_from > self.date_to:
            problems.append(Violation("date_to", "must not be before date_from"))
        if _tod_start(time_from) >= _tod_end(time_to):
            problems.append(Violation("time_to", "must be after time_from"))
        if self.cursor is not None and self.after is not None:
            problems.append(Violation("after", "give either a cursor or an after key"))
        if problems:
            raise ValidationError(problems)

    def fingerprint(self) -> str:
        """Identifies the filters and order, so a cursor is only used with its own query.

        `not_before_utc`, `limit`, `cursor` and `after` are left out: the next page is asked
        for later (a later "now") and may use another page size.
        """
        providers = "" if self.provider_ids is None else sorted(self.provider_ids)
        locations = "" if self.location_ids is None else sorted(self.location_ids)
        near = "" if self.near is None else f"{self.near.latitude!r},{self.near.longitude!r}"
        text = (
            f"{self.organization_id}|{self.specialty}|{providers}|{locations}|{near}|"
            f"{self.radius!r}|"
            f"{self.unit.value}|{self.plan_id}|{self.language}|{self.visit_type_id}|"
            f"{self.date_from}|{self.date_to}|{self.time_from}|{self.time_to}|"
            f"{self.patient_kind.value}|{self.sort.value}"
        )
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


class SearchHit(NamedTuple):
    """One offered start: times are UTC epoch seconds, distance in the query's unit."""

    provider_id: int
    location_id: int
    start_utc: int
    end_utc: int
    distance: float | None
    visit_type_id: int | None


@dataclass(frozen=True, slots=True)
class SearchPage:
    """A page of hits in the query's order; `next_cursor` is None on the last page.

    `next_after` is the last hit's `SortKey` when there is a next page (what `next_cursor`
    encodes), for callers that build their own page tokens. The cursor text is only made
    when asked for: callers with their own tokens never pay for it.
    """

    hits: tuple[SearchHit, ...]
    next_after: SortKey | None = None
    query: SearchQuery | None = field(default=None, repr=False, compare=False)
    """The query this page answers (encodes the cursor)."""

    @property
    def next_cursor(self) -> str | None:
        """Opaque cursor for the next page of the same query, or None on the last page."""
        if self.next_after is None or self.query is None:
            return None
        return _encode_cursor(self.query, self.next_after)

    @property
    def more(self) -> bool:
        """Whether another page follows."""
        return self.next_after is not None


@dataclass(frozen=True, slots=True)
class IndexStats:
    """Size of the index; `memory_bytes` is an estimate of the Python objects it holds."""

    providers: int
    locations: int
    resources: int
    provider_locations: int
    days: int
    open_granules: int
    busy_resource_granules: int
    position: int
    memory_bytes: int


class _Cursor(NamedTuple):
    """The sort key of the last result of the previous page."""

    distance_km: float
    start_utc: int
    provider_key: str
    location_key: str


_EMPTY_PAGE = SearchPage(())
_NO_PAIRS: dict[int, int] = {}


def _tod_start(value: time | None) -> int:
    return 0 if value is None else minute_of_day(value)


def _tod_end(value: time | None) -> int:
    return 24 * 60 if value is None else end_minute_of_day(value)


def _run_steps(length: int) -> tuple[int, ...]:
    """Shifts that turn set bits into starts of `length` consecutive set bits.

    After AND-ing `bits >> step` for each step, bit i is set iff bits i .. i+length-1 were:
    each step doubles the run length covered (at most), so a visit of d granules costs
    about log2(d) operations.
    """
    steps: list[int] = []
    covered = 1
    while covered < length:
        step = min(covered, length - covered)
        steps.append(step)
        covered += step
    return tuple(steps)


def _runs(bits: int, length: int) -> int:
    """Bits i such that bits i .. i+length-1 are all set."""
    for step in _run_steps(length):
        bits &= bits >> step
    return bits


def _at_least(masks: list[int], count: int, full: int) -> int:
    """Bits set in at least `count` of `masks` (bit-sliced counting, saturating at count)."""
    reached = [full] + [0] * count
    for mask in masks:
        for level in range(count, 0, -1):
            reached[level] |= reached[level - 1] & mask
    return reached[count]


def _set_bits(mask: int) -> Iterator[int]:
    """Positions of the set bits of `mask`, ascending."""
    if mask.bit_count() > _NUMPY_BITS_THRESHOLD:
        raw = np.frombuffer(mask.to_bytes((mask.bit_length() + 7) // 8, "little"), np.uint8)
        yield from np.flatnonzero(np.unpackbits(raw, bitorder="little")).tolist()
        return
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def _bool_to_int(flags: npt.NDArray[np.bool_]) -> int:
    return int.from_bytes(np.packbits(flags, bitorder="little").tobytes(), "little")


# A pair with matching starts: (first start's window position, pair rank by keys, the other
# start bits, provider id, location id, distance in km or None).
_Match = tuple[int, int, int, int, int, float | None]
# A location for radius searches: (longitude, location id, phi, lambda and cos phi of its
# `Place`, time zone).
_GeoRecord = tuple[float, int, float, float, float, str]


def _after_cursor(
    starts: int,
    cursor: _Cursor,
    cursor_position: int,
    distance: float | None,
    provider_key: str,
    location_key: str,
) -> int:
    """Keep only the starts that sort after the cursor's key.

    `cursor_position` is the cursor's start as a window position; `distance` (km) is given
    for DISTANCE order only.
    """
    if distance is not None:
        if distance < cursor.distance_km:
            return 0
        if distance > cursor.distance_km:
            return starts
    if (provider_key, location_key) <= (cursor.provider_key, cursor.location_key):
        cursor_position += 1
    if cursor_position <= 0:
        return starts
    return (starts >> cursor_position) << cursor_position


def _allowed_locations(
    query: SearchQuery, visit_type: VisitTypeEntry | None
) -> frozenset[int] | None:
    """Locations the query and the visit type both allow; None means any."""
    allowed = query.location_ids
    if visit_type is not None and visit_type.location_ids:
        if allowed is None:
            return visit_type.location_ids
        return allowed & visit_type.location_ids
    return allowed


def _kind_allows(visit_kind: PatientKind, patient: PatientKind) -> bool:
    return patient is PatientKind.ANY or visit_kind in (PatientKind.ANY, patient)


class AvailabilityIndex:
    """Open time per provider and location, busy time per resource, and the search over them.

    Build it with the `upsert_*` methods and `bulk_load_*` (from a database snapshot), then
    keep it current with `apply` (events, de-duplicated by stream sequence) and serve
    `search`. See the module docstring for the layout.
    """

    def __init__(
        self,
        base_epoch_s: int,
        horizon_days: int = 90,
        granule_minutes: int = DEFAULT_GRANULE_MINUTES,
        max_days: int = 400,
    ) -> None:
        """`base_epoch_s` is the UTC midnight where the grid starts (granules before it are
        ignored); the grid grows by whole days up to `max_days` as later granules arrive."""
        validate_granule_minutes(granule_minutes)
        if base_epoch_s % _DAY_S:
            raise ValidationError.of("base_epoch_s", "must be a UTC midnight")
        if not 1 <= horizon_days <= max_days:
            raise ValidationError.of("horizon_days", f"must be between 1 and max_days={max_days}")
        self._granule_s = granule_minutes * 60
        self._per_day = 24 * 60 // granule_minutes
        self._base_s = base_epoch_s
        self._n = horizon_days * self._per_day
        self._max_n = max_days * self._per_day
        self._position = 0

        self._providers: dict[int, ProviderEntry] = {}
        self._locations: dict[int, LocationEntry] = {}
        self._resources: dict[int, ResourceEntry] = {}
        self._visit_types: dict[int, VisitTypeEntry] = {}

        self._open: dict[int, dict[int, int]] = {}
        self._busy: dict[int, int] = {}

        self._org_providers: dict[int, int] = {}
        self._by_specialty: dict[str, int] = {}
        self._by_plan: dict[str, int] = {}
        self._by_language: dict[str, int] = {}
        self._accepting_new = 0
        self._at_location: dict[int, int] = {}
        self._offers: dict[tuple[int, int], frozenset[int]] = {}
        self._offering: dict[int, int] = {}
        self._offering_at: dict[int, dict[int, int]] = {}
        self._resources_at: dict[tuple[int, str], list[int]] = {}
        self._free_cache: dict[tuple[int, str], dict[tuple[int, int], int]] = {}
        self._provider_keys: dict[int, str] = {}
        self._location_keys: dict[int, str] = {}
        self._location_zones: dict[int, str] = {}
        self._places: dict[int, Place] = {}
        self._provider_rank: dict[int, int] = {}
        self._location_rank: dict[int, int] = {}
        self._ranks_dirty = False

        self._geo_lat: list[float] = []
        self._geo_places: list[_GeoRecord] = []
        self._geo_dirty = False
        self._zone_tables: dict[str, tuple[npt.NDArray[np.int32], npt.NDArray[np.int16]]] = {}
        self._mask_cache: dict[tuple[Any, ...], int] = {}

    # ---- grid -------------------------------------------------------------------------------

    @property
    def base_epoch_s(self) -> int:
        """UTC epoch second where granule 0 starts."""
        return self._base_s

    @property
    def granule_seconds(self) -> int:
        """Length of one granule in seconds."""
        return self._granule_s

    @property
    def end_epoch_s(self) -> int:
        """UTC epoch second where the grid currently ends."""
        return self._base_s + self._n * self._granule_s

    @property
    def position(self) -> int:
        """Stream sequence of the last event applied (0 before any)."""
        return self._position

    def set_position(self, sequence: int) -> None:
        """Record that the loaded snapshot reflects every event up to `sequence`."""
        if sequence < 0:
            raise ValidationError.of("sequence", "must not be negative")
        self._position = sequence

    def roll_forward(self, new_base_epoch_s: int) -> None:
        """Drop whole days before `new_base_epoch_s` (a later UTC midnight)."""
        if new_base_epoch_s % _DAY_S or new_base_epoch_s < self._base_s:
            raise ValidationError.of(
                "new_base_epoch_s", "must be a UTC midnight not before the current base"
            )
        shift = (new_base_epoch_s - self._base_s) // self._granule_s
        if shift == 0:
            return
        for by_location in self._open.values():
            for location_id, bits in by_location.items():
                by_location[location_id] = bits >> shift
        for resource_id, busy in list(self._busy.items()):
            remaining = busy >> shift
            if remaining:
                self._busy[resource_id] = remaining
            else:
                del self._busy[resource_id]
        self._base_s = new_base_epoch_s
        self._n = max(self._n - shift, self._per_day)
        self._grid_changed()

    def _grid_changed(self) -> None:
        self._zone_tables.clear()
        self._mask_cache.clear()
        self._free_cache.clear()

    def _granule_range(self, start_utc: int, granules: int) -> int:
        """Bit mask of `granules` granules from `start_utc`, clipped to the grid (may be 0)."""
        offset = start_utc - self._base_s
        if offset % self._granule_s:
            raise ValidationError.of("start_utc", "is not on the granule grid")
        if granules < 1:
            raise ValidationError.of("granules", "must be at least 1")
        first = offset // self._granule_s
        end = min(first + granules, self._max_n)
        first = max(first, 0)
        if end <= first:
            return 0
        if end > self._n:
            self._grow(end)
        return ((1 << (end - first)) - 1) << first

    def _grow(self, end_granule: int) -> None:
        days = -(-end_granule // self._per_day)
        self._n = days * self._per_day
        self._grid_changed()

    # ---- reference data ---------------------------------------------------------------------

    def upsert_location(self, entry: LocationEntry) -> None:
        """Add or replace a location."""
        if entry.id < 0:
            raise ValidationError.of("id", "must be a non-negative dense id")
        try:
            ZoneInfo(entry.timezone)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ValidationError.of("timezone", "must be an IANA time zone name") from e
        self._locations[entry.id] = entry
        self._location_keys[entry.id] = entry.key
        self._location_zones[entry.id] = entry.timezone
        self._places[entry.id] = place(entry.latitude, entry.longitude)
        self._geo_dirty = True
        self._ranks_dirty = True

    def remove_location(self, location_id: int) -> None:
        """Stop offering a location. Its open time is kept, unsearchable, so a location that
        comes back keeps the schedule the event stream gave it."""
        if self._locations.pop(location_id, None) is None:
            return
        self._location_keys.pop(location_id, None)
        self._location_zones.pop(location_id, None)
        self._places.pop(location_id, None)
        self._geo_dirty = True
        self._ranks_dirty = True

    def upsert_provider(self, entry: ProviderEntry) -> None:
        """Add or replace a provider's searchable attributes."""
        if entry.id < 0:
            raise ValidationError.of("id", "must be a non-negative dense id")
        self._forget_provider_attributes(entry.id)
        self._providers[entry.id] = entry
        self._provider_keys[entry.id] = entry.key
        self._ranks_dirty = True
        bit = 1 << entry.id
        self._org_providers[entry.organization_id] = (
            self._org_providers.get(entry.organization_id, 0) | bit
        )
        for table, values in (
            (self._by_specialty, entry.specialties),
            (self._by_plan, entry.plan_ids),
            (self._by_language, entry.languages),
        ):
            for value in values:
                table[value] = table.get(value, 0) | bit
        if entry.accepts_new_patients:
            self._accepting_new |= bit

    def remove_provider(self, provider_id: int) -> None:
        """Forget a provider, its open time and what it offers."""
        self._forget_provider_attributes(provider_id)
        self._providers.pop(provider_id, None)
        self._provider_keys.pop(provider_id, None)
        self._ranks_dirty = True
        bit = 1 << provider_id
        for location_id in self._open.pop(provider_id, {}):
            self._at_location[location_id] &= ~bit
            self._set_offers(provider_id, location_id, frozenset())

    def _forget_provider_attributes(self, provider_id: int) -> None:
        old = self._providers.get(provider_id)
        if old is None:
            return
        keep = ~(1 << provider_id)
        self._org_providers[old.organization_id] &= keep
        for table, values in (
            (self._by_specialty, old.specialties),
            (self._by_plan, old.plan_ids),
            (self._by_language, old.languages),
        ):
            for value in values:
                table[value] &= keep
        self._accepting_new &= keep

    def upsert_resource(self, entry: ResourceEntry) -> None:
        """Add or replace a room or piece of equipment."""
        self.remove_resource(entry.id, keep_busy=True)
        self._resources[entry.id] = entry
        self._resources_at.setdefault((entry.location_id, entry.kind), []).append(entry.id)
        self._free_cache.pop((entry.location_id, entry.kind), None)

    def remove_resource(self, resource_id: int, keep_busy: bool = False) -> None:
        """Forget a resource (and its busy time unless `keep_busy`)."""
        old = self._resources.pop(resource_id, None)
        if old is not None:
            self._resources_at[(old.location_id, old.kind)].remove(resource_id)
            self._free_cache.pop((old.location_id, old.kind), None)
        if not keep_busy:
            self._busy.pop(resource_id, None)

    def upsert_visit_type(self, entry: VisitTypeEntry) -> None:
        """Add or replace a visit type."""
        if entry.duration_granules < 1:
            raise ValidationError.of("duration_granules", "must be at least 1")
        if any(count < 1 for _, count in entry.resource_needs):
            raise ValidationError.of("resource_needs", "counts must be at least 1")
        self._visit_types[entry.id] = entry

    def set_offered_visit_types(
        self, provider_id: int, location_id: int, visit_type_ids: Iterable[int]
    ) -> None:
        """Which visit types a provider offers at a location (see `offered_visit_types`)."""
        self._set_offers(provider_id, location_id, frozenset(visit_type_ids))
        self._pair(provider_id, location_id)

    def _set_offers(self, provider_id: int, location_id: int, offered: frozenset[int]) -> None:
        key = (provider_id, location_id)
        before = self._offers.get(key, frozenset())
        if offered:
            self._offers[key] = offered
        else:
            self._offers.pop(key, None)
        bit = 1 << provider_id
        for visit_type_id in before ^ offered:
            at = self._offering_at.setdefault(visit_type_id, {})
            if visit_type_id in offered:
                at[location_id] = at.get(location_id, 0) | bit
            else:
                at[location_id] = at.get(location_id, 0) & ~bit
            still = (
                any(
                    visit_type_id in self._offers.get((provider_id, other), ())
                    for other in self._open.get(provider_id, {})
                )
                or visit_type_id in offered
            )
            if still:
                self._offering[visit_type_id] = self._offering.get(visit_type_id, 0) | bit
            else:
                self._offering[visit_type_id] = self._offering.get(visit_type_id, 0) & ~bit

    def _pair(self, provider_id: int, location_id: int) -> dict[int, int]:
        by_location = self._open.get(provider_id)
        if by_location is None:
            by_location = self._open[provider_id] = {}
        if location_id not in by_location:
            by_location[location_id] = 0
            self._at_location[location_id] = self._at_location.get(location_id, 0) | (
                1 << provider_id
            )
        return by_location

    # ---- mutations ----------------------------------------------------------------------------

    def open_granules(
        self, provider_id: int, location_id: int, start_utc: int, granules: int = 1
    ) -> None:
        """Granules become OPEN at `location_id` (and not OPEN at the provider's others)."""
        mask = self._granule_range(start_utc, granules)
        if not mask:
            return
        by_location = self._pair(provider_id, location_id)
        for other, bits in by_location.items():
            if other != location_id and bits & mask:
                by_location[other] = bits & ~mask
        by_location[location_id] |= mask

    def close_granules(self, provider_id: int, start_utc: int, granules: int = 1) -> None:
        """Granules stop being OPEN (blocked, held, booked or deleted), at every location."""
        mask = self._granule_range(start_utc, granules)
        by_location = self._open.get(provider_id)
        if not mask or by_location is None:
            return
        for location_id, bits in by_location.items():
            if bits & mask:
                by_location[location_id] = bits & ~mask

    def set_granule_status(
        self,
        provider_id: int,
        location_id: int,
        start_utc: int,
        status: GranuleStatus,
        granules: int = 1,
    ) -> None:
        """Apply a granule's new status: OPEN opens it, any other status closes it."""
        if status is GranuleStatus.OPEN:
            self.open_granules(provider_id, location_id, start_utc, granules)
        else:
            self.close_granules(provider_id, start_utc, granules)

    def set_resource_busy(
        self, resource_id: int, start_utc: int, granules: int, busy: bool
    ) -> None:
        """A resource is reserved (`busy`) or released over the granules."""
        mask = self._granule_range(start_utc, granules)
        if not mask:
            return
        entry = self._resources.get(resource_id)
        if entry is not None:
            self._free_cache.pop((entry.location_id, entry.kind), None)
        current = self._busy.get(resource_id, 0)
        updated = current | mask if busy else current & ~mask
        if updated:
            self._busy[resource_id] = updated
        else:
            self._busy.pop(resource_id, None)

    def apply(self, sequence: int, changes: Iterable[SlotChange | ResourceChange]) -> bool:
        """Apply one event's changes unless `sequence` was applied already.

        Events arrive at least once and in stream order; one whose sequence is not above
        `position` is a redelivery and is skipped (returns False). Each change sets a state
        rather than toggling, so replaying is harmless either way.
        """
        if sequence <= self._position:
            return False
        for change in changes:
            if isinstance(change, SlotChange):
                if change.open:
                    self.open_granules(
                        change.provider_id, change.location_id, change.start_utc, change.granules
                    )
                else:
                    self.close_granules(change.provider_id, change.start_utc, change.granules)
            else:
                self.set_resource_busy(
                    change.resource_id, change.start_utc, change.granules, change.busy
                )
        self._position = sequence
        return True

    # ---- bulk build ---------------------------------------------------------------------------

    def bulk_load_granules(
        self,
        provider_ids: npt.ArrayLike,
        location_ids: npt.ArrayLike,
        start_utc: npt.ArrayLike,
        is_open: npt.ArrayLike | None = None,
    ) -> int:
        """Add OPEN granules from columns (e.g. a snapshot query), vectorised.

        Rows with `is_open` false are skipped (pass None when every row is OPEN, e.g. when
        the query already filtered on status). Rows before the grid are ignored. Can be called
        per batch; bits are OR-ed into what is there. Returns the number of OPEN rows used.
        Unlike `open_granules` it does not clear other locations: a snapshot is consistent.
        """
        providers = np.asarray(provider_ids, dtype=np.int64)
        locations = np.asarray(location_ids, dtype=np.int64)
        granule = self._grid_positions(np.asarray(start_utc, dtype=np.int64))
        keep = granule >= 0
        if is_open is not None:
            keep &= np.asarray(is_open, dtype=np.bool_)
        providers, locations, granule = providers[keep], locations[keep], granule[keep]
        if granule.size == 0:
            return 0
        width = int(locations.max()) + 1
        rows = _bits_by_group(providers * width + locations, granule, self._n)
        for pair_key, bits in rows.items():
            provider_id, location_id = divmod(pair_key, width)
            by_location = self._pair(provider_id, location_id)
            by_location[location_id] |= bits
        return int(granule.size)

    def bulk_load_resource_busy(
        self, resource_ids: npt.ArrayLike, start_utc: npt.ArrayLike, end_utc: npt.ArrayLike
    ) -> int:
        """Add resource reservations `[start_utc, end_utc)` from columns, vectorised.

        Reservations that are not on the grid are widened to whole granules (a resource is
        busy for any granule it is partly reserved in). Returns the busy granules added.
        """
        resources = np.asarray(resource_ids, dtype=np.int64)
        starts = np.asarray(start_utc, dtype=np.int64) - self._base_s
        ends = np.asarray(end_utc, dtype=np.int64) - self._base_s
        first = np.floor_divide(starts, self._granule_s)
        last = -np.floor_divide(-ends, self._granule_s)
        lengths = np.maximum(last - first, 0)
        granule = np.repeat(first, lengths) + _ramps(lengths)
        owner = np.repeat(resources, lengths)
        keep = (granule >= 0) & (granule < self._max_n)
        granule, owner = granule[keep], owner[keep]
        if granule.size == 0:
            return 0
        self._ensure_capacity(int(granule.max()) + 1)
        for resource_id, bits in _bits_by_group(owner, granule, self._n).items():
            self._busy[resource_id] = self._busy.get(resource_id, 0) | bits
        self._free_cache.clear()
        return int(granule.size)

    def _grid_positions(self, starts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Granule index of each start; -1 where it is outside the grid's reach."""
        offset = starts - self._base_s
        if np.any(offset % self._granule_s):
            raise ValidationError.of("start_utc", "contains instants not on the granule grid")
        granule = offset // self._granule_s
        granule[(granule < 0) | (granule >= self._max_n)] = -1
        if granule.size:
            self._ensure_capacity(int(granule.max()) + 1)
        return granule

    def _ensure_capacity(self, end_granule: int) -> None:
        if end_granule > self._n:
            self._grow(end_granule)

    # ---- search -------------------------------------------------------------------------------

    def search(self, query: SearchQuery) -> SearchPage:
        """Offered starts matching `query`, in its order, one page (see `SearchQuery`)."""
        cursor = None
        if query.cursor is not None:
            cursor = _decode_cursor(query)
        elif query.after is not None:
            cursor = _Cursor(*query.after)
        visit_type: VisitTypeEntry | None = None
        duration = 1
        if query.visit_type_id is not None:
            visit_type = self._visit_types.get(query.visit_type_id)
            if (
                visit_type is None
                or visit_type.organization_id != query.organization_id
                or not _kind_allows(visit_type.patient_kind, query.patient_kind)
            ):
                return _EMPTY_PAGE
            duration = visit_type.duration_granules
        candidates = self._candidate_providers(query, visit_type)
        lo, hi = self._window(query)
        if not candidates or lo >= hi:
            return _EMPTY_PAGE

        width = hi - lo
        span = (1 << (width + duration - 1)) - 1
        zone_masks: dict[str, int] = {}
        found: list[_Match] = []
        order_width = self._order_width()
        provider_rank, location_rank = self._provider_rank, self._location_rank
        location_count = len(location_rank)
        location_zones = self._location_zones
        needs = () if visit_type is None else visit_type.resource_needs
        by_distance = query.sort is SortOrder.DISTANCE
        steps = _run_steps(duration)
        cursor_position = 0
        if cursor is not None:
            cursor_position = (cursor.start_utc - self._base_s) // self._granule_s - lo

        if cursor is None and query.near is not None and query.radius is not None:
            # The common shape (a first page around a point) has a loop of its own.
            found = self._radius_matches(
                query, candidates, visit_type, lo, width, span, steps, zone_masks
            )
            return self._page(query, found, order_width, lo, width, duration, visit_type)

        for location_id, distance, members in self._groups(query, candidates, visit_type):
            zone = location_zones.get(location_id)
            if zone is None:
                continue  # a location not registered yet is not searchable
            mask = zone_masks.get(zone)
            if mask is None:
                mask = zone_masks[zone] = self._zone_mask(zone, query, lo, hi)
            if needs:
                mask &= self._resource_starts(location_id, needs, duration, lo, width)
            if not mask:
                continue
            rank_here = location_rank[location_id]
            location_key = self._location_keys[location_id]
            for provider_id, bits in members:
                starts = (bits >> lo) & span
                for step in steps:
                    starts &= starts >> step
                starts &= mask
                if starts and cursor is not None:
                    starts = _after_cursor(
                        starts,
                        cursor,
                        cursor_position,
                        distance if by_distance else None,
                        self._provider_keys[provider_id],
                        location_key,
                    )
                if starts:
                    low = starts & -starts
                    found.append(
                        (
                            low.bit_length() - 1,
                            provider_rank[provider_id] * location_count + rank_here,
                            starts ^ low,
                            provider_id,
                            location_id,
                            distance,
                        )
                    )

        return self._page(query, found, order_width, lo, width, duration, visit_type)

    def _radius_matches(
        self,
        query: SearchQuery,
        candidates: int,
        visit_type: VisitTypeEntry | None,
        lo: int,
        width: int,
        span: int,
        steps: tuple[int, ...],
        zone_masks: dict[str, int],
    ) -> list[_Match]:
        """The matches of a first page (no cursor) within a radius: `_groups` and the pair
        loop of `search` in one pass, with the distance computed inline.

        Gives exactly what the general loop gives (the tests compare both); it exists
        because this is what nearly every search asks and each step here runs for dozens
        of locations and pairs per search.
        """
        near = query.near
        radius = query.radius
        assert near is not None
        assert radius is not None
        allowed = _allowed_locations(query, visit_type)
        open_by_provider = self._open
        location_rank = self._location_rank
        provider_rank = self._provider_rank
        location_count = len(location_rank)
        needs = () if visit_type is None else visit_type.resource_needs
        duration = 1 if visit_type is None else visit_type.duration_granules
        radius_km = to_km(radius, query.unit)
        phi, lmb, cos_phi = place(near.latitude, near.longitude)
        sin, asin, sqrt = math.sin, math.asin, math.sqrt
        masks = (
            self._at_location
            if visit_type is None
            else self._offering_at.get(visit_type.id, _NO_PAIRS)
        )
        masks_get = masks.get
        window = span << lo
        found: list[_Match] = []
        min_lat, max_lat, min_lon, max_lon = bounding_box(near[0], near[1], radius_km)
        # One pass over the latitude band: longitude, candidates, distance, then the pairs.
        for lon, location_id, where_phi, where_lmb, where_cos, zone in self._latitude_band(
            min_lat, max_lat
        ):
            if lon < min_lon or lon > max_lon:
                continue
            here = masks_get(location_id)
            if here is None:
                continue
            here &= candidates
            if not here or (allowed is not None and location_id not in allowed):
                continue
            # distance_km(origin, where), written out (same operations, same result).
            h = (
                sin((where_phi - phi) / 2) ** 2
                + cos_phi * where_cos * sin((where_lmb - lmb) / 2) ** 2
            )
            distance = 2 * EARTH_RADIUS_KM * asin(min(1.0, sqrt(h)))
            if distance > radius_km:
                continue
            mask = zone_masks.get(zone)
            if mask is None:
                mask = zone_masks[zone] = self._zone_mask(zone, query, lo, lo + width)
            if needs:
                mask &= self._resource_starts(location_id, needs, duration, lo, width)
            if not mask:
                continue
            rank_here = location_rank[location_id]
            # Starts are worked out in grid positions (window bits cut out with one AND,
            # which costs less than shifting the whole row down) and shifted at the end.
            mask <<= lo  # zone and resource masks are `width` bits: inside the window
            while here:  # a handful of providers per location: peel the bits off the top
                provider_id = here.bit_length() - 1
                here ^= 1 << provider_id
                row = open_by_provider[provider_id][location_id]
                starts = row & mask  # no start outside this: the run check only removes bits
                if starts and steps:
                    starts = row & window
                    for step in steps:
                        starts &= starts >> step
                    starts &= mask
                if starts:
                    starts >>= lo
                    low = starts & -starts
                    found.append(
                        (
                            low.bit_length() - 1,
                            provider_rank[provider_id] * location_count + rank_here,
                            starts ^ low,
                            provider_id,
                            location_id,
                            distance,
                        )
                    )
        return found

    def _groups(
        self, query: SearchQuery, candidates: int, visit_type: VisitTypeEntry | None
    ) -> Iterator[tuple[int, float | None, list[tuple[int, int]]]]:
        """Candidate pairs grouped by location: (location, distance km or None,
        [(provider, open bits)]), for locations that allow the visit type and providers that
        offer it there.

        With a radius, walk the locations in its bounding box and the candidates at each, so
        a distance is computed once per location that has a candidate; otherwise walk the
        candidates and their locations.
        """
        near = query.near
        allowed = _allowed_locations(query, visit_type)
        open_by_provider = self._open
        places = self._places
        if near is not None and query.radius is not None:
            radius_km = to_km(query.radius, query.unit)
            origin = place(near.latitude, near.longitude)
            # Providers at each location, or those offering the visit type there.
            masks = (
                self._at_location
                if visit_type is None
                else self._offering_at.get(visit_type.id, _NO_PAIRS)
            )
            for location_id in self._locations_in_box(near, radius_km):
                here = masks.get(location_id, 0) & candidates
                if not here or (allowed is not None and location_id not in allowed):
                    continue
                distance = distance_km(origin, places[location_id])
                if distance > radius_km:
                    continue
                members = []
                while here:  # a handful of providers per location: peel the bits off
                    low = here & -here
                    provider_id = low.bit_length() - 1
                    here ^= low
                    members.append((provider_id, open_by_provider[provider_id][location_id]))
                yield location_id, distance, members
            return
        offers = self._offers
        by_location: dict[int, list[tuple[int, int]]] = {}
        for provider_id in _set_bits(candidates):
            for location_id, bits in open_by_provider.get(provider_id, _NO_PAIRS).items():
                if allowed is not None and location_id not in allowed:
                    continue
                if visit_type is not None and visit_type.id not in offers.get(
                    (provider_id, location_id), ()
                ):
                    continue
                by_location.setdefault(location_id, []).append((provider_id, bits))
        start = None if near is None else place(near.latitude, near.longitude)
        for location_id, members in by_location.items():
            where = places.get(location_id)
            if where is None:
                continue  # a location not registered yet is not searchable
            yield location_id, None if start is None else distance_km(start, where), members

    def _candidate_providers(self, query: SearchQuery, visit_type: VisitTypeEntry | None) -> int:
        candidates = self._org_providers.get(query.organization_id, 0)
        if query.specialty is not None:
            candidates &= self._by_specialty.get(query.specialty, 0)
        if query.plan_id is not None:
            candidates &= self._by_plan.get(query.plan_id, 0)
        if query.language is not None:
            candidates &= self._by_language.get(query.language, 0)
        if query.provider_ids is not None:
            wanted = 0
            for provider_id in query.provider_ids:
                wanted |= 1 << provider_id
            candidates &= wanted
        if query.patient_kind is PatientKind.NEW:
            candidates &= self._accepting_new
        if query.location_ids is not None:
            there = 0
            for location_id in query.location_ids:
                there |= self._at_location.get(location_id, 0)
            candidates &= there
        if visit_type is not None:
            candidates &= self._offering.get(visit_type.id, 0)
        return candidates

    def _window(self, query: SearchQuery) -> tuple[int, int]:
        """Granule range [lo, hi) that can hold a matching start, over-approximated in zones.

        Dates are local to each location, so the range spans every UTC offset; the per-zone
        mask then keeps exactly the granules whose local date and time match.
        """
        lo, hi = 0, self._n
        g = self._granule_s
        if query.not_before_utc is not None:
            lo = max(lo, -(-(query.not_before_utc - self._base_s) // g))
        if query.date_from is not None:
            first = _midnight_utc(query.date_from) - _MAX_AHEAD_S - self._base_s
            lo = max(lo, first // g)
        if query.date_to is not None:
            last = _midnight_utc(query.date_to) + _DAY_S + _MAX_BEHIND_S - self._base_s
            hi = min(hi, -(-last // g))
        return lo, hi

    def _zone_mask(self, tz_name: str, query: SearchQuery, lo: int, hi: int) -> int:
        """Window bits whose local date and time of day (in `tz_name`) match the query."""
        t0, t1 = _tod_start(query.time_from), _tod_end(query.time_to)
        if query.date_from is None and query.date_to is None and t0 == 0 and t1 == 24 * 60:
            return (1 << (hi - lo)) - 1
        key = (tz_name, lo, hi, query.date_from, query.date_to, t0, t1)
        cached = self._mask_cache.get(key)
        if cached is not None:
            return cached
        local_day, local_minute = self._zone_table(tz_name)
        days = local_day[lo:hi]
        minutes = local_minute[lo:hi]
        ok = np.ones(hi - lo, dtype=np.bool_)
        if query.date_from is not None:
            ok &= days >= query.date_from.toordinal()
        if query.date_to is not None:
            ok &= days <= query.date_to.toordinal()
        if t0 > 0:
            ok &= minutes >= t0
        if t1 < 24 * 60:
            ok &= minutes < t1
        mask = _bool_to_int(ok)
        if len(self._mask_cache) >= _MASK_CACHE_SIZE:
            self._mask_cache.clear()
        self._mask_cache[key] = mask
        return mask

    def _zone_table(self, tz_name: str) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int16]]:
        """Local date (ordinal) and minute of day of every granule of the grid in a zone."""
        table = self._zone_tables.get(tz_name)
        if table is None:
            offsets = _utc_offsets(ZoneInfo(tz_name), self._base_s, self._granule_s, self._n)
            starts = self._base_s + np.arange(self._n, dtype=np.int64) * self._granule_s
            local = starts + offsets
            local_day = (local // _DAY_S + _EPOCH_ORDINAL).astype(np.int32)
            local_minute = ((local % _DAY_S) // 60).astype(np.int16)
            table = self._zone_tables[tz_name] = (local_day, local_minute)
        return table

    def _resource_starts(
        self,
        location_id: int,
        needs: tuple[tuple[str, int], ...],
        duration: int,
        lo: int,
        width: int,
    ) -> int:
        """Window starts where the location has every resource the visit needs free for the
        whole visit."""
        allowed = (1 << width) - 1
        for kind, count in needs:
            allowed &= self._free_starts(location_id, kind, count, duration) >> lo
            if not allowed:
                break
        return allowed

    def _free_starts(self, location_id: int, kind: str, count: int, duration: int) -> int:
        """Grid starts where `count` distinct resources of `kind` at the location are each
        free for `duration` granules.

        Cached over the whole grid per (location, kind): bookings touch a resource a few
        times a second while searches read it hundreds of times, so each change only drops
        the cache of its own location and kind.
        """
        by_need = self._free_cache.get((location_id, kind))
        if by_need is None:
            by_need = self._free_cache[(location_id, kind)] = {}
        cached = by_need.get((count, duration))
        if cached is not None:
            return cached
        members = self._resources_at.get((location_id, kind), ())
        full = (1 << self._n) - 1
        if len(members) < count:
            result = 0
        else:
            always_free = 0
            partly_free: list[int] = []
            for resource_id in members:
                busy = self._busy.get(resource_id, 0) & full
                if busy:
                    partly_free.append(_runs(~busy & full, duration))
                else:
                    always_free += 1
            if always_free >= count:
                result = full
            else:
                result = _at_least(partly_free, count - always_free, full)
        by_need[(count, duration)] = result
        return result

    def _page(
        self,
        query: SearchQuery,
        found: list[_Match],
        order_width: int,
        lo: int,
        width: int,
        duration: int,
        visit_type: VisitTypeEntry | None,
    ) -> SearchPage:
        """Merge the matches' start bits in sort order into one page.

        Heap entries are plain ints ordered like (distance rank, start, provider key,
        location key) with the match's index in the low bits: Python compares them in C,
        which keeps the merge to a few operations per result.
        """
        if not found:
            return _EMPTY_PAGE
        shift = len(found).bit_length()
        index_mask = (1 << shift) - 1
        step = order_width << shift  # the same pair, one granule later
        if query.sort is SortOrder.DISTANCE:
            ordered = sorted({match[5] or 0.0 for match in found})
            distance_rank = {d: rank * width for rank, d in enumerate(ordered)}
            heap = [
                (((distance_rank[d or 0.0] + position) * order_width + rank) << shift) | index
                for index, (position, rank, _, _, _, d) in enumerate(found)
            ]
        else:
            heap = [
                ((position * order_width + rank) << shift) | index
                for index, (position, rank, _, _, _, _) in enumerate(found)
            ]
        heapq.heapify(heap)

        limit = query.limit
        hits: list[SearchHit] = []
        first_start = self._base_s + lo * self._granule_s
        g = self._granule_s
        length = duration * g
        divisor = KM_PER_MILE if query.unit is DistanceUnit.MI else 1.0
        visit_type_id = None if visit_type is None else visit_type.id
        rests = [match[2] for match in found]
        # Per match: (provider, location, distance in the query's unit), made once.
        where = [
            (provider_id, location_id, None if distance is None else distance / divisor)
            for _, _, _, provider_id, location_id, distance in found
        ]
        replace, pop, new_hit = heapq.heapreplace, heapq.heappop, tuple.__new__
        index = 0
        while heap and len(hits) < limit:
            key = heap[0]
            index = key & index_mask
            position = (key >> shift) // order_width % width
            provider_id, location_id, distance = where[index]
            start = first_start + position * g
            # tuple.__new__ makes the same SearchHit as its constructor, at a third of the cost.
            hits.append(
                new_hit(
                    SearchHit,
                    (provider_id, location_id, start, start + length, distance, visit_type_id),
                )
            )
            rest = rests[index]
            if rest:
                low = rest & -rest
                rests[index] = rest ^ low
                replace(heap, key + (low.bit_length() - 1 - position) * step)
            else:
                pop(heap)
        if not heap:
            return SearchPage(tuple(hits))
        last = hits[-1]
        last_key = (
            (found[index][5] or 0.0) if query.sort is SortOrder.DISTANCE else 0.0,
            last.start_utc,
            self._provider_keys[last.provider_id],
            self._location_keys[last.location_id],
        )
        return SearchPage(tuple(hits), last_key, query)

    def _order_width(self) -> int:
        """Number of distinct (provider, location) ranks; recomputes ranks after changes.

        Ranks follow the external keys, so ordering by rank is ordering by key.
        """
        if self._ranks_dirty:
            by_key = sorted(self._provider_keys, key=self._provider_keys.__getitem__)
            self._provider_rank = {provider_id: rank for rank, provider_id in enumerate(by_key)}
            by_key = sorted(self._location_keys, key=self._location_keys.__getitem__)
            self._location_rank = {location_id: rank for rank, location_id in enumerate(by_key)}
            self._ranks_dirty = False
        return max(1, len(self._provider_rank) * len(self._location_rank))

    def _latitude_band(self, min_lat: float, max_lat: float) -> list[_GeoRecord]:
        """The locations whose latitude is within [min_lat, max_lat], in latitude order."""
        if self._geo_dirty:
            ordered = sorted(self._locations.values(), key=lambda e: e.latitude)
            self._geo_lat = [e.latitude for e in ordered]
            self._geo_places = [
                (e.longitude, e.id, *self._places[e.id], self._location_zones[e.id])
                for e in ordered
            ]
            self._geo_dirty = False
        lat = self._geo_lat
        return self._geo_places[bisect_left(lat, min_lat) : bisect_right(lat, max_lat)]

    def _locations_in_box(self, point: GeoPoint, radius_km: float) -> list[int]:
        """Locations inside the bounding box of the circle (a superset of those within it),
        in latitude order."""
        min_lat, max_lat, min_lon, max_lon = bounding_box(point[0], point[1], radius_km)
        # A latitude band holds a few dozen locations: a Python loop beats numpy's per-call
        # cost here.
        return [
            record[1]
            for record in self._latitude_band(min_lat, max_lat)
            if min_lon <= record[0] <= max_lon
        ]

    # ---- introspection --------------------------------------------------------------------------

    def snapshot_stats(self) -> IndexStats:
        """Counts and an estimate of the memory the index holds."""
        pairs = 0
        open_granules = 0
        memory = 0
        for by_location in self._open.values():
            memory += sys.getsizeof(by_location)
            for bits in by_location.values():
                pairs += 1
                open_granules += bits.bit_count()
                memory += sys.getsizeof(bits)
        busy = 0
        for bits in self._busy.values():
            busy += bits.bit_count()
            memory += sys.getsizeof(bits)
        for table in (self._by_specialty, self._by_plan, self._by_language, self._at_location):
            memory += sys.getsizeof(table) + sum(sys.getsizeof(v) for v in table.values())
        for entries in (self._providers, self._locations, self._resources, self._offers):
            memory += sys.getsizeof(entries) + 200 * len(entries)
        memory += sum(a.nbytes + b.nbytes for a, b in self._zone_tables.values())
        memory += sum(sys.getsizeof(v) for v in self._mask_cache.values())
        return IndexStats(
            providers=len(self._providers),
            locations=len(self._locations),
            resources=len(self._resources),
            provider_locations=pairs,
            days=self._n // self._per_day,
            open_granules=open_granules,
            busy_resource_granules=busy,
            position=self._position,
            memory_bytes=memory,
        )


def _midnight_utc(day: date) -> int:
    return (day.toordinal() - _EPOCH_ORDINAL) * _DAY_S


def _utc_offsets(zone: ZoneInfo, base_s: int, granule_s: int, count: int) -> npt.NDArray[np.int64]:
    """UTC offset in seconds at the start of each granule.

    Offsets change a few times a year: look them up once per UTC day and only go granule by
    granule on days where the offset at the day's first and last granule differ.
    """
    per_day = _DAY_S // granule_s
    offsets = np.empty(count, dtype=np.int64)
    for day_start in range(0, count, per_day):
        day_end = min(day_start + per_day, count)
        first = _offset_at(zone, base_s + day_start * granule_s)
        last = _offset_at(zone, base_s + (day_end - 1) * granule_s)
        if first == last:
            offsets[day_start:day_end] = first
        else:
            for g in range(day_start, day_end):
                offsets[g] = _offset_at(zone, base_s + g * granule_s)
    return offsets


def _offset_at(zone: ZoneInfo, epoch_s: int) -> int:
    offset = datetime.fromtimestamp(epoch_s, UTC).astimezone(zone).utcoffset()
    assert offset is not None
    return int(offset.total_seconds())


def _ramps(lengths: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """0, 1, ..., n-1 for each n in `lengths`, concatenated."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.arange(total, dtype=np.int64) - starts


def _bits_by_group(
    groups: npt.NDArray[np.int64], granules: npt.NDArray[np.int64], width: int
) -> dict[int, int]:
    """One int per group with the bits of its granules set, built with numpy in chunks."""
    keys, inverse = np.unique(groups, return_inverse=True)
    padded = -(-width // 8) * 8
    chunk_rows = max(1, (64 << 20) // padded)
    order = np.argsort(inverse, kind="stable")
    sorted_groups = inverse[order]
    sorted_granules = granules[order]
    result: dict[int, int] = {}
    for first in range(0, len(keys), chunk_rows):
        last = min(first + chunk_rows, len(keys))
        a = np.searchsorted(sorted_groups, first, side="left")
        b = np.searchsorted(sorted_groups, last, side="left")
        matrix = np.zeros((last - first, padded), dtype=np.bool_)
        matrix[sorted_groups[a:b] - first, sorted_granules[a:b]] = True
        packed = np.packbits(matrix, axis=1, bitorder="little")
        for row in range(last - first):
            result[int(keys[first + row])] = int.from_bytes(packed[row].tobytes(), "little")
    return result


def _encode_cursor(query: SearchQuery, key: tuple[float, int, str, str]) -> str:
    """An opaque cursor: version, query fingerprint and the last result's full sort key.

    The provider key's length is recorded so keys may contain any character.
    """
    distance_km, start_utc, provider_key, location_key = key
    text = (
        f"{_CURSOR_VERSION}:{query.fingerprint()}:{distance_km.hex()}:{start_utc}:"
        f"{len(provider_key)}:{provider_key}{location_key}"
    )
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode_cursor(query: SearchQuery) -> _Cursor:
    assert query.cursor is not None
    try:
        raw = base64.urlsafe_b64decode(query.cursor + "=" * (-len(query.cursor) % 4))
        version, fingerprint, distance_hex, start_utc, key_length, keys = raw.decode().split(":", 5)
        split = int(key_length)
        if version != str(_CURSOR_VERSION) or not 0 <= split <= len(keys):
            raise ValueError("unknown cursor layout")
        cursor = _Cursor(float.fromhex(distance_hex), int(start_utc), keys[:split], keys[split:])
    except (binascii.Error, ValueError, UnicodeDecodeError) as e:
        raise ValidationError.of("cursor", "is not a cursor this service issued") from e
    if fingerprint != query.fingerprint():
        raise ValidationError.of("cursor", "belongs to a different search")
    return cursor
