"""Brute-force availability search over plain granule and reservation sets, to check the index.

Deliberately simple: every OPEN granule is a dictionary entry, every check is written out
per granule with zoneinfo, and results are fully sorted. It shares only the entry types, the
query type and the haversine formula (tested on its own) with the index.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple
from zoneinfo import ZoneInfo

from availability_svc.domain import PatientKind
from availability_svc.geo import haversine_km, km_to_unit, to_km
from availability_svc.index import (
    LocationEntry,
    ProviderEntry,
    ResourceChange,
    ResourceEntry,
    SearchHit,
    SearchQuery,
    SlotChange,
    SortOrder,
    VisitTypeEntry,
)

SortKey = tuple[float, int, str, str]


class RankedHit(NamedTuple):
    """A hit with the key it sorts by: (distance km or 0, start, provider key, location key)."""

    key: SortKey
    hit: SearchHit


class ReferenceAvailability:
    """The same state as the index, as sets, and the search as nested loops."""

    def __init__(self, granule_s: int) -> None:
        self.granule_s = granule_s
        self.providers: dict[int, ProviderEntry] = {}
        self.locations: dict[int, LocationEntry] = {}
        self.resources: dict[int, ResourceEntry] = {}
        self.visit_types: dict[int, VisitTypeEntry] = {}
        self.offers: dict[tuple[int, int], frozenset[int]] = {}
        # (provider, start) -> location where that granule is OPEN
        self.open: dict[tuple[int, int], int] = {}
        # (resource, start) of every busy granule
        self.busy: set[tuple[int, int]] = set()
        self.position = 0
        self._local: dict[tuple[str, int], datetime] = {}

    def open_granules(self, provider: int, location: int, start: int, count: int) -> None:
        for k in range(count):
            self.open[(provider, start + k * self.granule_s)] = location

    def close_granules(self, provider: int, start: int, count: int) -> None:
        for k in range(count):
            self.open.pop((provider, start + k * self.granule_s), None)

    def set_busy(self, resource: int, start: int, count: int, busy: bool) -> None:
        for k in range(count):
            key = (resource, start + k * self.granule_s)
            if busy:
                self.busy.add(key)
            else:
                self.busy.discard(key)

    def apply(self, sequence: int, changes: list[SlotChange | ResourceChange]) -> bool:
        if sequence <= self.position:
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
                self.set_busy(change.resource_id, change.start_utc, change.granules, change.busy)
        self.position = sequence
        return True

    def local(self, tz_name: str, instant: int) -> datetime:
        key = (tz_name, instant)
        value = self._local.get(key)
        if value is None:
            value = datetime.fromtimestamp(instant, UTC).astimezone(ZoneInfo(tz_name))
            self._local[key] = value
        return value

    def _provider_matches(self, query: SearchQuery, provider: ProviderEntry) -> bool:
        if provider.organization_id != query.organization_id:
            return False
        if query.specialty is not None and query.specialty not in provider.specialties:
            return False
        if query.plan_id is not None and query.plan_id not in provider.plan_ids:
            return False
        if query.language is not None and query.language not in provider.languages:
            return False
        if query.provider_ids is not None and provider.id not in query.provider_ids:
            return False
        return query.patient_kind is not PatientKind.NEW or provider.accepts_new_patients

    def _time_matches(self, query: SearchQuery, tz_name: str, start: int) -> bool:
        if query.not_before_utc is not None and start < query.not_before_utc:
            return False
        local = self.local(tz_name, start)
        if query.date_from is not None and local.date() < query.date_from:
            return False
        if query.date_to is not None and local.date() > query.date_to:
            return False
        minute = local.hour * 60 + local.minute
        if query.time_from is not None and minute < query.time_from.hour * 60 + (
            query.time_from.minute
        ):
            return False
        end = 24 * 60 if query.time_to is None else query.time_to.hour * 60 + query.time_to.minute
        return minute < (end or 24 * 60)

    def _resources_free(self, visit_type: VisitTypeEntry, location: int, start: int) -> bool:
        times = [start + k * self.granule_s for k in range(visit_type.duration_granules)]
        for kind, count in visit_type.resource_needs:
            free = [
                r.id
                for r in self.resources.values()
                if r.location_id == location
                and r.kind == kind
                and not any((r.id, t) in self.busy for t in times)
            ]
            if len(free) < count:
                return False
        return True

    def ranked(self, query: SearchQuery) -> list[RankedHit]:
        """Every matching start, sorted by the query's order (no paging)."""
        visit_type = None
        duration = 1
        if query.visit_type_id is not None:
            visit_type = self.visit_types.get(query.visit_type_id)
            if visit_type is None or visit_type.organization_id != query.organization_id:
                return []
            if query.patient_kind is not PatientKind.ANY and visit_type.patient_kind not in (
                PatientKind.ANY,
                query.patient_kind,
            ):
                return []
            duration = visit_type.duration_granules
        radius_km = None if query.radius is None else to_km(query.radius, query.unit)
        out: list[RankedHit] = []
        for (provider_id, start), location_id in self.open.items():
            provider = self.providers.get(provider_id)
            if provider is None or not self._provider_matches(query, provider):
                continue
            location = self.locations.get(location_id)
            if location is None:
                continue  # removed locations are not searchable
            if query.location_ids is not None and location_id not in query.location_ids:
                continue
            distance = None
            if query.near is not None:
                distance = haversine_km(
                    query.near.latitude, query.near.longitude, location.latitude, location.longitude
                )
                if radius_km is not None and distance > radius_km:
                    continue
            if visit_type is not None:
                if visit_type.location_ids and location_id not in visit_type.location_ids:
                    continue
                if visit_type.id not in self.offers.get((provider_id, location_id), ()):
                    continue
            if not all(
                self.open.get((provider_id, start + k * self.granule_s)) == location_id
                for k in range(duration)
            ):
                continue
            if not self._time_matches(query, location.timezone, start):
                continue
            if visit_type is not None and not self._resources_free(visit_type, location_id, start):
                continue
            hit = SearchHit(
                provider_id,
                location_id,
                start,
                start + duration * self.granule_s,
                None if distance is None else km_to_unit(distance, query.unit),
                None if visit_type is None else visit_type.id,
            )
            sort_distance = distance if query.sort is SortOrder.DISTANCE and distance else 0.0
            key = (sort_distance, start, provider.key, location.key)
            out.append(RankedHit(key, hit))
        out.sort(key=lambda ranked: ranked.key)
        return out

    def page(self, query: SearchQuery, after: SortKey | None) -> list[RankedHit]:
        """The `limit` results that sort after `after` (the previous page's last key)."""
        ranked = self.ranked(query)
        if after is not None:
            ranked = [r for r in ranked if r.key > after]
        return ranked[: query.limit]
