"""Availability search use case: validate a request, ask a backend, shape the results.

Protobuf-free: the gRPC servicer (`search_server.py`) turns a request into `SearchParams`
(the request's fields as given) and the `SearchResult` back into a response.

    SearchParams --parse_query--> AvailabilityQuery --SearchBackend.search--> OfferPage
                                                                   --SearchService--> SearchResult

Backends answer the same `AvailabilityQuery` and must agree result for result:

- `projection.IndexBackend`: the in-memory index (what the service serves);
- `reference_sql.ReferenceSqlBackend`: one PostgreSQL query (tests, `medsched verify-index`);
- `elastic.ElasticBackend`: Elasticsearch (optional).

Order and paging are defined here once. Results sort by the key
`(distance km if sorting by distance else 0, start, provider id, location id)`; a page token
carries the last result's key and a fingerprint of the query it belongs to, so any backend on
any replica can continue a search another one started. Ids are compared as text, which for
canonical (lower-case) UUIDs is also PostgreSQL's `uuid` order.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import math
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import NamedTuple, Protocol
from zoneinfo import ZoneInfo

from availability_svc.domain import PatientKind
from availability_svc.geo import KM_PER_MILE, DistanceUnit
from availability_svc.index import GeoPoint, SortOrder
from common.errors import (
    DependencyUnavailable,
    InvalidArgument,
    NotFound,
    Reason,
    ViolationCollector,
)
from common.slot_ids import format_slot_id, parse_slot_id

__all__ = [
    "DEFAULT_LIMIT",
    "DEFAULT_RADIUS",
    "MAX_LIMIT",
    "MAX_RADIUS_MILES",
    "MAX_SPAN_DAYS",
    "AvailabilityQuery",
    "Catalog",
    "LocationInfo",
    "Offer",
    "OfferPage",
    "OrganizationInfo",
    "ProviderInfo",
    "SearchBackend",
    "SearchParams",
    "SearchResult",
    "SearchService",
    "SlotResult",
    "SortKey",
    "VisitTypeInfo",
    "decode_page_token",
    "encode_page_token",
    "format_slot_id",
    "parse_query",
    "parse_slot_id",
]

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
DEFAULT_SPAN_DAYS = 13
MAX_SPAN_DAYS = 90
MAX_RADIUS_MILES = 250.0
DEFAULT_RADIUS = (25.0, DistanceUnit.MI)

_PAGE_FORMAT = "1"
_RADIUS = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(mi|km)\s*", re.IGNORECASE | re.ASCII)
_COORDINATE = r"\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))\s*"
# "lat,lon" in one match: neither a coordinate nor the space around it can hold a comma, so
# this accepts exactly what splitting at commas into two coordinates would.
_POINT = re.compile(f"{_COORDINATE},{_COORDINATE}")
# Request texts to enum members by dict lookup: cheaper than comparing with `.value`.
_SORT_ORDERS = {"": SortOrder.SOONEST, "SOONEST": SortOrder.SOONEST, "DISTANCE": SortOrder.DISTANCE}
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_CLOCK = re.compile(r"([0-9]{2}):([0-9]{2})")
_MIDNIGHT = time(0)

SortKey = tuple[float, int, str, str]
"""(distance in km when sorting by distance else 0.0, start epoch s, provider id, location id)."""


# ---- reference data the search needs -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrganizationInfo:
    """An organisation as search sees it."""

    id: str
    time_zone: str
    granule_minutes: int
    horizon_days: int
    active: bool


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    """What a result says about a provider (public directory data, not PHI)."""

    id: str
    organization_id: str
    display_name: str
    specialties: tuple[str, ...]
    languages: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LocationInfo:
    """What a result says about a location."""

    id: str
    organization_id: str
    display_name: str
    latitude: float
    longitude: float
    time_zone: str


@dataclass(frozen=True, slots=True)
class VisitTypeInfo:
    """A visit type with what validation and the booking window need."""

    id: str
    organization_id: str
    display_name: str
    duration_granules: int
    patient_kind: PatientKind
    minimum_notice_s: int
    maximum_days_ahead: int
    """0: the organisation's horizon."""
    active: bool


@dataclass(frozen=True)
class Catalog:
    """The searchable reference data of every organisation, keyed by external id.

    Immutable: the projection swaps in a new catalog when it reloads reference data, so a
    search always sees one consistent version.
    """

    organizations: Mapping[str, OrganizationInfo] = field(default_factory=dict)
    providers: Mapping[str, ProviderInfo] = field(default_factory=dict)
    locations: Mapping[str, LocationInfo] = field(default_factory=dict)
    visit_types: Mapping[str, VisitTypeInfo] = field(default_factory=dict)


# ---- the query every backend answers -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AvailabilityQuery:
    """A validated search in external ids; see `SearchParams` for what each filter means.

    `date_from`/`date_to` are inclusive local dates (each location's own zone);
    `time_from`/`time_to` bound the local start time (`None`: midnight); `not_before_utc`
    excludes earlier starts (now plus the visit type's minimum notice); `after` is the sort
    key of the last result of the previous page.
    """

    organization_id: str
    date_from: date
    date_to: date
    not_before_utc: int
    specialty: str | None = None
    provider_ids: frozenset[str] | None = None
    location_ids: frozenset[str] | None = None
    near: GeoPoint | None = None
    radius: float | None = None
    unit: DistanceUnit = DistanceUnit.MI
    plan_id: str | None = None
    language: str | None = None
    visit_type_id: str | None = None
    time_from: time | None = None
    time_to: time | None = None
    patient_kind: PatientKind = PatientKind.ANY
    sort: SortOrder = SortOrder.SOONEST
    limit: int = DEFAULT_LIMIT
    after: SortKey | None = None

    @property
    def radius_km(self) -> float | None:
        if self.radius is None:
            return None
        return self.radius * KM_PER_MILE if self.unit is DistanceUnit.MI else self.radius

    def fingerprint(self) -> str:
        """Identifies the filters and the order: a page token is only valid with them.

        Leaves out `limit` (pages may differ in size), `not_before_utc` (the next page is
        asked for later) and `after`.
        """
        parts = (
            self.organization_id,
            self.specialty,
            sorted(self.provider_ids) if self.provider_ids is not None else None,
            sorted(self.location_ids) if self.location_ids is not None else None,
            None if self.near is None else (self.near.latitude.hex(), self.near.longitude.hex()),
            None if self.radius is None else self.radius.hex(),
            self.unit._value_,
            self.plan_id,
            self.language,
            self.visit_type_id,
            _iso_date(self.date_from),
            _iso_date(self.date_to),
            None if self.time_from is None else self.time_from.isoformat(),
            None if self.time_to is None else self.time_to.isoformat(),
            # `_value_` is what `.value` returns, without the descriptor's cost.
            self.patient_kind._value_,
            self.sort._value_,
        )
        return hashlib.blake2b(repr(parts).encode(), digest_size=8).hexdigest()


# Every search names a date or two out of a few hundred: their text is kept, not formatted.
@functools.lru_cache(maxsize=1024)
def _iso_date(value: date) -> str:
    return value.isoformat()


class Offer(NamedTuple):
    """One bookable start from a backend; `distance` is in the query's unit."""

    provider_id: str
    location_id: str
    start_utc: int
    end_utc: int
    distance: float | None
    sort_km: float
    """The exact distance in km the backend sorted by (0.0 unless sorting by distance)."""
    visit_type_id: str | None

    def sort_key(self) -> SortKey:
        return (self.sort_km, self.start_utc, self.provider_id, self.location_id)


@dataclass(frozen=True, slots=True)
class OfferPage:
    """Up to `limit` offers in sort order; `more` says whether another page exists."""

    offers: tuple[Offer, ...]
    more: bool


class SearchBackend(Protocol):
    """Answers an `AvailabilityQuery`; every implementation gives the same offers."""

    async def search(self, query: AvailabilityQuery) -> OfferPage: ...


# ---- request parsing -----------------------------------------------------------------------


class SearchParams(NamedTuple):
    """A search request's fields as the caller sent them (REST query names in comments).

    Empty strings mean "not given"; `limit` 0 means the default.

    A named tuple rather than a frozen dataclass: one is built from every request, and a
    named tuple of this many fields constructs in about a third of the time (1 us, not 3-4).
    """

    organization_id: str = ""
    specialty: str = ""
    location: str = ""  # "lat,lon"
    radius: str = ""  # "10mi", "15km"
    insurance: str = ""
    from_date: str = ""  # from
    to_date: str = ""  # to
    limit: int = 0
    page_token: str = ""
    provider_ids: tuple[str, ...] = ()
    location_ids: tuple[str, ...] = ()
    language: str = ""
    visit_type_id: str = ""
    earliest_start_time: str = ""  # "HH:MM"
    latest_start_time: str = ""  # "HH:MM", "24:00" allowed
    patient_kind: PatientKind = PatientKind.ANY
    sort: str = ""  # "", "SOONEST" or "DISTANCE"


def parse_query(params: SearchParams, catalog: Catalog, now: datetime) -> AvailabilityQuery:
    """Validate `params` into a query; every bad field is reported at once.

    Raises `InvalidArgument` (field violations named by REST parameter) or `NotFound` (an
    organisation or visit type that does not exist or is inactive).
    """
    problems = ViolationCollector()
    organization = _organization(params.organization_id, catalog, problems)
    visit_type = _visit_type(params.visit_type_id, organization, catalog, problems)
    near = _point(params.location, problems)
    radius = _radius(params.radius, near, problems)
    sort = _sort(params.sort, near, problems)
    limit = _limit(params.limit, problems)
    provider_ids = _ids(params.provider_ids, "provider_ids", problems)
    location_ids = _ids(params.location_ids, "location_ids", problems)
    time_from = _clock(params.earliest_start_time, "earliest_start_time", problems, end=False)
    time_to = _clock(params.latest_start_time, "latest_start_time", problems, end=True)
    if (
        time_from is not None
        and time_to is not None
        and (time_from.hour, time_from.minute) >= (time_to.hour, time_to.minute)
        and time_to != _MIDNIGHT
    ):
        problems.add("latest_start_time", "must be after earliest_start_time")
    zone = ZoneInfo(organization.time_zone) if organization else UTC
    today = now.astimezone(zone).date()
    date_from = _date(params.from_date, "from", problems) or today
    date_to = _date(params.to_date, "to", problems) or date_from + timedelta(DEFAULT_SPAN_DAYS)
    if date_to < date_from:
        problems.add("to", "must not be before from")
    elif (date_to - date_from).days > MAX_SPAN_DAYS:
        problems.add("to", f"must be at most {MAX_SPAN_DAYS} days after from")
    problems.raise_if_any()
    assert organization is not None  # an unknown organisation raised above

    not_before = math.ceil(now.timestamp())
    if visit_type is not None:
        not_before += visit_type.minimum_notice_s
        days_ahead = visit_type.maximum_days_ahead or organization.horizon_days
        date_to = min(date_to, today + timedelta(days_ahead))
    # The first fields by position: CPython compiles a call with more than 15 keyword
    # arguments to building and unpacking a dict of them (about 0.3 us more here).
    query = AvailabilityQuery(
        organization.id,
        date_from,
        date_to,
        not_before,  # not_before_utc
        _text(params.specialty),
        provider_ids,
        location_ids=location_ids,
        near=near,
        radius=None if radius is None else radius[0],
        unit=DistanceUnit.MI if radius is None else radius[1],
        plan_id=_text(params.insurance),
        language=_text(params.language),
        visit_type_id=None if visit_type is None else visit_type.id,
        time_from=time_from,
        time_to=None if time_to == _MIDNIGHT else time_to,
        patient_kind=params.patient_kind,
        sort=sort,
        limit=limit,
    )
    if params.page_token:
        query = dataclasses.replace(query, after=decode_page_token(params.page_token, query))
    return query


def _text(value: str) -> str | None:
    value = value.strip()
    return value or None


# The same few ids (organisation, visit types) arrive with nearly every request.
@functools.lru_cache(maxsize=4096)
def _canonical_id(value: str) -> str | None:
    """The canonical text of a UUID id, or None if `value` is not one."""
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        return None


def _organization(
    value: str, catalog: Catalog, problems: ViolationCollector
) -> OrganizationInfo | None:
    if not value.strip():
        active = [o for o in catalog.organizations.values() if o.active]
        if len(active) == 1:
            return active[0]
        if not active:
            raise NotFound(
                "no organisation is available for search",
                reasons=[Reason(code="NO_ORGANIZATION")],
            )
        problems.add("organization_id", "is required: this deployment serves several")
        return None
    key = _canonical_id(value)
    if key is None:
        problems.add("organization_id", "is not a valid id")
        return None
    organization = catalog.organizations.get(key)
    if organization is None or not organization.active:
        raise NotFound(
            "organization not found",
            reasons=[Reason(code="ORGANIZATION_NOT_FOUND", subject=f"organizations/{key}")],
        )
    return organization


def _visit_type(
    value: str,
    organization: OrganizationInfo | None,
    catalog: Catalog,
    problems: ViolationCollector,
) -> VisitTypeInfo | None:
    if not value.strip():
        return None
    key = _canonical_id(value)
    if key is None:
        problems.add("visit_type_id", "is not a valid id")
        return None
    visit_type = catalog.visit_types.get(key)
    if (
        visit_type is None
        or not visit_type.active
        or (organization is not None and visit_type.organization_id != organization.id)
    ):
        raise NotFound(
            "visit type not found",
            reasons=[Reason(code="VISIT_TYPE_NOT_FOUND", subject=f"visitTypes/{key}")],
        )
    return visit_type


def _point(value: str, problems: ViolationCollector) -> GeoPoint | None:
    if not value.strip():
        return None
    match = _POINT.fullmatch(value)
    if match is None:
        problems.add("location", "must be lat,lon in decimal degrees, like 40.7,-74.0")
        return None
    latitude, longitude = float(match[1]), float(match[2])
    ok = True
    if not -90.0 <= latitude <= 90.0:
        problems.add("location", "latitude must be between -90 and 90")
        ok = False
    if not -180.0 <= longitude <= 180.0:
        problems.add("location", "longitude must be between -180 and 180")
        ok = False
    return GeoPoint(latitude, longitude) if ok else None


def _radius(
    value: str, near: GeoPoint | None, problems: ViolationCollector
) -> tuple[float, DistanceUnit] | None:
    if not value.strip():
        return DEFAULT_RADIUS if near is not None else None
    parsed = _parse_radius(value)
    if parsed is None:
        problems.add("radius", "must be a number followed by mi or km, like 10mi")
        return None
    amount, unit, problem = parsed
    if problem:
        problems.add("radius", problem)
    if near is None:
        problems.add("radius", "needs location (a lat,lon point to measure from)")
        return None
    return amount, unit


# Clients offer a few radii ("10mi", "25mi"), so the same few texts arrive again and again.
@functools.lru_cache(maxsize=1024)
def _parse_radius(value: str) -> tuple[float, DistanceUnit, str] | None:
    """`value` as (amount, unit, what is wrong with the amount or ""); None if unreadable."""
    match = _RADIUS.fullmatch(value)
    if match is None:
        return None
    amount = float(match[1])
    unit = DistanceUnit(match[2].upper())
    miles = amount if unit is DistanceUnit.MI else amount / KM_PER_MILE
    problem = ""
    if amount <= 0:
        problem = "must be greater than zero"
    elif miles > MAX_RADIUS_MILES:
        problem = f"must be at most {MAX_RADIUS_MILES:g} miles"
    return amount, unit, problem


def _sort(value: str, near: GeoPoint | None, problems: ViolationCollector) -> SortOrder:
    sort = _SORT_ORDERS.get(value)
    if sort is None:
        problems.add("sort", "must be SOONEST or DISTANCE")
        return SortOrder.SOONEST
    if sort is SortOrder.DISTANCE and near is None:
        problems.add("sort", "DISTANCE needs location")
    return sort


def _limit(value: int, problems: ViolationCollector) -> int:
    if value == 0:
        return DEFAULT_LIMIT
    if not 1 <= value <= MAX_LIMIT:
        problems.add("limit", f"must be between 1 and {MAX_LIMIT}")
        return DEFAULT_LIMIT
    return value


def _ids(values: Sequence[str], name: str, problems: ViolationCollector) -> frozenset[str] | None:
    if not values:
        return None
    ids = set()
    for position, value in enumerate(values):
        key = _canonical_id(value)
        if key is None:
            problems.add(f"{name}[{position}]", "is not a valid id")
        else:
            ids.add(key)
    return frozenset(ids)


def _date(value: str, name: str, problems: ViolationCollector) -> date | None:
    text = value.strip()
    if not text:
        return None
    parsed = _parse_date(text)
    if parsed is None:
        problems.add(name, "must be a date YYYY-MM-DD, like 2025-02-01")
    return parsed


# Dates are shared by everyone searching (today, the next weeks): few distinct texts.
@functools.lru_cache(maxsize=1024)
def _parse_date(text: str) -> date | None:
    """`text` as a date if it is one written YYYY-MM-DD, else None."""
    if not _DATE.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _clock(value: str, name: str, problems: ViolationCollector, *, end: bool) -> time | None:
    """`HH:MM` as a time; "24:00" (allowed for the end only) becomes 00:00, i.e. midnight."""
    if not value.strip():
        return None
    match = _CLOCK.fullmatch(value.strip())
    hour, minute = (int(match.group(1)), int(match.group(2))) if match else (-1, -1)
    if end and (hour, minute) == (24, 0):
        return _MIDNIGHT
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        upper = "24:00" if end else "23:59"
        problems.add(name, f"must be a local time HH:MM from 00:00 to {upper}")
        return None
    return time(hour, minute)


# ---- page tokens and slot ids --------------------------------------------------------------


def encode_page_token(query: AvailabilityQuery, last: SortKey) -> str:
    """An opaque token: format version, the query's fingerprint and the last result's key."""
    distance_km, start_utc, provider_id, location_id = last
    text = "|".join(
        (
            _PAGE_FORMAT,
            query.fingerprint(),
            distance_km.hex(),
            str(start_utc),
            provider_id,
            location_id,
        )
    )
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_page_token(token: str, query: AvailabilityQuery) -> SortKey:
    """The sort key a token continues after; `InvalidArgument` on `page_token` otherwise."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        version, fingerprint, distance_hex, start, provider_id, location_id = raw.split("|")
        key: SortKey = (float.fromhex(distance_hex), int(start), provider_id, location_id)
        if (
            version != _PAGE_FORMAT
            or _canonical_id(provider_id) != provider_id
            or _canonical_id(location_id) != location_id
            or not math.isfinite(key[0])
        ):
            raise ValueError("unknown token layout")
    except (binascii.Error, ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument.single("page_token", "is not a page token this service issued") from e
    if fingerprint != query.fingerprint():
        raise InvalidArgument.single("page_token", "belongs to a search with different filters")
    return key


@functools.lru_cache(maxsize=1 << 16)
def local_iso(time_zone: str, instant_utc: int) -> str:
    """An instant as local ISO 8601 date and time with offset, in `time_zone`."""
    return datetime.fromtimestamp(instant_utc, ZoneInfo(time_zone)).isoformat()


# ---- the use case --------------------------------------------------------------------------


class SlotResult(NamedTuple):
    """One result with what a client shows: who, where, when (UTC and local).

    A named tuple rather than a frozen dataclass: it is built for every result of every
    search, and constructs several times faster.
    """

    slot_id: str
    offer: Offer
    provider: ProviderInfo
    location: LocationInfo
    visit_type: VisitTypeInfo | None
    local_start: str
    local_end: str
    unit: DistanceUnit


class SearchResult(NamedTuple):
    """One page of results, the token for the next page ("" on the last) and freshness.

    The offers are kept as the backend gave them, with the catalog version that describes
    them (every offer's provider and location are in it); `slots` describes them on demand,
    so a caller that writes its own form (the gRPC encoder) builds no per-result objects.
    A named tuple rather than a frozen dataclass, as one is built for every search.
    """

    offers: tuple[Offer, ...]
    catalog: Catalog
    visit_type: VisitTypeInfo | None
    unit: DistanceUnit
    next_page_token: str
    index_time: datetime | None

    @property
    def slots(self) -> tuple[SlotResult, ...]:
        """The offers with what a client shows about them, in order."""
        providers, locations = self.catalog.providers, self.catalog.locations
        return tuple(
            _describe(
                offer,
                providers[offer.provider_id],
                locations[offer.location_id],
                self.visit_type,
                self.unit,
            )
            for offer in self.offers
        )


class SearchService:
    """Validates requests, runs them on a backend and describes the offers found."""

    def __init__(
        self,
        backend: SearchBackend,
        catalog: Callable[[], Catalog],
        clock: Callable[[], datetime],
        freshness: Callable[[], datetime | None] = lambda: None,
    ) -> None:
        """`catalog` returns the current reference data (it changes on reloads);
        `freshness` the commit time of the newest change the backend reflects."""
        self._backend = backend
        self._catalog = catalog
        self._clock = clock
        self._freshness = freshness

    async def search(self, params: SearchParams) -> SearchResult:
        catalog = self._catalog()
        query = parse_query(params, catalog, self._clock())
        page = await self._backend.search(query)
        visit_type = (
            None if query.visit_type_id is None else catalog.visit_types.get(query.visit_type_id)
        )
        providers, locations = catalog.providers, catalog.locations
        for offer in page.offers:
            if offer.provider_id not in providers or offer.location_id not in locations:
                # The backend knows an id the catalog does not yet: reference data is
                # reloaded right after such an id shows up, so this lasts moments.
                raise DependencyUnavailable("the search index is catching up; retry shortly")
        token = ""
        if page.more and page.offers:
            token = encode_page_token(query, page.offers[-1].sort_key())
        return SearchResult(page.offers, catalog, visit_type, query.unit, token, self._freshness())


def _describe(
    offer: Offer,
    provider: ProviderInfo,
    location: LocationInfo,
    visit_type: VisitTypeInfo | None,
    unit: DistanceUnit,
) -> SlotResult:
    return SlotResult(
        slot_id=format_slot_id(offer.provider_id, offer.start_utc),
        offer=offer,
        provider=provider,
        location=location,
        visit_type=visit_type,
        local_start=local_iso(location.time_zone, offer.start_utc),
        local_end=local_iso(location.time_zone, offer.end_utc),
        unit=unit,
    )
