"""Schedule administration use cases: validate, authorize, store and re-materialize at once.

Every use case takes the calling `Principal` and runs one transaction. Rules:

- Tenancy: every record belongs to one organisation. Deployment administrators and services
  reach every organisation; staff only theirs (and, when their principal names locations,
  write only at those locations). Anything outside the caller's reach is reported exactly like
  something that does not exist (`NotFound`), so ids of other tenants cannot be probed.
  Patients may not call these use cases (`PermissionDenied`).
- Validation: every problem found is reported at once as `InvalidArgument` whose field paths
  are those of the request (`template.windows[1].end_time`); nothing is changed.
- Changes that alter bookable time (templates, exceptions, overrides, a location's time zone)
  re-materialize the affected provider(s) and dates in the same transaction, so the change,
  the new granule states and their events commit together (events via the outbox).

The gRPC edge (`admin_server.py`) turns protobuf into the records of `admin_model` (parsing
dates and times, reporting malformed ones with their paths) and names the fields of an update
mask as record attributes; this module never sees protobuf.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Generic, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg

from availability_svc import store
from availability_svc.admin_model import (
    ConflictCause,
    ConflictRecord,
    ConflictState,
    ExceptionRecord,
    InsurancePlanRecord,
    LocationRecord,
    OrganizationRecord,
    OverrideKind,
    OverrideRecord,
    ProviderRecord,
    ResourceRecord,
    TemplateRecord,
    TemplateWindow,
    VisitTypeRecord,
)
from availability_svc.materializer import (
    ChangeCause,
    EventContext,
    MaterializeStats,
    horizon_dates,
    materialize_organization,
    materialize_providers,
)
from common.auth import Principal, Role, can_access_location, can_access_organization
from common.db import Connection, Pool, transaction
from common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    ViolationCollector,
)

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "Page",
    "ScheduleAdmin",
    "parse_id",
]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
GRANULE_CHOICES = (5, 10, 15, 20, 30, 60)
_CODE = re.compile(r"[a-z][a-z0-9_]{0,62}")
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*")
_NPI = re.compile(r"\d{10}")
_DESCRIPTION_MAX = 500

T = TypeVar("T")
Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def parse_id(value: str) -> str | None:
    """The canonical text of a UUID id, or None if `value` is not one."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError):
        return None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list and the token of the next page ("" on the last)."""

    items: tuple[T, ...]
    next_page_token: str


# ---------------------------------------------------------------- validation helpers


def _is_zone(name: str) -> bool:
    if not name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _npi_valid(npi: str) -> bool:
    """10 digits whose last is the Luhn check digit over `80840` + the first nine."""
    if not _NPI.fullmatch(npi):
        return False
    digits = [int(d) for d in "80840" + npi]
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def _check_name(check: ViolationCollector, value: str, path: str) -> None:
    check.check(bool(value.strip()), path, "must not be empty")
    check.check(len(value) <= 200, path, "must be at most 200 characters")


def _check_codes(check: ViolationCollector, values: Sequence[str], path: str) -> None:
    for i, value in enumerate(values):
        check.check(bool(_CODE.fullmatch(value)), f"{path}[{i}]", "must be a lower snake case code")
    check.check(len(set(values)) == len(values), path, "must not repeat a value")


def _check_description(check: ViolationCollector, value: str, path: str) -> None:
    check.check(len(value) <= _DESCRIPTION_MAX, path, "must be at most 500 characters")


def _aligned(minute: int, granule_minutes: int) -> bool:
    return minute % granule_minutes == 0


def _check_window(
    check: ViolationCollector,
    start: int,
    end: int,
    granule_minutes: int,
    start_path: str,
    end_path: str,
) -> None:
    check.check(
        _aligned(start, granule_minutes),
        start_path,
        f"must be on a {granule_minutes}-minute granule boundary",
    )
    check.check(
        _aligned(end, granule_minutes),
        end_path,
        f"must be on a {granule_minutes}-minute granule boundary",
    )
    check.check(start < end, end_path, "must be after the start time")


# ---------------------------------------------------------------- page tokens


def _encode_token(kind: str, key: Sequence[str], filters: Sequence[str]) -> str:
    document = json.dumps({"k": kind, "a": list(key), "f": list(filters)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(document.encode()).decode().rstrip("=")


def _decode_token(token: str, kind: str, filters: Sequence[str]) -> tuple[str, ...] | None:
    """The sort key after which the page starts; None for the first page."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        document = json.loads(raw)
    except (binascii.Error, ValueError) as e:
        raise InvalidArgument.single("page_token", "is not a token this service issued") from e
    if (
        not isinstance(document, dict)
        or document.get("k") != kind
        or document.get("f") != list(filters)
        or not isinstance(document.get("a"), list)
        or not all(isinstance(v, str) for v in document["a"])
    ):
        raise InvalidArgument.single(
            "page_token", "does not belong to this list with these filters"
        )
    return tuple(document["a"])


def _organization_not_found(organization_id: str) -> NotFound:
    return NotFound(
        f"organization {organization_id} not found",
        reasons=[Reason("NOT_FOUND", subject=f"organizations/{organization_id}")],
    )


def _page_size(value: int) -> int:
    if value < 0:
        raise InvalidArgument.single("page_size", "must not be negative")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


async def _paged(
    kind: str,
    filters: Sequence[str],
    page_size: int,
    page_token: str,
    fetch: Callable[[tuple[str, ...] | None, int], Awaitable[list[T]]],
    key: Callable[[T], Sequence[str]],
) -> Page[T]:
    size = _page_size(page_size)
    after = _decode_token(page_token, kind, filters)
    rows = await fetch(after, size + 1)
    items = rows[:size]
    token = _encode_token(kind, key(items[-1]), filters) if len(rows) > size else ""
    return Page(tuple(items), token)


# ---------------------------------------------------------------- the use cases


class ScheduleAdmin:
    """The schedule administration use cases over one database pool."""

    def __init__(self, pool: Pool, *, clock: Clock = _utc_now) -> None:
        self._pool = pool
        self._clock = clock

    # -- authorization and lookups

    @staticmethod
    def _require_caller(principal: Principal | None) -> Principal:
        if principal is None:
            raise PermissionDenied("schedule administration needs an authenticated caller")
        if principal.role is Role.PATIENT:
            raise PermissionDenied("patients may not administer schedules")
        return principal

    def check_organization_access(self, principal: Principal | None, organization_id: str) -> str:
        """The canonical id of an organisation the caller may act in, or NOT_FOUND.

        Servers call it before looking at a request body, so a caller outside the
        organisation learns nothing, not even which of its fields are wrong.
        """
        caller = self._require_caller(principal)
        canonical = parse_id(organization_id)
        if canonical is None or not can_access_organization(caller, canonical):
            raise _organization_not_found(organization_id)
        return canonical

    async def _organization(
        self, conn: Connection, principal: Principal | None, organization_id: str
    ) -> OrganizationRecord:
        canonical = self.check_organization_access(principal, organization_id)
        org = await store.get_organization(conn, canonical)
        if org is None:
            raise _organization_not_found(organization_id)
        return org

    @staticmethod
    def _check_location_scope(
        principal: Principal | None, org: OrganizationRecord, location_ids: Iterable[str]
    ) -> None:
        assert principal is not None
        for location_id in location_ids:
            if not can_access_location(principal, org.id, location_id):
                raise PermissionDenied(
                    f"the caller may not manage location {location_id}",
                    reasons=[Reason("LOCATION_OUT_OF_SCOPE", subject=f"locations/{location_id}")],
                )

    @staticmethod
    def _found(found: T | None, collection: str, item_id: str) -> T:
        if found is None:
            raise NotFound(
                f"{collection.rstrip('s')} {item_id} not found",
                reasons=[Reason("NOT_FOUND", subject=f"{collection}/{item_id}")],
            )
        return found

    async def _get(
        self,
        conn: Connection,
        org: OrganizationRecord,
        collection: str,
        item_id: str,
        lookup: Callable[[Connection, str, str], Awaitable[T | None]],
    ) -> T:
        canonical = parse_id(item_id)
        found = None if canonical is None else await lookup(conn, org.id, canonical)
        return self._found(found, collection, item_id)

    @staticmethod
    async def _provider_or_none(
        conn: Connection, org: OrganizationRecord, provider_id: str | None
    ) -> ProviderRecord | None:
        return None if provider_id is None else await store.get_provider(conn, org.id, provider_id)

    def _today_and_horizon(self, org: OrganizationRecord) -> tuple[date, date]:
        return horizon_dates(org, self._clock())

    async def _rematerialize(
        self,
        conn: Connection,
        org: OrganizationRecord,
        provider_ids: Sequence[str],
        first: date,
        last: date,
        cause: ChangeCause,
        principal: Principal | None,
    ) -> MaterializeStats:
        """Re-materialize `provider_ids` on `[first, last]` clipped to today..horizon."""
        today, horizon_end = self._today_and_horizon(org)
        first, last = max(first, today), min(last, horizon_end)
        if first > last or not provider_ids:
            return MaterializeStats()
        stats = await materialize_providers(
            conn,
            org,
            provider_ids,
            first,
            last,
            cause=cause,
            context=_context(principal),
            now=self._clock(),
        )
        if stats.failures:
            failure = stats.failures[0]
            raise FailedPrecondition(
                "the schedule change cannot be applied: " + failure.reason,
                reasons=[
                    Reason(
                        "SCHEDULE_CONFLICT",
                        subject=f"providers/{failure.provider_id}",
                        description=failure.reason,
                    )
                ],
            )
        return stats

    # -- organizations

    async def create_organization(
        self, principal: Principal | None, org: OrganizationRecord
    ) -> OrganizationRecord:
        caller = self._require_caller(principal)
        if caller.role is not Role.ADMIN:
            raise PermissionDenied("creating organizations needs a deployment administrator")
        org = replace(
            org,
            id=str(uuid.uuid4()),
            granule_minutes=org.granule_minutes or 15,
            horizon_days=org.horizon_days or 90,
        )
        _validate_organization(org, "organization.")
        async with transaction(self._pool) as conn:
            return await store.insert_organization(conn, org)

    async def get_organization(
        self, principal: Principal | None, organization_id: str
    ) -> OrganizationRecord:
        async with transaction(self._pool) as conn:
            return await self._organization(conn, principal, organization_id)

    async def list_organizations(
        self, principal: Principal | None, page_size: int, page_token: str
    ) -> Page[OrganizationRecord]:
        caller = self._require_caller(principal)
        only = None if caller.role in (Role.ADMIN, Role.SERVICE) else caller.organization_ids
        only = (
            None
            if only is None
            else frozenset(i for i in (parse_id(o) for o in only) if i is not None)
        )
        async with transaction(self._pool) as conn:
            return await _paged(
                "organizations",
                [],
                page_size,
                page_token,
                lambda after, limit: store.list_organizations(
                    conn, only_ids=only, after=after, limit=limit
                ),
                lambda o: (o.display_name, o.id),
            )

    async def update_organization(
        self,
        principal: Principal | None,
        organization_id: str,
        changes: Mapping[str, Any],
    ) -> OrganizationRecord:
        async with transaction(self._pool) as conn:
            current = await self._organization(conn, principal, organization_id)
            updated = _merge(current, changes, "organization.", ["granule_minutes"])
            _validate_organization(updated, "organization.")
            stored = await store.update_organization(conn, updated)
        if stored.active and stored.horizon_days > current.horizon_days:
            # A longer horizon is new bookable time: fill it now rather than at the next
            # roll-forward. Batches commit one by one; if this is interrupted, the
            # roll-forward continues from what each provider has.
            today, horizon_end = self._today_and_horizon(stored)
            await materialize_organization(
                self._pool,
                stored.id,
                first=today + timedelta(days=current.horizon_days),
                last=horizon_end,
                now=self._clock(),
                context=_context(principal),
            )
        return stored

    # -- locations

    async def create_location(
        self, principal: Principal | None, organization_id: str, location: LocationRecord
    ) -> LocationRecord:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            location = replace(
                location,
                id=str(uuid.uuid4()),
                organization_id=org.id,
                time_zone=location.time_zone or org.time_zone,
            )
            _validate_location(location, "location.")
            return await store.insert_location(conn, location)

    async def get_location(
        self, principal: Principal | None, organization_id: str, location_id: str
    ) -> LocationRecord:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            return await self._get(conn, org, "locations", location_id, store.get_location)

    async def list_locations(
        self,
        principal: Principal | None,
        organization_id: str,
        *,
        include_inactive: bool,
        page_size: int,
        page_token: str,
    ) -> Page[LocationRecord]:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            return await _paged(
                "locations",
                [org.id, str(include_inactive)],
                page_size,
                page_token,
                lambda after, limit: store.list_locations(
                    conn, org.id, include_inactive=include_inactive, after=after, limit=limit
                ),
                lambda loc: (loc.display_name, loc.id),
            )

    async def update_location(
        self,
        principal: Principal | None,
        organization_id: str,
        location_id: str,
        changes: Mapping[str, Any],
    ) -> LocationRecord:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            current = await self._get(conn, org, "locations", location_id, store.get_location)
            self._check_location_scope(principal, org, [current.id])
            updated = _merge(current, changes, "location.")
            _validate_location(updated, "location.")
            stored = await store.update_location(conn, updated)
            if stored.time_zone != current.time_zone:
                # Templates are local wall-clock times: the same hours are other instants now.
                today, horizon_end = self._today_and_horizon(org)
                providers = await store.providers_at_location(conn, org.id, stored.id)
                await self._rematerialize(
                    conn, org, providers, today, horizon_end, ChangeCause(), principal
                )
            return stored

    # -- insurance plans

    async def create_plan(
        self, principal: Principal | None, organization_id: str, plan: InsurancePlanRecord
    ) -> InsurancePlanRecord:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            plan = replace(plan, organization_id=org.id)
            _validate_plan(plan, "plan.")
            if await store.get_plan(conn, org.id, plan.plan_id) is not None:
                raise _already_exists("insurance-plans", plan.plan_id)
            try:
                return await store.insert_plan(conn, plan)
            except psycopg.errors.UniqueViolation as e:
                raise _already_exists("insurance-plans", plan.plan_id) from e

    async def get_plan(
        self, principal: Principal | None, organization_id: str, plan_id: str
    ) -> InsurancePlanRecord:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            plan = await store.get_plan(conn, org.id, plan_id)
            return self._found(plan, "insurance-plans", plan_id)

    async def list_plans(
        self,
        principal: Principal | None,
        organization_id: str,
        *,
        include_inactive: bool,
        page_size: int,
        page_token: str,
    ) -> Page[InsurancePlanRecord]:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            return await _paged(
                "plans",
                [org.id, str(include_inactive)],
                page_size,
                page_token,
                lambda after, limit: store.list_plans(
                    conn, org.id, include_inactive=include_inactive, after=after, limit=limit
                ),
                lambda plan: (plan.plan_id,),
            )

    async def update_plan(
        self,
        principal: Principal | None,
        organization_id: str,
        plan_id: str,
        changes: Mapping[str, Any],
    ) -> InsurancePlanRecord:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            current = self._found(
                await store.get_plan(conn, org.id, plan_id), "insurance-plans", plan_id
            )
            updated = _merge(current, changes, "plan.", ["plan_id"])
            _validate_plan(updated, "plan.")
            return await store.update_plan(conn, updated)

    # -- providers

    async def _validate_provider_references(
        self, conn: Connection, org: OrganizationRecord, provider: ProviderRecord, prefix: str
    ) -> None:
        check = ViolationCollector()
        known_plans = await store.existing_plan_ids(conn, org.id, provider.accepted_plan_ids)
        for i, plan_id in enumerate(provider.accepted_plan_ids):
            check.check(plan_id in known_plans, f"{prefix}accepted_plan_ids[{i}]", "unknown plan")
        locations = [parse_id(loc) for loc in provider.location_ids]
        known = await store.existing_ids(
            conn, "locations", org.id, [loc for loc in locations if loc is not None]
        )
        for i, loc in enumerate(locations):
            check.check(loc in known, f"{prefix}location_ids[{i}]", "unknown location")
        check.raise_if_any()

    async def create_provider(
        self, principal: Principal | None, organization_id: str, provider: ProviderRecord
    ) -> ProviderRecord:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            provider = replace(provider, id=str(uuid.uuid4()), organization_id=org.id)
            _validate_provider(provider, "provider.")
            await self._validate_provider_references(conn, org, provider, "provider.")
            provider = replace(
                provider, location_ids=tuple(str(uuid.UUID(v)) for v in provider.location_ids)
            )
            try:
                return await store.insert_provider(conn, provider)
            except psycopg.errors.UniqueViolation as e:
                raise AlreadyExists(
                    "a provider with this NPI already exists in the organization",
                    reasons=[Reason("NPI_TAKEN", subject="provider.npi")],
                ) from e

    async def get_provider(
        self, principal: Principal | None, organization_id: str, provider_id: str
    ) -> ProviderRecord:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            return await self._get(conn, org, "providers", provider_id, store.get_provider)

    async def list_providers(
        self,
        principal: Principal | None,
        organization_id: str,
        *,
        specialty: str,
        location_id: str,
        include_inactive: bool,
        page_size: int,
        page_token: str,
    ) -> Page[ProviderRecord]:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            location = _filter_id(location_id, "location_id")
            return await _paged(
                "providers",
                [org.id, specialty, location, str(include_inactive)],
                page_size,
                page_token,
                lambda after, limit: store.list_providers(
                    conn,
                    org.id,
                    specialty=specialty,
                    location_id=location,
                    include_inactive=include_inactive,
                    after=after,
                    limit=limit,
                ),
                lambda p: (p.display_name, p.id),
            )

    async def update_provider(
        self,
        principal: Principal | None,
        organization_id: str,
        provider_id: str,
        changes: Mapping[str, Any],
    ) -> ProviderRecord:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            current = await self._get(conn, org, "providers", provider_id, store.get_provider)
            updated = _merge(current, changes, "provider.")
            _validate_provider(updated, "provider.")
            await self._validate_provider_references(conn, org, updated, "provider.")
            updated = replace(
                updated, location_ids=tuple(str(uuid.UUID(v)) for v in updated.location_ids)
            )
            removed = sorted(set(current.location_ids) - set(updated.location_ids))
            if removed:
                users = await store.templates_using_locations(conn, org.id, current.id, removed)
                if users:
                    raise FailedPrecondition(
                        "the provider still has templates, exceptions or overrides at a"
                        " location being removed; end or delete them first",
                        reasons=[
                            Reason("LOCATION_IN_USE", subject=f"schedule/{item}") for item in users
                        ],
                    )
            try:
                return await store.update_provider(conn, updated)
            except psycopg.errors.UniqueViolation as e:
                raise AlreadyExists(
                    "a provider with this NPI already exists in the organization",
                    reasons=[Reason("NPI_TAKEN", subject="provider.npi")],
                ) from e

    # -- resources

    async def create_resource(
        self, principal: Principal | None, organization_id: str, resource: ResourceRecord
    ) -> ResourceRecord:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            resource = replace(resource, id=str(uuid.uuid4()), organization_id=org.id)
            _validate_resource(resource, "resource.")
            location = parse_id(resource.location_id)
            if location is None or not await store.existing_ids(
                conn, "locations", org.id, [location]
            ):
                raise InvalidArgument.single("resource.location_id", "unknown location")
            self._check_location_scope(principal, org, [location])
            return await store.insert_resource(conn, replace(resource, location_id=location))

    async def get_resource(
        self, principal: Principal | None, organization_id: str, resource_id: str
    ) -> ResourceRecord:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            return await self._get(conn, org, "resources", resource_id, store.get_resource)

    async def list_resources(
        self,
        principal: Principal | None,
        organization_id: str,
        *,
        location_id: str,
        kind: str,
        include_inactive: bool,
        page_size: int,
        page_token: str,
    ) -> Page[ResourceRecord]:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            location = _filter_id(location_id, "location_id")
            return await _paged(
                "resources",
                [org.id, location, kind, str(include_inactive)],
                page_size,
                page_token,
                lambda after, limit: store.list_resources(
                    conn,
                    org.id,
                    location_id=location,
                    kind=kind,
                    include_inactive=include_inactive,
                    after=after,
                    limit=limit,
                ),
                lambda r: (r.location_id, r.display_name, r.id),
            )

    async def update_resource(
        self,
        principal: Principal | None,
        organization_id: str,
        resource_id: str,
        changes: Mapping[str, Any],
    ) -> ResourceRecord:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            current = await self._get(conn, org, "resources", resource_id, store.get_resource)
            self._check_location_scope(principal, org, [current.location_id])
            updated = _merge(current, changes, "resource.", ["location_id"])
            _validate_resource(updated, "resource.")
            return await store.update_resource(conn, updated)

    # -- visit types

    async def _validate_visit_type_locations(
        self, conn: Connection, org: OrganizationRecord, visit_type: VisitTypeRecord
    ) -> VisitTypeRecord:
        check = ViolationCollector()
        parsed = [parse_id(v) for v in visit_type.location_ids]
        known = await store.existing_ids(
            conn, "locations", org.id, [p for p in parsed if p is not None]
        )
        for i, loc in enumerate(parsed):
            check.check(loc in known, f"visit_type.location_ids[{i}]", "unknown location")
        check.raise_if_any()
        return replace(visit_type, location_ids=tuple(p for p in parsed if p is not None))

    async def create_visit_type(
        self, principal: Principal | None, organization_id: str, visit_type: VisitTypeRecord
    ) -> VisitTypeRecord:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            visit_type = replace(
                visit_type,
                id=str(uuid.uuid4()),
                organization_id=org.id,
                service_type_code=visit_type.service_type_code or "30",
            )
            _validate_visit_type(visit_type, org, "visit_type.")
            visit_type = await self._validate_visit_type_locations(conn, org, visit_type)
            return await store.insert_visit_type(conn, visit_type)

    async def get_visit_type(
        self, principal: Principal | None, organization_id: str, visit_type_id: str
    ) -> VisitTypeRecord:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            return await self._get(conn, org, "visit-types", visit_type_id, store.get_visit_type)

    async def list_visit_types(
        self,
        principal: Principal | None,
        organization_id: str,
        *,
        specialty: str,
        include_inactive: bool,
        page_size: int,
        page_token: str,
    ) -> Page[VisitTypeRecord]:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            return await _paged(
                "visit-types",
                [org.id, specialty, str(include_inactive)],
                page_size,
                page_token,
                lambda after, limit: store.list_visit_types(
                    conn,
                    org.id,
                    specialty=specialty,
                    include_inactive=include_inactive,
                    after=after,
                    limit=limit,
                ),
                lambda v: (v.specialty, v.display_name, v.id),
            )

    async def update_visit_type(
        self,
        principal: Principal | None,
        organization_id: str,
        visit_type_id: str,
        changes: Mapping[str, Any],
    ) -> VisitTypeRecord:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            current = await self._get(conn, org, "visit-types", visit_type_id, store.get_visit_type)
            updated = _merge(current, changes, "visit_type.")
            _validate_visit_type(updated, org, "visit_type.")
            updated = await self._validate_visit_type_locations(conn, org, updated)
            return await store.update_visit_type(conn, updated)

    # -- templates

    async def _check_template(
        self, conn: Connection, org: OrganizationRecord, template: TemplateRecord
    ) -> TemplateRecord:
        """Validate a template against the organisation and the provider's other templates."""
        _validate_template_shape(template, org, "template.")
        check = ViolationCollector()
        provider_id = parse_id(template.provider_id)
        provider = (
            None if provider_id is None else await store.get_provider(conn, org.id, provider_id)
        )
        check.check(provider is not None, "template.provider_id", "unknown provider")
        location_id = parse_id(template.location_id)
        if provider is not None:
            check.check(
                location_id in provider.location_ids,
                "template.location_id",
                "must be one of the provider's locations",
            )
        mentioned = {v for v in template.visit_type_ids} | {
            v for w in template.windows for v in w.visit_type_ids
        }
        parsed = {v: parse_id(v) for v in mentioned}
        known = await store.existing_ids(
            conn, "visit_types", org.id, [p for p in parsed.values() if p is not None]
        )
        for i, v in enumerate(template.visit_type_ids):
            check.check(parsed[v] in known, f"template.visit_type_ids[{i}]", "unknown visit type")
        for w_index, window in enumerate(template.windows):
            for i, v in enumerate(window.visit_type_ids):
                check.check(
                    parsed[v] in known,
                    f"template.windows[{w_index}].visit_type_ids[{i}]",
                    "unknown visit type",
                )
        check.raise_if_any()
        assert provider_id is not None
        assert location_id is not None
        template = replace(
            template,
            provider_id=provider_id,
            location_id=location_id,
            visit_type_ids=tuple(sorted({str(parsed[v]) for v in template.visit_type_ids})),
            windows=tuple(
                replace(w, visit_type_ids=tuple(sorted({str(parsed[v]) for v in w.visit_type_ids})))
                for w in template.windows
            ),
        )
        others = await store.list_templates(
            conn,
            org.id,
            provider_id=provider_id,
            location_id="",
            effective_on=None,
            after=None,
            limit=10_000,
        )
        clash = _first_overlap(template, [t for t in others if t.id != template.id])
        if clash is not None:
            other, window_index = clash
            raise FailedPrecondition(
                f"window {window_index} overlaps template {other.id} of the same provider"
                " on a date both apply",
                reasons=[
                    Reason(
                        "TEMPLATE_OVERLAP",
                        subject=f"templates/{other.id}",
                        description=f"template.windows[{window_index}] overlaps it",
                    )
                ],
            )
        return template

    async def create_template(
        self, principal: Principal | None, organization_id: str, template: TemplateRecord
    ) -> TemplateRecord:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            template = replace(template, id=str(uuid.uuid4()), organization_id=org.id)
            template = await self._check_template(conn, org, template)
            self._check_location_scope(principal, org, [template.location_id])
            stored = await store.insert_template(conn, template)
            await self._rematerialize(
                conn,
                org,
                [stored.provider_id],
                stored.effective_start_date,
                stored.effective_end_date or date.max,
                ChangeCause(ConflictCause.TEMPLATE_CHANGE, stored.id),
                principal,
            )
            return stored

    async def get_template(
        self, principal: Principal | None, organization_id: str, template_id: str
    ) -> TemplateRecord:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            return await self._get(conn, org, "templates", template_id, store.get_template)

    async def list_templates(
        self,
        principal: Principal | None,
        organization_id: str,
        *,
        provider_id: str,
        location_id: str,
        effective_on: date | None,
        page_size: int,
        page_token: str,
    ) -> Page[TemplateRecord]:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            provider = _filter_id(provider_id, "provider_id")
            location = _filter_id(location_id, "location_id")
            return await _paged(
                "templates",
                [org.id, provider, location, effective_on.isoformat() if effective_on else ""],
                page_size,
                page_token,
                lambda after, limit: store.list_templates(
                    conn,
                    org.id,
                    provider_id=provider,
                    location_id=location,
                    effective_on=effective_on,
                    after=after,
                    limit=limit,
                ),
                lambda t: (t.provider_id, t.effective_start_date.isoformat(), t.id),
            )

    async def update_template(
        self,
        principal: Principal | None,
        organization_id: str,
        template_id: str,
        changes: Mapping[str, Any],
    ) -> TemplateRecord:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            current = await self._get(conn, org, "templates", template_id, store.get_template)
            self._check_location_scope(principal, org, [current.location_id])
            updated = await self._check_template(
                conn, org, _merge(current, changes, "template.", ["provider_id", "location_id"])
            )
            stored = await store.update_template(conn, updated)
            # Both the old and the new dates: time the template no longer covers is blocked.
            first = min(current.effective_start_date, stored.effective_start_date)
            last = max(
                current.effective_end_date or date.max, stored.effective_end_date or date.max
            )
            await self._rematerialize(
                conn,
                org,
                [stored.provider_id],
                first,
                last,
                ChangeCause(ConflictCause.TEMPLATE_CHANGE, stored.id),
                principal,
            )
            return stored

    # -- exceptions

    async def create_exception(
        self, principal: Principal | None, organization_id: str, exception: ExceptionRecord
    ) -> tuple[ExceptionRecord, tuple[str, ...]]:
        """The stored exception and the ids of the conflicts it caused."""
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            exception = replace(exception, id=str(uuid.uuid4()), organization_id=org.id)
            exception = await self._check_exception(conn, org, exception)
            if exception.location_id is not None:
                self._check_location_scope(principal, org, [exception.location_id])
            stored = await store.insert_exception(conn, exception)
            stats = await self._rematerialize(
                conn,
                org,
                [stored.provider_id],
                stored.start_date,
                stored.end_date,
                ChangeCause(ConflictCause.EXCEPTION, stored.id),
                principal,
            )
            return stored, stats.conflict_ids

    async def _check_exception(
        self, conn: Connection, org: OrganizationRecord, exception: ExceptionRecord
    ) -> ExceptionRecord:
        check = ViolationCollector()
        check.check(
            exception.end_date >= exception.start_date,
            "exception.end_date",
            "must not be before start_date",
        )
        check.check(
            (exception.end_date - exception.start_date).days < 366,
            "exception.end_date",
            "must be within a year of start_date",
        )
        if exception.start_minute is not None and exception.end_minute is not None:
            _check_window(
                check,
                exception.start_minute,
                exception.end_minute,
                org.granule_minutes,
                "exception.time_window.start_time",
                "exception.time_window.end_time",
            )
        _check_description(check, exception.description, "exception.description")
        provider_id = parse_id(exception.provider_id)
        provider = (
            None if provider_id is None else await store.get_provider(conn, org.id, provider_id)
        )
        check.check(provider is not None, "exception.provider_id", "unknown provider")
        location_id = None
        if exception.location_id:
            location_id = parse_id(exception.location_id)
            if provider is not None:
                check.check(
                    location_id in provider.location_ids,
                    "exception.location_id",
                    "must be one of the provider's locations",
                )
        check.raise_if_any()
        assert provider_id is not None
        return replace(exception, provider_id=provider_id, location_id=location_id)

    async def get_exception(
        self, principal: Principal | None, organization_id: str, exception_id: str
    ) -> tuple[ExceptionRecord, tuple[str, ...]]:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            found = await self._get(conn, org, "exceptions", exception_id, store.get_exception)
            return found, await store.conflict_ids_for_cause(conn, org.id, found.id)

    async def list_exceptions(
        self,
        principal: Principal | None,
        organization_id: str,
        *,
        provider_id: str,
        start_date: date | None,
        end_date: date | None,
        page_size: int,
        page_token: str,
    ) -> Page[ExceptionRecord]:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            provider = _filter_id(provider_id, "provider_id")
            return await _paged(
                "exceptions",
                [org.id, provider, _iso(start_date), _iso(end_date)],
                page_size,
                page_token,
                lambda after, limit: store.list_exceptions(
                    conn,
                    org.id,
                    provider_id=provider,
                    start_date=start_date,
                    end_date=end_date,
                    after=after,
                    limit=limit,
                ),
                lambda e: (e.start_date.isoformat(), e.id),
            )

    async def conflicts_of(
        self, principal: Principal | None, organization_id: str, cause_ids: Sequence[str]
    ) -> dict[str, tuple[str, ...]]:
        """Conflict ids caused by each of `cause_ids` (exceptions or overrides)."""
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            return {
                cause_id: await store.conflict_ids_for_cause(conn, org.id, cause_id)
                for cause_id in cause_ids
            }

    async def delete_exception(
        self, principal: Principal | None, organization_id: str, exception_id: str
    ) -> None:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            found = await self._get(conn, org, "exceptions", exception_id, store.get_exception)
            if found.location_id is not None:
                self._check_location_scope(principal, org, [found.location_id])
            await store.delete_exception(conn, org.id, found.id)
            await self._rematerialize(
                conn,
                org,
                [found.provider_id],
                found.start_date,
                found.end_date,
                ChangeCause(ConflictCause.EXCEPTION, found.id, announce_freed=True),
                principal,
            )

    # -- overrides

    async def create_override(
        self, principal: Principal | None, organization_id: str, override: OverrideRecord
    ) -> tuple[OverrideRecord, tuple[str, ...]]:
        """The stored override and the ids of the conflicts it caused."""
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            override = replace(override, id=str(uuid.uuid4()), organization_id=org.id)
            override = await self._check_override(conn, org, override)
            self._check_location_scope(principal, org, [override.location_id])
            stored = await store.insert_override(conn, override)
            stats = await self._rematerialize(
                conn,
                org,
                [stored.provider_id],
                stored.day,
                stored.day,
                ChangeCause(
                    ConflictCause.OVERRIDE,
                    stored.id,
                    announce_freed=stored.kind is OverrideKind.ADD_HOURS,
                ),
                principal,
            )
            return stored, stats.conflict_ids

    async def _check_override(
        self, conn: Connection, org: OrganizationRecord, override: OverrideRecord
    ) -> OverrideRecord:
        check = ViolationCollector()
        today, horizon_end = self._today_and_horizon(org)
        check.check(
            today <= override.day <= horizon_end,
            "override.date",
            "must be today or later, within the organization's horizon",
        )
        _check_window(
            check,
            override.start_minute,
            override.end_minute,
            org.granule_minutes,
            "override.time_window.start_time",
            "override.time_window.end_time",
        )
        _check_description(check, override.description, "override.description")
        if override.kind is OverrideKind.ADD_HOURS:
            check.check(
                bool(override.visit_type_ids),
                "override.visit_type_ids",
                "must name at least one visit type for ADD_HOURS",
            )
        provider_id = parse_id(override.provider_id)
        provider = (
            None if provider_id is None else await store.get_provider(conn, org.id, provider_id)
        )
        check.check(provider is not None, "override.provider_id", "unknown provider")
        location_id = parse_id(override.location_id)
        if provider is not None:
            check.check(
                location_id in provider.location_ids,
                "override.location_id",
                "must be one of the provider's locations",
            )
        parsed = [parse_id(v) for v in override.visit_type_ids]
        known = await store.existing_ids(
            conn, "visit_types", org.id, [p for p in parsed if p is not None]
        )
        for i, v in enumerate(parsed):
            check.check(v in known, f"override.visit_type_ids[{i}]", "unknown visit type")
        check.raise_if_any()
        assert provider_id is not None
        assert location_id is not None
        return replace(
            override,
            provider_id=provider_id,
            location_id=location_id,
            visit_type_ids=tuple(sorted({p for p in parsed if p is not None})),
        )

    async def get_override(
        self, principal: Principal | None, organization_id: str, override_id: str
    ) -> tuple[OverrideRecord, tuple[str, ...]]:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            found = await self._get(conn, org, "overrides", override_id, store.get_override)
            return found, await store.conflict_ids_for_cause(conn, org.id, found.id)

    async def list_overrides(
        self,
        principal: Principal | None,
        organization_id: str,
        *,
        provider_id: str,
        start_date: date | None,
        end_date: date | None,
        page_size: int,
        page_token: str,
    ) -> Page[OverrideRecord]:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            provider = _filter_id(provider_id, "provider_id")
            return await _paged(
                "overrides",
                [org.id, provider, _iso(start_date), _iso(end_date)],
                page_size,
                page_token,
                lambda after, limit: store.list_overrides(
                    conn,
                    org.id,
                    provider_id=provider,
                    start_date=start_date,
                    end_date=end_date,
                    after=after,
                    limit=limit,
                ),
                lambda o: (o.day.isoformat(), o.id),
            )

    async def delete_override(
        self, principal: Principal | None, organization_id: str, override_id: str
    ) -> None:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            found = await self._get(conn, org, "overrides", override_id, store.get_override)
            self._check_location_scope(principal, org, [found.location_id])
            await store.delete_override(conn, org.id, found.id)
            await self._rematerialize(
                conn,
                org,
                [found.provider_id],
                found.day,
                found.day,
                ChangeCause(
                    ConflictCause.OVERRIDE,
                    found.id,
                    announce_freed=found.kind is not OverrideKind.ADD_HOURS,
                ),
                principal,
            )

    # -- conflicts

    async def get_conflict(
        self, principal: Principal | None, organization_id: str, conflict_id: str
    ) -> ConflictRecord:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            return await self._get(conn, org, "conflicts", conflict_id, store.get_conflict)

    async def list_conflicts(
        self,
        principal: Principal | None,
        organization_id: str,
        *,
        provider_id: str,
        state: ConflictState,
        page_size: int,
        page_token: str,
    ) -> Page[ConflictRecord]:
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            provider = _filter_id(provider_id, "provider_id")
            return await _paged(
                "conflicts",
                [org.id, provider, state.value],
                page_size,
                page_token,
                lambda after, limit: store.list_conflicts(
                    conn, org.id, provider_id=provider, state=state, after=after, limit=limit
                ),
                lambda c: (c.start_time.isoformat(), c.id),
            )

    # -- materialization

    async def materialize(
        self,
        principal: Principal | None,
        organization_id: str,
        *,
        provider_ids: Sequence[str],
        start_date: date | None,
        end_date: date | None,
    ) -> MaterializeStats:
        """Materialize some or all active providers over some or all of the horizon.

        Runs in batches, each its own transaction (see `materializer.materialize_organization`).
        """
        async with transaction(self._pool) as conn:
            org = await self._organization(conn, principal, organization_id)
            today, horizon_end = self._today_and_horizon(org)
            check = ViolationCollector()
            first, last = start_date or today, end_date or horizon_end
            check.check(first <= last, "end_date", "must not be before start_date")
            check.check(last <= horizon_end, "end_date", "must be within the horizon")
            parsed = [parse_id(p) for p in provider_ids]
            known = await store.existing_ids(
                conn, "providers", org.id, [p for p in parsed if p is not None]
            )
            for i, p in enumerate(parsed):
                check.check(p in known, f"provider_ids[{i}]", "unknown provider")
            check.raise_if_any()
        return await materialize_organization(
            self._pool,
            org.id,
            provider_ids=[p for p in parsed if p is not None] if provider_ids else None,
            first=first,
            last=last,
            now=self._clock(),
            context=_context(principal),
        )


# ---------------------------------------------------------------- pure helpers


def _context(principal: Principal | None) -> EventContext:
    if principal is None:
        return EventContext()
    return EventContext(role=principal.role, actor_id=principal.subject)


def _iso(value: date | None) -> str:
    return value.isoformat() if value else ""


def _filter_id(value: str, path: str) -> str:
    """A list filter id: empty for none, otherwise a valid id."""
    if not value:
        return ""
    canonical = parse_id(value)
    if canonical is None:
        raise InvalidArgument.single(path, "must be an id this service issued")
    return canonical


def _already_exists(collection: str, item_id: str) -> AlreadyExists:
    return AlreadyExists(
        f"{collection} {item_id} already exists",
        reasons=[Reason("ALREADY_EXISTS", subject=f"{collection}/{item_id}")],
    )


_NEVER_CHANGED = ("id", "organization_id", "create_time", "update_time")


def _merge(current: T, changes: Mapping[str, Any], prefix: str, immutable: Sequence[str] = ()) -> T:
    """`current` with the attributes in `changes` replaced (an update mask's fields).

    Ids, timestamps and the record's `immutable` attributes cannot be changed.
    """
    check = ViolationCollector()
    for name in (*_NEVER_CHANGED, *immutable):
        check.check(name not in changes, f"{prefix}{name}", "cannot be changed")
    check.raise_if_any()
    return replace(current, **changes)  # type: ignore[type-var]


def _validate_organization(org: OrganizationRecord, prefix: str) -> None:
    check = ViolationCollector()
    _check_name(check, org.display_name, f"{prefix}display_name")
    check.check(
        org.granule_minutes in GRANULE_CHOICES,
        f"{prefix}granule_minutes",
        "must be one of 5, 10, 15, 20, 30 or 60",
    )
    check.check(1 <= org.horizon_days <= 400, f"{prefix}horizon_days", "must be 1 to 400")
    check.check(_is_zone(org.time_zone), f"{prefix}time_zone", "must be an IANA time zone name")
    check.raise_if_any()


def _validate_location(loc: LocationRecord, prefix: str) -> None:
    check = ViolationCollector()
    _check_name(check, loc.display_name, f"{prefix}display_name")
    check.check(
        math.isfinite(loc.latitude) and -90 <= loc.latitude <= 90,
        f"{prefix}coordinates.latitude",
        "must be between -90 and 90 degrees",
    )
    check.check(
        math.isfinite(loc.longitude) and -180 <= loc.longitude <= 180,
        f"{prefix}coordinates.longitude",
        "must be between -180 and 180 degrees",
    )
    check.check(
        not (loc.latitude == 0 and loc.longitude == 0),
        f"{prefix}coordinates",
        "is required (0,0 is not a clinic)",
    )
    check.check(_is_zone(loc.time_zone), f"{prefix}time_zone", "must be an IANA time zone name")
    check.check(
        not loc.address.region_code or len(loc.address.region_code) == 2,
        f"{prefix}address.region_code",
        "must be an ISO 3166-1 alpha-2 code",
    )
    check.raise_if_any()


def _validate_plan(plan: InsurancePlanRecord, prefix: str) -> None:
    check = ViolationCollector()
    check.check(
        bool(_CODE.fullmatch(plan.plan_id)), f"{prefix}plan_id", "must be a lower snake case code"
    )
    _check_name(check, plan.display_name, f"{prefix}display_name")
    check.check(bool(plan.payer_id.strip()), f"{prefix}payer_id", "must not be empty")
    check.raise_if_any()


def _validate_provider(provider: ProviderRecord, prefix: str) -> None:
    check = ViolationCollector()
    _check_name(check, provider.display_name, f"{prefix}display_name")
    check.check(
        not provider.npi or _npi_valid(provider.npi),
        f"{prefix}npi",
        "must be 10 digits with a valid check digit",
    )
    check.check(bool(provider.specialties), f"{prefix}specialties", "must name a specialty")
    _check_codes(check, provider.specialties, f"{prefix}specialties")
    for i, language in enumerate(provider.languages):
        check.check(
            bool(_LANGUAGE.fullmatch(language)),
            f"{prefix}languages[{i}]",
            "must be a BCP 47 language tag",
        )
    check.check(bool(provider.location_ids), f"{prefix}location_ids", "must name a location")
    check.check(
        len(set(provider.location_ids)) == len(provider.location_ids),
        f"{prefix}location_ids",
        "must not repeat a location",
    )
    check.check(
        len(set(provider.accepted_plan_ids)) == len(provider.accepted_plan_ids),
        f"{prefix}accepted_plan_ids",
        "must not repeat a plan",
    )
    check.raise_if_any()


def _validate_resource(resource: ResourceRecord, prefix: str) -> None:
    check = ViolationCollector()
    _check_name(check, resource.display_name, f"{prefix}display_name")
    check.check(
        bool(_CODE.fullmatch(resource.kind)), f"{prefix}kind", "must be a lower snake case code"
    )
    check.raise_if_any()


def _validate_visit_type(vt: VisitTypeRecord, org: OrganizationRecord, prefix: str) -> None:
    check = ViolationCollector()
    _check_name(check, vt.display_name, f"{prefix}display_name")
    check.check(
        bool(_CODE.fullmatch(vt.specialty)),
        f"{prefix}specialty",
        "must be a lower snake case code",
    )
    check.check(
        1 <= vt.duration_granules <= 32, f"{prefix}duration_granules", "must be 1 to 32 granules"
    )
    kinds = [n.kind for n in vt.resource_needs]
    for i, need in enumerate(vt.resource_needs):
        check.check(
            bool(_CODE.fullmatch(need.kind)),
            f"{prefix}resource_needs[{i}].kind",
            "must be a lower snake case code",
        )
        check.check(1 <= need.count <= 16, f"{prefix}resource_needs[{i}].count", "must be 1 to 16")
    check.check(
        len(set(kinds)) == len(kinds),
        f"{prefix}resource_needs",
        "must name each kind once (use count for several)",
    )
    check.check(
        vt.minimum_notice_seconds >= 0,
        f"{prefix}booking_window.minimum_notice",
        "must not be negative",
    )
    check.check(
        0 <= vt.maximum_days_ahead <= org.horizon_days,
        f"{prefix}booking_window.maximum_days_ahead",
        "must be within the organization's horizon",
    )
    check.check(
        bool(re.fullmatch(r"[A-Z0-9]{1,2}", vt.service_type_code)),
        f"{prefix}service_type_code",
        "must be an X12 service type code",
    )
    check.raise_if_any()


def _validate_template_shape(
    template: TemplateRecord, org: OrganizationRecord, prefix: str
) -> None:
    check = ViolationCollector()
    check.check(
        template.effective_end_date is None
        or template.effective_end_date >= template.effective_start_date,
        f"{prefix}effective_end_date",
        "must not be before effective_start_date",
    )
    check.check(1 <= template.week_interval <= 52, f"{prefix}week_interval", "must be 1 to 52")
    check.check(bool(template.windows), f"{prefix}windows", "must have at least one window")
    for i, window in enumerate(template.windows):
        path = f"{prefix}windows[{i}]"
        check.check(1 <= window.day_of_week <= 7, f"{path}.day_of_week", "must be set")
        _check_window(
            check,
            window.start_minute,
            window.end_minute,
            org.granule_minutes,
            f"{path}.start_time",
            f"{path}.end_time",
        )
        check.check(
            bool(window.visit_type_ids or template.visit_type_ids),
            f"{path}.visit_type_ids",
            "must offer a visit type (here or in the template's visit_type_ids)",
        )
        for j in range(i):
            other = template.windows[j]
            if other.day_of_week == window.day_of_week and _minutes_overlap(other, window):
                check.add(path, f"overlaps windows[{j}] on the same day")
    check.raise_if_any()


def _minutes_overlap(a: TemplateWindow, b: TemplateWindow) -> bool:
    return a.start_minute < b.end_minute and b.start_minute < a.end_minute


def _applies(template: TemplateRecord, window: TemplateWindow, day: date) -> bool:
    if day.isoweekday() != window.day_of_week:
        return False
    if day < template.effective_start_date:
        return False
    if template.effective_end_date is not None and day > template.effective_end_date:
        return False
    anchor = template.effective_start_date - timedelta(days=template.effective_start_date.weekday())
    weeks = ((day - timedelta(days=day.weekday())) - anchor).days // 7
    return weeks % template.week_interval == 0


def _first_overlap(
    template: TemplateRecord, others: Sequence[TemplateRecord]
) -> tuple[TemplateRecord, int] | None:
    """The first other template with a window overlapping one of `template`'s on a date both
    apply, and that window's index; None if there is none.

    Two every-n-weeks patterns repeat together after lcm(n, m) weeks, so checking that many
    weeks from the first common date is exhaustive.
    """
    for other in others:
        first = max(template.effective_start_date, other.effective_start_date)
        last = min(template.effective_end_date or date.max, other.effective_end_date or date.max)
        if first > last:
            continue
        weeks = math.lcm(template.week_interval, other.week_interval) + 1
        last = min(last, first + timedelta(weeks=weeks))
        for index, window in enumerate(template.windows):
            for theirs in other.windows:
                if theirs.day_of_week != window.day_of_week or not _minutes_overlap(window, theirs):
                    continue
                day = first + timedelta(days=(window.day_of_week - 1 - first.weekday()) % 7)
                while day <= last:
                    if _applies(template, window, day) and _applies(other, theirs, day):
                        return other, index
                    day += timedelta(days=7)
    return None
