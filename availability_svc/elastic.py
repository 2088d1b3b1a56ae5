"""Optional Elasticsearch search backend: the design brief's document index behind `SearchBackend`.

NOT EXERCISED IN THIS REPOSITORY'S DEFAULT TEST RUN: no Elasticsearch runs here. Its
conformance test (`tests/integration/availability/search/test_elastic.py`) compares it with
the PostgreSQL reference query and runs only when `MEDSCHED_TEST_ELASTICSEARCH_URL` names a
cluster (Elasticsearch 8 or 9). The in-memory index remains what the service serves.

Documents: one per OPEN granule (id: the slot id), denormalised as the brief describes —
the slot plus its provider's specialties, plans, languages and new-patient flag, and the
location as a `geo_point` — and two derived fields: the granule's local date and minute in
the location's zone (date and time-of-day filters), and `run_granules`, how many consecutive
OPEN granules at the same location start with it (a visit of `d` granules fits where
`run_granules >= d`). A search is one `bool` filter query (terms, ranges, `geo_distance`),
sorted like every backend, paged with `search_after`.

Keeping it current: the index holds derived values (run lengths), so it is rewritten from
PostgreSQL rather than patched from event payloads: `rebuild` loads an organisation,
`sync_provider` rewrites one provider's documents over a span of time (what a consumer of
slot events calls for each event's provider and granules).

Limitation (explicit): visit types that need rooms or equipment are refused with
FAILED_PRECONDITION; the resource check has no document form here. Reference data changes
need a `rebuild` (or `sync_provider` of the providers concerned).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from elasticsearch import AsyncElasticsearch
from elasticsearch.helpers import async_bulk

from availability_svc.domain import PatientKind
from availability_svc.geo import DistanceUnit, haversine_km, km_to_unit
from availability_svc.index import SortOrder
from availability_svc.projection import ReferenceData, load_reference
from availability_svc.search_service import (
    AvailabilityQuery,
    Offer,
    OfferPage,
    format_slot_id,
)
from common.db import Connection, Pool
from common.errors import FailedPrecondition, Reason

__all__ = ["ElasticBackend"]

_MAPPING: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "organization_id": {"type": "keyword"},
        "provider_id": {"type": "keyword"},
        "location_id": {"type": "keyword"},
        "start_utc": {"type": "long"},
        "end_utc": {"type": "long"},
        "local_date": {"type": "date", "format": "yyyy-MM-dd"},
        "local_minute": {"type": "integer"},
        "run_granules": {"type": "integer"},
        "specialties": {"type": "keyword"},
        "plan_ids": {"type": "keyword"},
        "languages": {"type": "keyword"},
        "accepts_new_patients": {"type": "boolean"},
        "visit_type_ids": {"type": "keyword"},
        "point": {"type": "geo_point"},
    },
}

_OPEN_GRANULES_SQL = """
SELECT provider_id, location_id, start_time, end_time
FROM availability.slots
WHERE organization_id = %s AND status = 'OPEN' AND (%s::uuid IS NULL OR provider_id = %s)
  AND start_time >= %s AND start_time < %s
ORDER BY provider_id, location_id, start_time
"""


@dataclass(frozen=True)
class _Granule:
    provider_id: str
    location_id: str
    start_utc: int
    end_utc: int


class ElasticBackend:
    """`SearchBackend` over an Elasticsearch index of OPEN granules."""

    def __init__(self, client: AsyncElasticsearch, pool: Pool, *, index: str) -> None:
        self._client = client
        self._pool = pool
        self.index = index
        self._reference = ReferenceData()

    # ---- writing ------------------------------------------------------------------------------

    async def rebuild(self, organization_id: str, since: datetime, until: datetime) -> int:
        """Recreate the index with the organisation's OPEN granules in [since, until)."""
        await self._client.options(ignore_status=404).indices.delete(index=self.index)
        await self._client.indices.create(index=self.index, mappings=_MAPPING)
        return await self.sync_provider(organization_id, None, since, until)

    async def sync_provider(
        self, organization_id: str, provider_id: str | None, since: datetime, until: datetime
    ) -> int:
        """Rewrite the documents of one provider (all with None) in [since, until) from the
        database; widen the span by a day on each side so run lengths at its edges are right."""
        since, until = since - timedelta(days=1), until + timedelta(days=1)
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            self._reference = await load_reference(conn)
            granules = await _open_granules(conn, organization_id, provider_id, since, until)
        window: dict[str, Any] = {
            "range": {"start_utc": {"gte": int(since.timestamp()), "lt": int(until.timestamp())}}
        }
        filters: list[dict[str, Any]] = [{"term": {"organization_id": organization_id}}, window]
        if provider_id is not None:
            filters.append({"term": {"provider_id": provider_id}})
        await self._client.delete_by_query(
            index=self.index, query={"bool": {"filter": filters}}, refresh=True, conflicts="proceed"
        )
        written, _ = await async_bulk(self._client, self._actions(granules), refresh="wait_for")
        return written

    async def _actions(self, granules: list[_Granule]) -> AsyncIterator[dict[str, Any]]:
        runs = _run_lengths(granules)
        reference = self._reference
        for granule, run in zip(granules, runs, strict=True):
            provider = reference.providers.get(granule.provider_id)
            location = reference.locations.get(granule.location_id)
            if provider is None or location is None or not provider.active or not location.active:
                continue
            local = datetime.fromtimestamp(granule.start_utc, ZoneInfo(location.info.time_zone))
            offers = reference.offers.get(provider.info.organization_id, {})
            yield {
                "_index": self.index,
                "_id": format_slot_id(granule.provider_id, granule.start_utc),
                "_source": {
                    "organization_id": provider.info.organization_id,
                    "provider_id": granule.provider_id,
                    "location_id": granule.location_id,
                    "start_utc": granule.start_utc,
                    "end_utc": granule.end_utc,
                    "local_date": local.date().isoformat(),
                    "local_minute": local.hour * 60 + local.minute,
                    "run_granules": run,
                    "specialties": list(provider.info.specialties),
                    "plan_ids": sorted(provider.plan_ids),
                    "languages": list(provider.info.languages),
                    "accepts_new_patients": provider.accepts_new_patients,
                    "visit_type_ids": sorted(
                        offers.get((granule.provider_id, granule.location_id), ())
                    ),
                    "point": {"lat": location.info.latitude, "lon": location.info.longitude},
                },
            }

    # ---- searching ----------------------------------------------------------------------------

    async def search(self, query: AvailabilityQuery) -> OfferPage:
        filters = self._filters(query)
        if filters is None:
            return OfferPage((), False)
        sort: list[Any] = []
        if query.sort is SortOrder.DISTANCE and query.near is not None:
            point = {"lat": query.near.latitude, "lon": query.near.longitude}
            sort.append({"_geo_distance": {"point": point, "unit": "km", "order": "asc"}})
        sort += [{"start_utc": "asc"}, {"provider_id": "asc"}, {"location_id": "asc"}]
        search_after: list[float | int | str] | None = None
        if query.after is not None:
            after_km, after_start, after_provider, after_location = query.after
            search_after = [after_start, after_provider, after_location]
            if query.sort is SortOrder.DISTANCE:
                search_after.insert(0, after_km)
        response = await self._client.search(
            index=self.index,
            query={"bool": {"filter": filters}},
            sort=sort,
            search_after=search_after,
            size=query.limit + 1,
            track_total_hits=False,
        )
        hits = response["hits"]["hits"]
        offers = tuple(self._offer(query, hit) for hit in hits[: query.limit])
        return OfferPage(offers, len(hits) > query.limit)

    def _filters(self, query: AvailabilityQuery) -> list[dict[str, Any]] | None:
        """The query's filters; None when nothing can match (e.g. a visit type not offered)."""
        filters: list[dict[str, Any]] = [
            {"term": {"organization_id": query.organization_id}},
            {"range": {"start_utc": {"gte": query.not_before_utc}}},
            {
                "range": {
                    "local_date": {
                        "gte": query.date_from.isoformat(),
                        "lte": query.date_to.isoformat(),
                    }
                }
            },
        ]
        minutes: dict[str, int] = {}
        if query.time_from is not None:
            minutes["gte"] = query.time_from.hour * 60 + query.time_from.minute
        if query.time_to is not None:
            minutes["lt"] = query.time_to.hour * 60 + query.time_to.minute
        if minutes:
            filters.append({"range": {"local_minute": minutes}})
        for field, value in (
            ("specialties", query.specialty),
            ("plan_ids", query.plan_id),
            ("languages", query.language),
        ):
            if value is not None:
                filters.append({"term": {field: value}})
        if query.provider_ids is not None:
            filters.append({"terms": {"provider_id": sorted(query.provider_ids)}})
        if query.location_ids is not None:
            filters.append({"terms": {"location_id": sorted(query.location_ids)}})
        if query.patient_kind is PatientKind.NEW:
            filters.append({"term": {"accepts_new_patients": True}})
        if query.near is not None and query.radius is not None:
            unit = "mi" if query.unit is DistanceUnit.MI else "km"
            filters.append(
                {
                    "geo_distance": {
                        "distance": f"{query.radius}{unit}",
                        "distance_type": "arc",
                        "point": {"lat": query.near.latitude, "lon": query.near.longitude},
                    }
                }
            )
        if query.visit_type_id is not None:
            visit_filters = self._visit_type_filters(query)
            if visit_filters is None:
                return None
            filters += visit_filters
        return filters

    def _visit_type_filters(self, query: AvailabilityQuery) -> list[dict[str, Any]] | None:
        assert query.visit_type_id is not None
        row = self._reference.visit_types.get(query.visit_type_id)
        if row is None or row.info.organization_id != query.organization_id:
            return None
        kind = row.info.patient_kind
        if query.patient_kind is not PatientKind.ANY and kind not in (
            PatientKind.ANY,
            query.patient_kind,
        ):
            return None
        if row.resource_needs:
            raise FailedPrecondition(
                "the Elasticsearch backend cannot check rooms and equipment",
                reasons=[Reason(code="RESOURCE_CHECK_UNSUPPORTED", subject=query.visit_type_id)],
            )
        filters: list[dict[str, Any]] = [
            {"term": {"visit_type_ids": query.visit_type_id}},
            {"range": {"run_granules": {"gte": row.info.duration_granules}}},
        ]
        if row.location_ids:
            filters.append({"terms": {"location_id": sorted(row.location_ids)}})
        return filters

    def _offer(self, query: AvailabilityQuery, hit: dict[str, Any]) -> Offer:
        source = hit["_source"]
        distance = sort_km = None
        if query.near is not None:
            point = source["point"]
            km = haversine_km(query.near.latitude, query.near.longitude, point["lat"], point["lon"])
            distance = km_to_unit(km, query.unit)
        if query.sort is SortOrder.DISTANCE:
            sort_km = float(hit["sort"][0])  # the cluster's own value: what search_after needs
        duration = 1
        if query.visit_type_id is not None:
            duration = self._reference.visit_types[query.visit_type_id].info.duration_granules
        granule_s = source["end_utc"] - source["start_utc"]
        return Offer(
            provider_id=source["provider_id"],
            location_id=source["location_id"],
            start_utc=source["start_utc"],
            end_utc=source["start_utc"] + duration * granule_s,
            distance=distance,
            sort_km=sort_km or 0.0,
            visit_type_id=query.visit_type_id,
        )


async def _open_granules(
    conn: Connection,
    organization_id: str,
    provider_id: str | None,
    since: datetime,
    until: datetime,
) -> list[_Granule]:
    provider = None if provider_id is None else uuid.UUID(provider_id)
    cursor = await conn.execute(
        _OPEN_GRANULES_SQL, (uuid.UUID(organization_id), provider, provider, since, until)
    )
    return [
        _Granule(str(p), str(loc), int(start.timestamp()), int(end.timestamp()))
        for p, loc, start, end in await cursor.fetchall()
    ]


def _run_lengths(granules: Sequence[_Granule]) -> list[int]:
    """For each granule (sorted by provider, location, start), how many consecutive OPEN
    granules at its location start with it."""
    runs = [1] * len(granules)
    for k in range(len(granules) - 2, -1, -1):
        here, after = granules[k], granules[k + 1]
        if (
            here.provider_id == after.provider_id
            and here.location_id == after.location_id
            and here.end_utc == after.start_utc
        ):
            runs[k] = runs[k + 1] + 1
    return runs


def utc(seconds: int) -> datetime:
    """An epoch second as an aware UTC datetime (for `rebuild` windows)."""
    return datetime.fromtimestamp(seconds, UTC)
