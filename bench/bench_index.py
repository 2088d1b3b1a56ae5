"""Benchmark of the in-memory availability index at the brief's scale (not a test).

Builds a reproducible synthetic organisation (5,000 providers, 40 uneven specialties, 300
locations in 8 clusters over a 120 x 120 mile metro, 50 plans with market shares, 90 days of
24 granules per provider and day = 10.8 million granules, about 70% OPEN), loads it the way the
service does at start (bulk columns), then measures single-thread search latency and
throughput for the brief's query shapes and the event (mutation) throughput.

    .venv/bin/python bench/bench_index.py            # full scale, under a minute
    .venv/bin/python bench/bench_index.py --providers 500 --searches 2000   # quick look
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from availability_svc.domain import PatientKind
from availability_svc.geo import DistanceUnit
from availability_svc.index import (
    AvailabilityIndex,
    GeoPoint,
    LocationEntry,
    ProviderEntry,
    ResourceChange,
    ResourceEntry,
    SearchQuery,
    SlotChange,
    SortOrder,
    VisitTypeEntry,
)

ZONE = "America/Chicago"
METRO_CENTER = (41.88, -87.63)
METRO_MILES = 120.0
MILES_PER_DEGREE_LAT = 69.05
GRANULE_S = 900
GRANULES_PER_DAY = 24
ORG = 1
EXAM_ROOM, ULTRASOUND = "exam_room", "ultrasound"
ECHO_VISIT = 10_000  # visit type id of the cardiology echo (needs an ultrasound)


@dataclass(frozen=True)
class Organisation:
    """Synthetic reference data and granule columns, all generated up front."""

    locations: list[LocationEntry]
    providers: list[ProviderEntry]
    provider_locations: list[list[int]]
    resources: list[ResourceEntry]
    visit_types: list[VisitTypeEntry]
    specialty_weights: npt.NDArray[np.float64]
    plan_shares: npt.NDArray[np.float64]
    granule_provider: npt.NDArray[np.int64]
    granule_location: npt.NDArray[np.int64]
    granule_start: npt.NDArray[np.int64]
    granule_open: npt.NDArray[np.bool_]
    busy_resource: npt.NDArray[np.int64]
    busy_start: npt.NDArray[np.int64]
    busy_end: npt.NDArray[np.int64]


def python_calibration_ms() -> float:
    """Best of five runs of a fixed pure-Python workload (dict lookups and big-int bit
    operations, like a search's). The cores are shared: compare figures between runs
    relative to this number."""
    table = {i: (1 << 1500) - 1 - i for i in range(512)}
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        total = 0
        for i in range(200_000):
            bits = table[i & 511] >> (i & 63)
            total += (bits & -bits).bit_length()
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 1)


def rss_bytes() -> int:
    """Resident set size of this process (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def zipf_weights(n: int, exponent: float) -> npt.NDArray[np.float64]:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return np.asarray(weights / weights.sum(), dtype=np.float64)


def miles_to_degrees(lat: float, north_mi: float, east_mi: float) -> tuple[float, float]:
    return (
        north_mi / MILES_PER_DEGREE_LAT,
        east_mi / (MILES_PER_DEGREE_LAT * math.cos(math.radians(lat))),
    )


def build_organisation(
    rng: np.random.Generator, n_providers: int, n_locations: int, days: int, base: date
) -> Organisation:
    half = METRO_MILES / 2
    centers = rng.uniform(-half * 0.8, half * 0.8, size=(8, 2))
    locations: list[LocationEntry] = []
    cluster_of = rng.integers(0, 8, size=n_locations)
    for loc in range(n_locations):
        north, east = centers[cluster_of[loc]] + rng.normal(0, 5.0, size=2)
        north, east = float(np.clip(north, -half, half)), float(np.clip(east, -half, half))
        dlat, dlon = miles_to_degrees(METRO_CENTER[0], north, east)
        locations.append(
            LocationEntry(
                loc, f"loc-{loc:04d}", ORG, METRO_CENTER[0] + dlat, METRO_CENTER[1] + dlon, ZONE
            )
        )

    specialty_weights = zipf_weights(40, 0.9)
    plan_shares = zipf_weights(50, 0.8)
    specialty = rng.choice(40, size=n_providers, p=specialty_weights)
    providers: list[ProviderEntry] = []
    provider_locations: list[list[int]] = []
    by_cluster = [np.flatnonzero(cluster_of == c) for c in range(8)]
    for p in range(n_providers):
        home = int(rng.integers(n_locations))
        places = [home]
        if rng.random() < 0.15:  # works at a second site of the same cluster in the afternoons
            siblings = by_cluster[cluster_of[home]]
            other = int(rng.choice(siblings))
            if other != home:
                places.append(other)
        plans = rng.choice(50, size=int(rng.integers(5, 21)), replace=False, p=plan_shares)
        languages = {"en"}
        if rng.random() < 0.3:
            languages.add("es")
        if rng.random() < 0.05:
            languages.add("zh")
        providers.append(
            ProviderEntry(
                id=p,
                key=f"prov-{p:05d}",
                organization_id=ORG,
                specialties=frozenset({f"spec-{specialty[p]:02d}"}),
                languages=frozenset(languages),
                plan_ids=frozenset(f"plan-{k:02d}" for k in plans),
                accepts_new_patients=bool(rng.random() < 0.8),
            )
        )
        provider_locations.append(places)

    resources: list[ResourceEntry] = []
    for loc in range(n_locations):
        for _ in range(int(rng.integers(3, 11))):
            resources.append(ResourceEntry(len(resources), loc, EXAM_ROOM))
        if rng.random() < 0.3:
            for _ in range(int(rng.integers(1, 3))):
                resources.append(ResourceEntry(len(resources), loc, ULTRASOUND))

    visit_types = [VisitTypeEntry(s, ORG, 2, ((EXAM_ROOM, 1),), PatientKind.ANY) for s in range(40)]
    visit_types.append(VisitTypeEntry(ECHO_VISIT, ORG, 2, ((ULTRASOUND, 1),), PatientKind.ANY))

    columns = granule_columns(rng, provider_locations, days, base)
    busy = resource_busy_columns(rng, len(resources), days, base)
    return Organisation(
        locations,
        providers,
        provider_locations,
        resources,
        visit_types,
        specialty_weights,
        plan_shares,
        *columns,
        *busy,
    )


def local_midnights(base: date, days: int) -> npt.NDArray[np.int64]:
    zone = ZoneInfo(ZONE)
    return np.array(
        [
            int(datetime.combine(base + timedelta(days=d), datetime.min.time(), zone).timestamp())
            for d in range(days)
        ],
        dtype=np.int64,
    )


def granule_columns(
    rng: np.random.Generator, provider_locations: list[list[int]], days: int, base: date
) -> tuple[
    npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.bool_]
]:
    """24 granules per provider and day from a local start of 07:00-10:00; providers with a
    second site spend the afternoon there after a one-hour break. 70% OPEN."""
    n = len(provider_locations)
    midnights = local_midnights(base, days)
    first_slot = rng.integers(28, 41, size=n)  # 07:00 .. 10:00 local
    home = np.array([places[0] for places in provider_locations], dtype=np.int64)
    second = np.array([places[-1] for places in provider_locations], dtype=np.int64)
    k = np.arange(GRANULES_PER_DAY)
    afternoon = k >= GRANULES_PER_DAY // 2
    slot = first_slot[:, None] + k[None, :] + np.where(afternoon, 4, 0)[None, :]  # (n, 24)
    location = np.where(afternoon[None, :], second[:, None], home[:, None])
    starts = midnights[None, :, None] + slot[:, None, :] * GRANULE_S  # (n, days, 24)
    provider = np.broadcast_to(np.arange(n)[:, None, None], starts.shape)
    location_3d = np.broadcast_to(location[:, None, :], starts.shape)
    is_open: npt.NDArray[np.bool_] = np.asarray(rng.random(starts.shape) < 0.7)
    return (
        provider.reshape(-1).astype(np.int64),
        location_3d.reshape(-1).astype(np.int64),
        starts.reshape(-1).astype(np.int64),
        is_open.reshape(-1),
    )


def resource_busy_columns(
    rng: np.random.Generator, n_resources: int, days: int, base: date
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Rooms and equipment reserved for about a third of 07:00-19:00, in 30-minute visits."""
    midnights = local_midnights(base, days)
    pairs = np.arange(28, 76, 2)  # 30-minute blocks from 07:00 to 19:00 local
    busy = rng.random((n_resources, days, len(pairs))) < 0.35
    r, d, b = np.nonzero(busy)
    starts = midnights[d] + pairs[b] * GRANULE_S
    return r.astype(np.int64), starts.astype(np.int64), (starts + 2 * GRANULE_S).astype(np.int64)


def load_index(org: Organisation, base_s: int, days: int) -> AvailabilityIndex:
    index = AvailabilityIndex(base_s, horizon_days=days + 1)
    for location in org.locations:
        index.upsert_location(location)
    for provider, places in zip(org.providers, org.provider_locations, strict=True):
        index.upsert_provider(provider)
        specialty = int(next(iter(provider.specialties)).split("-")[1])
        offered = {specialty} | ({ECHO_VISIT} if specialty == 0 else set())
        for loc in places:
            index.set_offered_visit_types(provider.id, loc, offered)
    for resource in org.resources:
        index.upsert_resource(resource)
    for visit_type in org.visit_types:
        index.upsert_visit_type(visit_type)
    index.bulk_load_granules(
        org.granule_provider, org.granule_location, org.granule_start, org.granule_open
    )
    index.bulk_load_resource_busy(org.busy_resource, org.busy_start, org.busy_end)
    return index


def make_queries(
    rng: np.random.Generator,
    org: Organisation,
    base: date,
    days: int,
    count: int,
    sort: SortOrder,
    visit_type: str | None,
) -> list[SearchQuery]:
    """Specialty (by size) + 10-mile radius around a clinic + plan (by share) + 14-day window
    + 20 results, like a patient searching near where they live."""
    queries = []
    for _ in range(count):
        specialty = int(rng.choice(40, p=org.specialty_weights))
        if visit_type == "echo":
            specialty = 0
        anchor = org.locations[int(rng.integers(len(org.locations)))]
        dlat, dlon = miles_to_degrees(anchor.latitude, *rng.normal(0, 3.0, size=2))
        first_day = base + timedelta(days=int(rng.integers(0, max(1, days - 14))))
        queries.append(
            SearchQuery(
                organization_id=ORG,
                specialty=f"spec-{specialty:02d}",
                near=GeoPoint(anchor.latitude + dlat, anchor.longitude + dlon),
                radius=10.0,
                unit=DistanceUnit.MI,
                plan_id=f"plan-{int(rng.choice(50, p=org.plan_shares)):02d}",
                visit_type_id=(
                    None
                    if visit_type is None
                    else ECHO_VISIT
                    if visit_type == "echo"
                    else specialty
                ),
                date_from=first_day,
                date_to=first_day + timedelta(days=13),
                sort=sort,
                limit=20,
            )
        )
    return queries


def run_searches(index: AvailabilityIndex, queries: list[SearchQuery]) -> dict[str, float]:
    latencies = np.empty(len(queries), dtype=np.int64)
    hits = 0
    full = 0
    search = index.search
    clock = time.perf_counter_ns
    started = clock()
    cpu_started = time.process_time()
    for i, query in enumerate(queries):
        t0 = clock()
        page = search(query)
        latencies[i] = clock() - t0
        hits += len(page.hits)
        full += len(page.hits) == query.limit
    elapsed = (clock() - started) / 1e9
    cpu = time.process_time() - cpu_started
    return {
        "searches_per_s": round(len(queries) / elapsed),
        # CPU time excludes moments the process waited for a core (the cores are shared).
        "searches_per_cpu_s": round(len(queries) / cpu),
        "p50_ms": round(float(np.percentile(latencies, 50)) / 1e6, 4),
        "p99_ms": round(float(np.percentile(latencies, 99)) / 1e6, 4),
        "max_ms": round(float(latencies.max()) / 1e6, 3),
        "mean_hits": round(hits / len(queries), 1),
        "full_pages_pct": round(100 * full / len(queries), 1),
    }


def run_mutations(
    index: AvailabilityIndex, org: Organisation, rng: np.random.Generator, count: int
) -> dict[str, float]:
    """Book, then free, random 30-minute visits: each event closes/opens two granules and
    reserves/releases an exam room, like the projection consumer does."""
    picks = rng.integers(0, len(org.granule_start) - 1, size=count)
    room_of_location: dict[int, int] = {}
    for resource in org.resources:
        room_of_location.setdefault(resource.location_id, resource.id)
    events: list[list[SlotChange | ResourceChange]] = []
    for i in picks.tolist():
        provider = int(org.granule_provider[i])
        location = int(org.granule_location[i])
        start = int(org.granule_start[i])
        room = room_of_location[location]
        events.append(
            [SlotChange(provider, location, start, 2, False), ResourceChange(room, start, 2, True)]
        )
    sequence = index.position
    started = time.perf_counter()
    for changes in events:
        sequence += 1
        index.apply(sequence, changes)
    for changes in events:
        sequence += 1
        slot, room_change = changes
        assert isinstance(slot, SlotChange)
        assert isinstance(room_change, ResourceChange)
        index.apply(sequence, [slot._replace(open=True), room_change._replace(busy=False)])
    elapsed = time.perf_counter() - started
    return {"events_per_s": round(2 * count / elapsed), "events": 2 * count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--providers", type=int, default=5000)
    parser.add_argument("--locations", type=int, default=300)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--searches", type=int, default=20_000)
    parser.add_argument("--mutations", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=20260302)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    base = date(2026, 3, 2)
    base_s = int(datetime.combine(base, datetime.min.time(), UTC).timestamp())

    t0 = time.perf_counter()
    org = build_organisation(rng, args.providers, args.locations, args.days, base)
    generated_s = time.perf_counter() - t0
    gc.collect()
    rss_before = rss_bytes()

    t0 = time.perf_counter()
    index = load_index(org, base_s, args.days)
    build_s = time.perf_counter() - t0
    gc.collect()
    rss_after = rss_bytes()
    stats = index.snapshot_stats()

    results: dict[str, object] = {
        "python_calibration_ms": python_calibration_ms(),
        "granule_rows": len(org.granule_start),
        "open_granules": stats.open_granules,
        "busy_resource_granules": stats.busy_resource_granules,
        "providers": stats.providers,
        "locations": stats.locations,
        "resources": stats.resources,
        "days": stats.days,
        "generate_s": round(generated_s, 2),
        "build_s": round(build_s, 2),
        "index_memory_estimate_mb": round(stats.memory_bytes / 2**20, 1),
        "rss_growth_during_build_mb": round((rss_after - rss_before) / 2**20, 1),
    }
    shapes = {
        "soonest": (SortOrder.SOONEST, None),
        "distance": (SortOrder.DISTANCE, None),
        "visit_type_exam_room": (SortOrder.SOONEST, "exam"),
        "visit_type_ultrasound": (SortOrder.SOONEST, "echo"),
    }
    for name, (sort, visit_type) in shapes.items():
        queries = make_queries(rng, org, base, args.days, args.searches, sort, visit_type)
        run_searches(index, queries[: min(500, len(queries))])  # warm the mask cache and code
        results[f"search_{name}"] = run_searches(index, queries)
    results["mutations"] = run_mutations(index, org, rng, args.mutations // 2)
    results["python_calibration_ms_after"] = python_calibration_ms()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
