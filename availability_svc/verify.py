"""Cross-check the in-memory index against the PostgreSQL reference query on random searches.

`medsched verify-index` builds an index from a database snapshot exactly as the service does
at start, then runs random searches (every filter combination the API offers, paged a few
pages deep) on both the index and `reference_sql`, and reports every page where they differ.
Both read the same database; run it while the schedule is quiet, or expect the occasional
mismatch where a change committed between the two reads (a re-run tells them apart).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from availability_svc.domain import PatientKind
from availability_svc.geo import DistanceUnit
from availability_svc.index import GeoPoint, SortOrder
from availability_svc.projection import ReferenceData
from availability_svc.search_service import (
    AvailabilityQuery,
    Offer,
    OfferPage,
    SearchBackend,
)

__all__ = [
    "Comparison",
    "Mismatch",
    "QueryDomain",
    "VerifyReport",
    "compare_pages",
    "random_query",
    "same_offers",
    "verify",
]

# Distances come from the same formula on both sides, computed by Python and by PostgreSQL.
_DISTANCE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class QueryDomain:
    """The values random searches of one organisation draw from."""

    organization_id: str
    today: date
    horizon_days: int
    specialties: tuple[str, ...]
    plans: tuple[str, ...]
    languages: tuple[str, ...]
    points: tuple[GeoPoint, ...]
    visit_types: tuple[str, ...]
    provider_ids: tuple[str, ...]
    location_ids: tuple[str, ...]

    @classmethod
    def of(cls, data: ReferenceData, organization_id: str, now: datetime) -> QueryDomain:
        org = data.organizations[organization_id]
        part = data.of(organization_id)
        providers = list(part.providers.values())
        return cls(
            organization_id=organization_id,
            today=now.astimezone(ZoneInfo(org.time_zone)).date(),
            horizon_days=org.horizon_days,
            specialties=tuple(sorted({s for p in providers for s in p.info.specialties})),
            plans=tuple(sorted({plan for p in providers for plan in p.plan_ids})),
            languages=tuple(sorted({lang for p in providers for lang in p.info.languages})),
            points=tuple(
                GeoPoint(row.info.latitude, row.info.longitude)
                for _, row in sorted(part.locations.items())
            ),
            visit_types=tuple(sorted(part.visit_types)),
            provider_ids=tuple(sorted(part.providers)),
            location_ids=tuple(sorted(part.locations)),
        )


def random_query(rng: random.Random, domain: QueryDomain, now_s: int) -> AvailabilityQuery:
    """A random search: each filter present or not, values from the organisation's own."""

    def maybe(probability: float) -> bool:
        return rng.random() < probability

    date_from = domain.today + timedelta(days=rng.randint(-1, max(0, domain.horizon_days - 3)))
    date_to = date_from + timedelta(days=rng.choice((0, 0, 1, 3, 6, 13, 30)))
    near = radius = None
    unit = DistanceUnit.MI
    if domain.points and maybe(0.6):
        base = rng.choice(domain.points)
        near = GeoPoint(
            base.latitude + rng.uniform(-0.3, 0.3), base.longitude + rng.uniform(-0.3, 0.3)
        )
        if maybe(0.8):
            unit = rng.choice((DistanceUnit.MI, DistanceUnit.KM))
            radius = rng.choice((1.0, 5.0, 10.0, 25.0, 60.0)) * rng.uniform(0.5, 1.5)
    time_from = time_to = None
    if maybe(0.3):
        minutes = sorted(rng.sample(range(0, 24 * 60, 5), 2))
        time_from = time(minutes[0] // 60, minutes[0] % 60)
        time_to = time(minutes[1] // 60, minutes[1] % 60)
    return AvailabilityQuery(
        organization_id=domain.organization_id,
        date_from=date_from,
        date_to=date_to,
        not_before_utc=now_s + rng.choice((0, 0, 3600, 86_400)),
        specialty=_pick(rng, domain.specialties, 0.6),
        provider_ids=_subset(rng, domain.provider_ids, 0.1),
        location_ids=_subset(rng, domain.location_ids, 0.1),
        near=near,
        radius=radius,
        unit=unit,
        plan_id=_pick(rng, domain.plans, 0.4),
        language=_pick(rng, domain.languages, 0.2),
        visit_type_id=_pick(rng, domain.visit_types, 0.5),
        time_from=time_from,
        time_to=time_to,
        patient_kind=rng.choice(
            (PatientKind.ANY, PatientKind.ANY, PatientKind.NEW, PatientKind.RETURNING)
        ),
        sort=SortOrder.DISTANCE if near is not None and maybe(0.4) else SortOrder.SOONEST,
        limit=rng.choice((1, 3, 10, 20, 50)),
    )


def _pick(rng: random.Random, values: Sequence[str], probability: float) -> str | None:
    if not values or rng.random() >= probability:
        return None
    return rng.choice(values)


def _subset(rng: random.Random, values: Sequence[str], probability: float) -> frozenset[str] | None:
    if not values or rng.random() >= probability:
        return None
    return frozenset(rng.sample(list(values), rng.randint(1, min(5, len(values)))))


@dataclass(frozen=True)
class Mismatch:
    """One page on which the index and the reference disagree."""

    query: AvailabilityQuery
    page: int
    index: OfferPage
    reference: OfferPage

    def describe(self) -> str:
        def offers(page: OfferPage) -> str:
            shown = [_short(o) for o in page.offers[:5]]
            more = f" ... ({len(page.offers)} offers)" if len(page.offers) > 5 else ""
            return "[" + ", ".join(shown) + more + f"] more={page.more}"

        return (
            f"search {self.query.fingerprint()} page {self.page + 1}: "
            f"{_describe_query(self.query)}\n  index:     {offers(self.index)}"
            f"\n  reference: {offers(self.reference)}"
        )


def _short(offer: Offer) -> str:
    start = datetime.fromtimestamp(offer.start_utc, UTC).strftime("%Y-%m-%dT%H:%MZ")
    return f"{offer.provider_id[:8]}@{offer.location_id[:8]} {start}"


def _describe_query(query: AvailabilityQuery) -> str:
    parts = [
        f"{query.date_from}..{query.date_to}",
        f"sort={query.sort.value}",
        f"limit={query.limit}",
    ]
    for name in ("specialty", "plan_id", "language", "visit_type_id", "time_from", "time_to"):
        value = getattr(query, name)
        if value is not None:
            parts.append(f"{name}={value}")
    if query.near is not None:
        parts.append(f"near={query.near.latitude:.4f},{query.near.longitude:.4f}")
    if query.radius is not None:
        parts.append(f"radius={query.radius:.2f}{query.unit.value.lower()}")
    if query.patient_kind is not PatientKind.ANY:
        parts.append(f"patient={query.patient_kind.value}")
    return " ".join(parts)


def same_offers(a: OfferPage, b: OfferPage) -> bool:
    """Equal pages: same offers in the same order, distances equal within rounding."""
    if a.more != b.more or len(a.offers) != len(b.offers):
        return False
    for x, y in zip(a.offers, b.offers, strict=True):
        if (x.provider_id, x.location_id, x.start_utc, x.end_utc, x.visit_type_id) != (
            y.provider_id,
            y.location_id,
            y.start_utc,
            y.end_utc,
            y.visit_type_id,
        ):
            return False
        if not _same_distance(x.distance, y.distance):
            return False
    return True


def _same_distance(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=_DISTANCE_TOLERANCE, abs_tol=_DISTANCE_TOLERANCE)


@dataclass(frozen=True)
class Comparison:
    """How one search compared: pages and offers seen, the first differing page if any."""

    pages: int
    offers: int
    mismatch: Mismatch | None


async def compare_pages(
    index: SearchBackend, reference: SearchBackend, query: AvailabilityQuery, max_pages: int
) -> Comparison:
    """Page through `query` on both backends (each continuing from its own last key) and
    stop at the first page that differs."""
    index_query = reference_query = query
    offers = 0
    for page_number in range(max_pages):
        index_page = await index.search(index_query)
        reference_page = await reference.search(reference_query)
        if not same_offers(index_page, reference_page):
            mismatch = Mismatch(query, page_number, index_page, reference_page)
            return Comparison(page_number + 1, offers, mismatch)
        offers += len(index_page.offers)
        if not index_page.more or not index_page.offers:
            return Comparison(page_number + 1, offers, None)
        index_query = replace(query, after=index_page.offers[-1].sort_key())
        reference_query = replace(query, after=reference_page.offers[-1].sort_key())
    return Comparison(max_pages, offers, None)


@dataclass(frozen=True)
class VerifyReport:
    searches: int
    pages: int
    offers: int
    mismatches: tuple[Mismatch, ...]


async def verify(
    index: SearchBackend,
    reference: SearchBackend,
    domains: Sequence[QueryDomain],
    *,
    searches: int,
    max_pages: int,
    seed: int,
    now_s: int,
) -> VerifyReport:
    """Run `searches` random searches spread over the organisations' domains."""
    rng = random.Random(seed)
    pages = offers = 0
    mismatches: list[Mismatch] = []
    for _ in range(searches):
        query = random_query(rng, rng.choice(domains), now_s)
        comparison = await compare_pages(index, reference, query, max_pages)
        pages += comparison.pages
        offers += comparison.offers
        if comparison.mismatch is not None:
            mismatches.append(comparison.mismatch)
    return VerifyReport(searches, pages, offers, tuple(mismatches))
