"""SQL for the schedule administration records (schema `availability`), rows <-> records.

Every function takes an open connection and runs inside the caller's transaction; none
commits. Every query names the organisation, so a caller holding another tenant's id finds
nothing. Ids travel as UUID text and are cast in SQL; callers validate them first
(`admin_service.parse_id`), so a malformed id never reaches the database.

List functions page by keyset: `after` is the sort key of the last row of the previous page
(as text, in the order the list is sorted by) and `limit` the number of rows wanted.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from psycopg import sql

from availability_svc import domain
from availability_svc.admin_model import (
    Address,
    ConflictCause,
    ConflictRecord,
    ConflictState,
    ExceptionKind,
    ExceptionRecord,
    InsurancePlanRecord,
    LocationRecord,
    OrganizationRecord,
    OverrideKind,
    OverrideRecord,
    ProviderRecord,
    ResourceCategory,
    ResourceNeedSpec,
    ResourceRecord,
    TemplateRecord,
    TemplateWindow,
    VisitTypeRecord,
)
from common.db import Connection

__all__ = [
    "ProviderInputs",
    "active_provider_ids",
    "conflict_ids_for_cause",
    "delete_exception",
    "delete_override",
    "existing_ids",
    "existing_plan_ids",
    "get_conflict",
    "get_exception",
    "get_location",
    "get_organization",
    "get_override",
    "get_plan",
    "get_provider",
    "get_resource",
    "get_template",
    "get_visit_type",
    "insert_exception",
    "insert_location",
    "insert_organization",
    "insert_override",
    "insert_plan",
    "insert_provider",
    "insert_resource",
    "insert_template",
    "insert_visit_type",
    "list_conflicts",
    "list_exceptions",
    "list_locations",
    "list_organization_ids",
    "list_organizations",
    "list_overrides",
    "list_plans",
    "list_providers",
    "list_resources",
    "list_templates",
    "list_visit_types",
    "load_locations",
    "load_provider_inputs",
    "organization_counts",
    "organization_of_provider",
    "providers_at_location",
    "templates_using_locations",
    "update_location",
    "update_organization",
    "update_plan",
    "update_provider",
    "update_resource",
    "update_template",
    "update_visit_type",
]


def _id(value: Any) -> str:
    return str(value)


def _opt_id(value: Any) -> str | None:
    return None if value is None else str(value)


def _ids(values: Sequence[Any] | None) -> tuple[str, ...]:
    return tuple(str(v) for v in values or ())


async def _one(conn: Connection, query: str, params: Sequence[Any] | dict[str, Any]) -> Any:
    cursor = await conn.execute(query, params)
    return await cursor.fetchone()


async def _all(conn: Connection, query: str, params: Sequence[Any] | dict[str, Any]) -> list[Any]:
    cursor = await conn.execute(query, params)
    return await cursor.fetchall()


async def existing_ids(
    conn: Connection, table: str, organization_id: str, ids: Sequence[str]
) -> set[str]:
    """Which of `ids` exist in `table` (one of the id-keyed tables) for the organisation."""
    if table not in _ID_TABLES:
        raise ValueError(f"not an id-keyed table: {table}")
    query = sql.SQL(
        "SELECT id FROM availability.{} WHERE organization_id = %s::uuid AND id = ANY(%s::uuid[])"
    ).format(sql.Identifier(table))
    cursor = await conn.execute(query, (organization_id, list(ids)))
    return {str(row[0]) for row in await cursor.fetchall()}


_ID_TABLES = frozenset({"locations", "providers", "resources", "visit_types", "schedule_templates"})


# ---------------------------------------------------------------- organizations

_ORG_COLUMNS = (
    "id, display_name, granule_minutes, horizon_days, time_zone, active, created_at, updated_at"
)


def _organization(row: Any) -> OrganizationRecord:
    return OrganizationRecord(
        id=_id(row[0]),
        display_name=row[1],
        granule_minutes=row[2],
        horizon_days=row[3],
        time_zone=row[4],
        active=row[5],
        create_time=row[6],
        update_time=row[7],
    )


async def insert_organization(conn: Connection, org: OrganizationRecord) -> OrganizationRecord:
    row = await _one(
        conn,
        "INSERT INTO availability.organizations"
        " (id, display_name, granule_minutes, horizon_days, time_zone, active)"
        " VALUES (%s::uuid, %s, %s, %s, %s, %s)"
        f" RETURNING {_ORG_COLUMNS}",
        (
            org.id,
            org.display_name,
            org.granule_minutes,
            org.horizon_days,
            org.time_zone,
            org.active,
        ),
    )
    return _organization(row)


async def get_organization(conn: Connection, organization_id: str) -> OrganizationRecord | None:
    row = await _one(
        conn,
        f"SELECT {_ORG_COLUMNS} FROM availability.organizations WHERE id = %s::uuid",
        (organization_id,),
    )
    return None if row is None else _organization(row)


async def list_organizations(
    conn: Connection,
    *,
    only_ids: frozenset[str] | None,
    after: tuple[str, ...] | None,
    limit: int,
) -> list[OrganizationRecord]:
    """Organisations ordered by (display_name, id); `only_ids` None means all of them."""
    rows = await _all(
        conn,
        f"SELECT {_ORG_COLUMNS} FROM availability.organizations"
        " WHERE (%(all)s OR id = ANY(%(ids)s::uuid[]))"
        " AND (%(after_name)s::text IS NULL"
        "      OR (display_name, id) > (%(after_name)s, %(after_id)s::uuid))"
        " ORDER BY display_name, id LIMIT %(limit)s",
        {
            "all": only_ids is None,
            "ids": sorted(only_ids or ()),
            "after_name": after[0] if after else None,
            "after_id": after[1] if after else None,
            "limit": limit,
        },
    )
    return [_organization(row) for row in rows]


async def list_organization_ids(conn: Connection, *, active_only: bool = True) -> list[str]:
    rows = await _all(
        conn,
        "SELECT id FROM availability.organizations WHERE active OR NOT %s ORDER BY id",
        (active_only,),
    )
    return [_id(row[0]) for row in rows]


async def update_organization(conn: Connection, org: OrganizationRecord) -> OrganizationRecord:
    row = await _one(
        conn,
        "UPDATE availability.organizations SET display_name = %s, horizon_days = %s,"
        " time_zone = %s, active = %s, updated_at = now() WHERE id = %s::uuid"
        f" RETURNING {_ORG_COLUMNS}",
        (org.display_name, org.horizon_days, org.time_zone, org.active, org.id),
    )
    return _organization(row)


# ---------------------------------------------------------------- locations

_LOCATION_COLUMNS = (
    "id, organization_id, display_name, address_lines, locality, administrative_area,"
    " postal_code, region_code, latitude, longitude, time_zone, active, created_at, updated_at"
)


def _location(row: Any) -> LocationRecord:
    return LocationRecord(
        id=_id(row[0]),
        organization_id=_id(row[1]),
        display_name=row[2],
        address=Address(
            address_lines=tuple(row[3]),
            locality=row[4],
            administrative_area=row[5],
            postal_code=row[6],
            region_code=row[7],
        ),
        latitude=row[8],
        longitude=row[9],
        time_zone=row[10],
        active=row[11],
        create_time=row[12],
        update_time=row[13],
    )


def _location_params(loc: LocationRecord) -> dict[str, Any]:
    return {
        "id": loc.id,
        "org": loc.organization_id,
        "name": loc.display_name,
        "lines": list(loc.address.address_lines),
        "locality": loc.address.locality,
        "area": loc.address.administrative_area,
        "postal": loc.address.postal_code,
        "region": loc.address.region_code,
        "lat": loc.latitude,
        "lon": loc.longitude,
        "tz": loc.time_zone,
        "active": loc.active,
    }


async def insert_location(conn: Connection, loc: LocationRecord) -> LocationRecord:
    row = await _one(
        conn,
        "INSERT INTO availability.locations (id, organization_id, display_name, address_lines,"
        " locality, administrative_area, postal_code, region_code, latitude, longitude,"
        " time_zone, active) VALUES (%(id)s::uuid, %(org)s::uuid, %(name)s, %(lines)s,"
        " %(locality)s, %(area)s, %(postal)s, %(region)s, %(lat)s, %(lon)s, %(tz)s, %(active)s)"
        f" RETURNING {_LOCATION_COLUMNS}",
        _location_params(loc),
    )
    return _location(row)


async def get_location(
    conn: Connection, organization_id: str, location_id: str
) -> LocationRecord | None:
    row = await _one(
        conn,
        f"SELECT {_LOCATION_COLUMNS} FROM availability.locations"
        " WHERE organization_id = %s::uuid AND id = %s::uuid",
        (organization_id, location_id),
    )
    return None if row is None else _location(row)


async def load_locations(conn: Connection, organization_id: str) -> dict[str, LocationRecord]:
    """Every location of the organisation, by id."""
    rows = await _all(
        conn,
        f"SELECT {_LOCATION_COLUMNS} FROM availability.locations WHERE organization_id = %s::uuid",
        (organization_id,),
    )
    return {record.id: record for record in map(_location, rows)}


async def list_locations(
    conn: Connection,
    organization_id: str,
    *,
    include_inactive: bool,
    after: tuple[str, ...] | None,
    limit: int,
) -> list[LocationRecord]:
    rows = await _all(
        conn,
        f"SELECT {_LOCATION_COLUMNS} FROM availability.locations"
        " WHERE organization_id = %(org)s::uuid AND (active OR %(inactive)s)"
        " AND (%(after_name)s::text IS NULL"
        "      OR (display_name, id) > (%(after_name)s, %(after_id)s::uuid))"
        " ORDER BY display_name, id LIMIT %(limit)s",
        {
            "org": organization_id,
            "inactive": include_inactive,
            "after_name": after[0] if after else None,
            "after_id": after[1] if after else None,
            "limit": limit,
        },
    )
    return [_location(row) for row in rows]


async def update_location(conn: Connection, loc: LocationRecord) -> LocationRecord:
    row = await _one(
        conn,
        "UPDATE availability.locations SET display_name = %(name)s, address_lines = %(lines)s,"
        " locality = %(locality)s, administrative_area = %(area)s, postal_code = %(postal)s,"
        " region_code = %(region)s, latitude = %(lat)s, longitude = %(lon)s, time_zone = %(tz)s,"
        " active = %(active)s, updated_at = now()"
        " WHERE organization_id = %(org)s::uuid AND id = %(id)s::uuid"
        f" RETURNING {_LOCATION_COLUMNS}",
        _location_params(loc),
    )
    return _location(row)


async def providers_at_location(
    conn: Connection, organization_id: str, location_id: str
) -> list[str]:
    rows = await _all(
        conn,
        "SELECT provider_id FROM availability.provider_locations"
        " WHERE organization_id = %s::uuid AND location_id = %s::uuid ORDER BY provider_id",
        (organization_id, location_id),
    )
    return [_id(row[0]) for row in rows]


# ---------------------------------------------------------------- providers

_PROVIDER_COLUMNS = (
    "p.id, p.organization_id, p.display_name, p.npi, p.specialties, p.languages,"
    " ARRAY(SELECT pp.plan_id FROM availability.provider_plans pp"
    "       WHERE pp.provider_id = p.id ORDER BY pp.plan_id),"
    " ARRAY(SELECT pl.location_id FROM availability.provider_locations pl"
    "       WHERE pl.provider_id = p.id ORDER BY pl.location_id),"
    " p.accepting_new_patients, p.active, p.created_at, p.updated_at"
)


def _provider(row: Any) -> ProviderRecord:
    return ProviderRecord(
        id=_id(row[0]),
        organization_id=_id(row[1]),
        display_name=row[2],
        npi=row[3] or "",
        specialties=tuple(row[4]),
        languages=tuple(row[5]),
        accepted_plan_ids=tuple(row[6]),
        location_ids=_ids(row[7]),
        accepting_new_patients=row[8],
        active=row[9],
        create_time=row[10],
        update_time=row[11],
    )


async def _replace_provider_links(conn: Connection, provider: ProviderRecord) -> None:
    await conn.execute(
        "DELETE FROM availability.provider_plans WHERE provider_id = %s::uuid"
        " AND NOT (plan_id = ANY(%s::text[]))",
        (provider.id, list(provider.accepted_plan_ids)),
    )
    await conn.execute(
        "INSERT INTO availability.provider_plans (organization_id, provider_id, plan_id)"
        " SELECT %s::uuid, %s::uuid, plan FROM unnest(%s::text[]) AS plan"
        " ON CONFLICT DO NOTHING",
        (provider.organization_id, provider.id, list(provider.accepted_plan_ids)),
    )
    # Removing a location that templates still name fails on their foreign key; the service
    # checks first so the caller gets FAILED_PRECONDITION naming the templates.
    await conn.execute(
        "DELETE FROM availability.provider_locations WHERE provider_id = %s::uuid"
        " AND NOT (location_id = ANY(%s::uuid[]))",
        (provider.id, list(provider.location_ids)),
    )
    await conn.execute(
        "INSERT INTO availability.provider_locations (organization_id, provider_id, location_id)"
        " SELECT %s::uuid, %s::uuid, loc FROM unnest(%s::uuid[]) AS loc"
        " ON CONFLICT DO NOTHING",
        (provider.organization_id, provider.id, list(provider.location_ids)),
    )


async def insert_provider(conn: Connection, provider: ProviderRecord) -> ProviderRecord:
    await conn.execute(
        "INSERT INTO availability.providers (id, organization_id, display_name, npi,"
        " specialties, languages, accepting_new_patients, active)"
        " VALUES (%s::uuid, %s::uuid, %s, %s, %s, %s, %s, %s)",
        (
            provider.id,
            provider.organization_id,
            provider.display_name,
            provider.npi or None,
            list(provider.specialties),
            list(provider.languages),
            provider.accepting_new_patients,
            provider.active,
        ),
    )
    await _replace_provider_links(conn, provider)
    stored = await get_provider(conn, provider.organization_id, provider.id)
    assert stored is not None
    return stored


async def update_provider(conn: Connection, provider: ProviderRecord) -> ProviderRecord:
    await conn.execute(
        "UPDATE availability.providers SET display_name = %s, npi = %s, specialties = %s,"
        " languages = %s, accepting_new_patients = %s, active = %s, updated_at = now()"
        " WHERE organization_id = %s::uuid AND id = %s::uuid",
        (
            provider.display_name,
            provider.npi or None,
            list(provider.specialties),
            list(provider.languages),
            provider.accepting_new_patients,
            provider.active,
            provider.organization_id,
            provider.id,
        ),
    )
    await _replace_provider_links(conn, provider)
    stored = await get_provider(conn, provider.organization_id, provider.id)
    assert stored is not None
    return stored


async def get_provider(
    conn: Connection, organization_id: str, provider_id: str
) -> ProviderRecord | None:
    row = await _one(
        conn,
        f"SELECT {_PROVIDER_COLUMNS} FROM availability.providers p"
        " WHERE p.organization_id = %s::uuid AND p.id = %s::uuid",
        (organization_id, provider_id),
    )
    return None if row is None else _provider(row)


async def list_providers(
    conn: Connection,
    organization_id: str,
    *,
    specialty: str,
    location_id: str,
    include_inactive: bool,
    after: tuple[str, ...] | None,
    limit: int,
) -> list[ProviderRecord]:
    rows = await _all(
        conn,
        f"SELECT {_PROVIDER_COLUMNS} FROM availability.providers p"
        " WHERE p.organization_id = %(org)s::uuid AND (p.active OR %(inactive)s)"
        " AND (%(specialty)s = '' OR %(specialty)s = ANY(p.specialties))"
        " AND (%(location)s::uuid IS NULL OR EXISTS (SELECT 1 FROM availability.provider_locations"
        "      pl WHERE pl.provider_id = p.id AND pl.location_id = %(location)s::uuid))"
        " AND (%(after_name)s::text IS NULL"
        "      OR (p.display_name, p.id) > (%(after_name)s, %(after_id)s::uuid))"
        " ORDER BY p.display_name, p.id LIMIT %(limit)s",
        {
            "org": organization_id,
            "inactive": include_inactive,
            "specialty": specialty,
            "location": location_id or None,
            "after_name": after[0] if after else None,
            "after_id": after[1] if after else None,
            "limit": limit,
        },
    )
    return [_provider(row) for row in rows]


async def active_provider_ids(conn: Connection, organization_id: str) -> list[str]:
    """Ids of the organisation's active providers, in id order (the materialization order)."""
    rows = await _all(
        conn,
        "SELECT id FROM availability.providers WHERE organization_id = %s::uuid AND active"
        " ORDER BY id",
        (organization_id,),
    )
    return [_id(row[0]) for row in rows]


async def organization_of_provider(conn: Connection, provider_id: str) -> str | None:
    """The organisation a provider belongs to (operator tools; requests name it themselves)."""
    row = await _one(
        conn,
        "SELECT organization_id FROM availability.providers WHERE id = %s::uuid",
        (provider_id,),
    )
    return None if row is None else _id(row[0])


async def organization_counts(conn: Connection, organization_id: str) -> dict[str, int]:
    """How many locations, providers, plans, visit types, resources and templates it has."""
    row = await _one(
        conn,
        "SELECT (SELECT count(*) FROM availability.locations WHERE organization_id = %(o)s),"
        " (SELECT count(*) FROM availability.providers WHERE organization_id = %(o)s),"
        " (SELECT count(*) FROM availability.insurance_plans WHERE organization_id = %(o)s),"
        " (SELECT count(*) FROM availability.visit_types WHERE organization_id = %(o)s),"
        " (SELECT count(*) FROM availability.resources WHERE organization_id = %(o)s),"
        " (SELECT count(*) FROM availability.schedule_templates WHERE organization_id = %(o)s)",
        {"o": organization_id},
    )
    names = ("locations", "providers", "plans", "visit_types", "resources", "templates")
    return dict(zip(names, (int(v) for v in row), strict=True))


async def templates_using_locations(
    conn: Connection, organization_id: str, provider_id: str, location_ids: Sequence[str]
) -> list[str]:
    """Ids of the provider's templates, exceptions or overrides at any of `location_ids`."""
    rows = await _all(
        conn,
        "SELECT id FROM availability.schedule_templates WHERE organization_id = %(org)s::uuid"
        " AND provider_id = %(p)s::uuid AND location_id = ANY(%(locs)s::uuid[])"
        " UNION ALL SELECT id FROM availability.schedule_exceptions"
        " WHERE organization_id = %(org)s::uuid AND provider_id = %(p)s::uuid"
        " AND location_id = ANY(%(locs)s::uuid[])"
        " UNION ALL SELECT id FROM availability.schedule_overrides"
        " WHERE organization_id = %(org)s::uuid AND provider_id = %(p)s::uuid"
        " AND location_id = ANY(%(locs)s::uuid[]) ORDER BY 1",
        {"org": organization_id, "p": provider_id, "locs": list(location_ids)},
    )
    return [_id(row[0]) for row in rows]


# ---------------------------------------------------------------- insurance plans

_PLAN_COLUMNS = "plan_id, organization_id, display_name, payer_id, active, created_at, updated_at"


def _plan(row: Any) -> InsurancePlanRecord:
    return InsurancePlanRecord(
        plan_id=row[0],
        organization_id=_id(row[1]),
        display_name=row[2],
        payer_id=row[3],
        active=row[4],
        create_time=row[5],
        update_time=row[6],
    )


async def insert_plan(conn: Connection, plan: InsurancePlanRecord) -> InsurancePlanRecord:
    row = await _one(
        conn,
        "INSERT INTO availability.insurance_plans"
        " (organization_id, plan_id, display_name, payer_id, active)"
        f" VALUES (%s::uuid, %s, %s, %s, %s) RETURNING {_PLAN_COLUMNS}",
        (plan.organization_id, plan.plan_id, plan.display_name, plan.payer_id, plan.active),
    )
    return _plan(row)


async def get_plan(
    conn: Connection, organization_id: str, plan_id: str
) -> InsurancePlanRecord | None:
    row = await _one(
        conn,
        f"SELECT {_PLAN_COLUMNS} FROM availability.insurance_plans"
        " WHERE organization_id = %s::uuid AND plan_id = %s",
        (organization_id, plan_id),
    )
    return None if row is None else _plan(row)


async def existing_plan_ids(
    conn: Connection, organization_id: str, plan_ids: Sequence[str]
) -> set[str]:
    rows = await _all(
        conn,
        "SELECT plan_id FROM availability.insurance_plans"
        " WHERE organization_id = %s::uuid AND plan_id = ANY(%s::text[])",
        (organization_id, list(plan_ids)),
    )
    return {row[0] for row in rows}


async def list_plans(
    conn: Connection,
    organization_id: str,
    *,
    include_inactive: bool,
    after: tuple[str, ...] | None,
    limit: int,
) -> list[InsurancePlanRecord]:
    rows = await _all(
        conn,
        f"SELECT {_PLAN_COLUMNS} FROM availability.insurance_plans"
        " WHERE organization_id = %(org)s::uuid AND (active OR %(inactive)s)"
        " AND (%(after)s::text IS NULL OR plan_id > %(after)s)"
        " ORDER BY plan_id LIMIT %(limit)s",
        {
            "org": organization_id,
            "inactive": include_inactive,
            "after": after[0] if after else None,
            "limit": limit,
        },
    )
    return [_plan(row) for row in rows]


async def update_plan(conn: Connection, plan: InsurancePlanRecord) -> InsurancePlanRecord:
    row = await _one(
        conn,
        "UPDATE availability.insurance_plans SET display_name = %s, payer_id = %s, active = %s,"
        " updated_at = now() WHERE organization_id = %s::uuid AND plan_id = %s"
        f" RETURNING {_PLAN_COLUMNS}",
        (plan.display_name, plan.payer_id, plan.active, plan.organization_id, plan.plan_id),
    )
    return _plan(row)


# ---------------------------------------------------------------- resources

_RESOURCE_COLUMNS = (
    "id, organization_id, location_id, display_name, category, kind, active, created_at, updated_at"
)


def _resource(row: Any) -> ResourceRecord:
    return ResourceRecord(
        id=_id(row[0]),
        organization_id=_id(row[1]),
        location_id=_id(row[2]),
        display_name=row[3],
        category=ResourceCategory(row[4]),
        kind=row[5],
        active=row[6],
        create_time=row[7],
        update_time=row[8],
    )


async def insert_resource(conn: Connection, res: ResourceRecord) -> ResourceRecord:
    row = await _one(
        conn,
        "INSERT INTO availability.resources"
        " (id, organization_id, location_id, display_name, category, kind, active)"
        " VALUES (%s::uuid, %s::uuid, %s::uuid, %s, %s, %s, %s)"
        f" RETURNING {_RESOURCE_COLUMNS}",
        (
            res.id,
            res.organization_id,
            res.location_id,
            res.display_name,
            res.category.value,
            res.kind,
            res.active,
        ),
    )
    return _resource(row)


async def get_resource(
    conn: Connection, organization_id: str, resource_id: str
) -> ResourceRecord | None:
    row = await _one(
        conn,
        f"SELECT {_RESOURCE_COLUMNS} FROM availability.resources"
        " WHERE organization_id = %s::uuid AND id = %s::uuid",
        (organization_id, resource_id),
    )
    return None if row is None else _resource(row)


async def list_resources(
    conn: Connection,
    organization_id: str,
    *,
    location_id: str,
    kind: str,
    include_inactive: bool,
    after: tuple[str, ...] | None,
    limit: int,
) -> list[ResourceRecord]:
    rows = await _all(
        conn,
        f"SELECT {_RESOURCE_COLUMNS} FROM availability.resources"
        " WHERE organization_id = %(org)s::uuid AND (active OR %(inactive)s)"
        " AND (%(location)s::uuid IS NULL OR location_id = %(location)s::uuid)"
        " AND (%(kind)s = '' OR kind = %(kind)s)"
        " AND (%(after_loc)s::uuid IS NULL OR (location_id, display_name, id)"
        "      > (%(after_loc)s::uuid, %(after_name)s, %(after_id)s::uuid))"
        " ORDER BY location_id, display_name, id LIMIT %(limit)s",
        {
            "org": organization_id,
            "inactive": include_inactive,
            "location": location_id or None,
            "kind": kind,
            "after_loc": after[0] if after else None,
            "after_name": after[1] if after else None,
            "after_id": after[2] if after else None,
            "limit": limit,
        },
    )
    return [_resource(row) for row in rows]


async def update_resource(conn: Connection, res: ResourceRecord) -> ResourceRecord:
    row = await _one(
        conn,
        "UPDATE availability.resources SET display_name = %s, category = %s, kind = %s,"
        " active = %s, updated_at = now() WHERE organization_id = %s::uuid AND id = %s::uuid"
        f" RETURNING {_RESOURCE_COLUMNS}",
        (
            res.display_name,
            res.category.value,
            res.kind,
            res.active,
            res.organization_id,
            res.id,
        ),
    )
    return _resource(row)


# ---------------------------------------------------------------- visit types

_VISIT_TYPE_COLUMNS = (
    "v.id, v.organization_id, v.display_name, v.specialty, v.duration_granules,"
    " v.patient_kind,"
    " ARRAY(SELECT vl.location_id FROM availability.visit_type_locations vl"
    "       WHERE vl.visit_type_id = v.id ORDER BY vl.location_id),"
    " v.minimum_notice_seconds, v.maximum_days_ahead, v.service_type_code, v.active,"
    " v.created_at, v.updated_at"
)
_NEEDS_QUERY = (
    "SELECT visit_type_id, category, kind, count FROM availability.visit_type_resource_needs"
    " WHERE visit_type_id = ANY(%s::uuid[]) ORDER BY visit_type_id, kind"
)


def _visit_type(row: Any, needs: tuple[ResourceNeedSpec, ...]) -> VisitTypeRecord:
    return VisitTypeRecord(
        id=_id(row[0]),
        organization_id=_id(row[1]),
        display_name=row[2],
        specialty=row[3],
        duration_granules=row[4],
        resource_needs=needs,
        patient_kind=domain.PatientKind(row[5]),
        location_ids=_ids(row[6]),
        minimum_notice_seconds=row[7],
        maximum_days_ahead=row[8],
        service_type_code=row[9],
        active=row[10],
        create_time=row[11],
        update_time=row[12],
    )


async def _visit_types(conn: Connection, rows: list[Any]) -> list[VisitTypeRecord]:
    needs: dict[str, list[ResourceNeedSpec]] = {}
    if rows:
        for need in await _all(conn, _NEEDS_QUERY, ([row[0] for row in rows],)):
            needs.setdefault(_id(need[0]), []).append(
                ResourceNeedSpec(ResourceCategory(need[1]), need[2], need[3])
            )
    return [_visit_type(row, tuple(needs.get(_id(row[0]), ()))) for row in rows]


async def _replace_visit_type_links(conn: Connection, vt: VisitTypeRecord) -> None:
    await conn.execute(
        "DELETE FROM availability.visit_type_resource_needs WHERE visit_type_id = %s::uuid",
        (vt.id,),
    )
    await conn.execute(
        "INSERT INTO availability.visit_type_resource_needs"
        " (organization_id, visit_type_id, kind, category, count)"
        " SELECT %s::uuid, %s::uuid, k, c, n FROM unnest(%s::text[], %s::text[], %s::int[])"
        " AS u(k, c, n)",
        (
            vt.organization_id,
            vt.id,
            [n.kind for n in vt.resource_needs],
            [n.category.value for n in vt.resource_needs],
            [n.count for n in vt.resource_needs],
        ),
    )
    await conn.execute(
        "DELETE FROM availability.visit_type_locations WHERE visit_type_id = %s::uuid",
        (vt.id,),
    )
    await conn.execute(
        "INSERT INTO availability.visit_type_locations"
        " (organization_id, visit_type_id, location_id)"
        " SELECT %s::uuid, %s::uuid, loc FROM unnest(%s::uuid[]) AS loc",
        (vt.organization_id, vt.id, list(vt.location_ids)),
    )


async def insert_visit_type(conn: Connection, vt: VisitTypeRecord) -> VisitTypeRecord:
    await conn.execute(
        "INSERT INTO availability.visit_types (id, organization_id, display_name, specialty,"
        " duration_granules, patient_kind, minimum_notice_seconds, maximum_days_ahead,"
        " service_type_code, active)"
        " VALUES (%s::uuid, %s::uuid, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            vt.id,
            vt.organization_id,
            vt.display_name,
            vt.specialty,
            vt.duration_granules,
            vt.patient_kind.value,
            vt.minimum_notice_seconds,
            vt.maximum_days_ahead,
            vt.service_type_code,
            vt.active,
        ),
    )
    await _replace_visit_type_links(conn, vt)
    stored = await get_visit_type(conn, vt.organization_id, vt.id)
    assert stored is not None
    return stored


async def update_visit_type(conn: Connection, vt: VisitTypeRecord) -> VisitTypeRecord:
    await conn.execute(
        "UPDATE availability.visit_types SET display_name = %s, specialty = %s,"
        " duration_granules = %s, patient_kind = %s, minimum_notice_seconds = %s,"
        " maximum_days_ahead = %s, service_type_code = %s, active = %s, updated_at = now()"
        " WHERE organization_id = %s::uuid AND id = %s::uuid",
        (
            vt.display_name,
            vt.specialty,
            vt.duration_granules,
            vt.patient_kind.value,
            vt.minimum_notice_seconds,
            vt.maximum_days_ahead,
            vt.service_type_code,
            vt.active,
            vt.organization_id,
            vt.id,
        ),
    )
    await _replace_visit_type_links(conn, vt)
    stored = await get_visit_type(conn, vt.organization_id, vt.id)
    assert stored is not None
    return stored


async def get_visit_type(
    conn: Connection, organization_id: str, visit_type_id: str
) -> VisitTypeRecord | None:
    rows = await _all(
        conn,
        f"SELECT {_VISIT_TYPE_COLUMNS} FROM availability.visit_types v"
        " WHERE v.organization_id = %s::uuid AND v.id = %s::uuid",
        (organization_id, visit_type_id),
    )
    found = await _visit_types(conn, rows)
    return found[0] if found else None


async def list_visit_types(
    conn: Connection,
    organization_id: str,
    *,
    specialty: str,
    include_inactive: bool,
    after: tuple[str, ...] | None,
    limit: int,
) -> list[VisitTypeRecord]:
    rows = await _all(
        conn,
        f"SELECT {_VISIT_TYPE_COLUMNS} FROM availability.visit_types v"
        " WHERE v.organization_id = %(org)s::uuid AND (v.active OR %(inactive)s)"
        " AND (%(specialty)s = '' OR v.specialty = %(specialty)s)"
        " AND (%(after_sp)s::text IS NULL OR (v.specialty, v.display_name, v.id)"
        "      > (%(after_sp)s, %(after_name)s, %(after_id)s::uuid))"
        " ORDER BY v.specialty, v.display_name, v.id LIMIT %(limit)s",
        {
            "org": organization_id,
            "inactive": include_inactive,
            "specialty": specialty,
            "after_sp": after[0] if after else None,
            "after_name": after[1] if after else None,
            "after_id": after[2] if after else None,
            "limit": limit,
        },
    )
    return await _visit_types(conn, rows)


# ---------------------------------------------------------------- templates

_TEMPLATE_COLUMNS = (
    "t.id, t.organization_id, t.provider_id, t.location_id, t.effective_start_date,"
    " t.effective_end_date, t.week_interval,"
    " ARRAY(SELECT tv.visit_type_id FROM availability.template_visit_types tv"
    "       WHERE tv.template_id = t.id ORDER BY tv.visit_type_id),"
    " t.created_at, t.updated_at"
)


async def _templates(conn: Connection, rows: list[Any]) -> list[TemplateRecord]:
    if not rows:
        return []
    ids = [row[0] for row in rows]
    windows: dict[str, list[TemplateWindow]] = {}
    for w in await _all(
        conn,
        "SELECT w.template_id, w.day_of_week, w.start_minute, w.end_minute,"
        " ARRAY(SELECT wv.visit_type_id FROM availability.template_window_visit_types wv"
        "       WHERE wv.template_id = w.template_id AND wv.window_index = w.window_index"
        "       ORDER BY wv.visit_type_id)"
        " FROM availability.template_windows w WHERE w.template_id = ANY(%s::uuid[])"
        " ORDER BY w.template_id, w.window_index",
        (ids,),
    ):
        windows.setdefault(_id(w[0]), []).append(TemplateWindow(w[1], w[2], w[3], _ids(w[4])))
    return [
        TemplateRecord(
            id=_id(row[0]),
            organization_id=_id(row[1]),
            provider_id=_id(row[2]),
            location_id=_id(row[3]),
            effective_start_date=row[4],
            effective_end_date=row[5],
            week_interval=row[6],
            windows=tuple(windows.get(_id(row[0]), ())),
            visit_type_ids=_ids(row[7]),
            create_time=row[8],
            update_time=row[9],
        )
        for row in rows
    ]


async def _write_template_children(conn: Connection, tpl: TemplateRecord) -> None:
    await conn.execute(
        "DELETE FROM availability.template_windows WHERE template_id = %s::uuid", (tpl.id,)
    )
    await conn.execute(
        "DELETE FROM availability.template_visit_types WHERE template_id = %s::uuid", (tpl.id,)
    )
    await conn.execute(
        "INSERT INTO availability.template_visit_types (organization_id, template_id,"
        " visit_type_id) SELECT %s::uuid, %s::uuid, v FROM unnest(%s::uuid[]) AS v",
        (tpl.organization_id, tpl.id, list(tpl.visit_type_ids)),
    )
    windows = list(enumerate(tpl.windows))
    await conn.execute(
        "INSERT INTO availability.template_windows (organization_id, template_id, window_index,"
        " day_of_week, start_minute, end_minute)"
        " SELECT %s::uuid, %s::uuid, i, d, s, e FROM unnest(%s::int[], %s::int[], %s::int[],"
        " %s::int[]) AS u(i, d, s, e)",
        (
            tpl.organization_id,
            tpl.id,
            [i for i, _ in windows],
            [w.day_of_week for _, w in windows],
            [w.start_minute for _, w in windows],
            [w.end_minute for _, w in windows],
        ),
    )
    pairs = [(i, vt) for i, w in windows for vt in w.visit_type_ids]
    await conn.execute(
        "INSERT INTO availability.template_window_visit_types (organization_id, template_id,"
        " window_index, visit_type_id) SELECT %s::uuid, %s::uuid, i, v"
        " FROM unnest(%s::int[], %s::uuid[]) AS u(i, v)",
        (tpl.organization_id, tpl.id, [i for i, _ in pairs], [v for _, v in pairs]),
    )


async def insert_template(conn: Connection, tpl: TemplateRecord) -> TemplateRecord:
    await conn.execute(
        "INSERT INTO availability.schedule_templates (id, organization_id, provider_id,"
        " location_id, effective_start_date, effective_end_date, week_interval)"
        " VALUES (%s::uuid, %s::uuid, %s::uuid, %s::uuid, %s, %s, %s)",
        (
            tpl.id,
            tpl.organization_id,
            tpl.provider_id,
            tpl.location_id,
            tpl.effective_start_date,
            tpl.effective_end_date,
            tpl.week_interval,
        ),
    )
    await _write_template_children(conn, tpl)
    stored = await get_template(conn, tpl.organization_id, tpl.id)
    assert stored is not None
    return stored


async def update_template(conn: Connection, tpl: TemplateRecord) -> TemplateRecord:
    await conn.execute(
        "UPDATE availability.schedule_templates SET effective_start_date = %s,"
        " effective_end_date = %s, week_interval = %s, updated_at = now()"
        " WHERE organization_id = %s::uuid AND id = %s::uuid",
        (
            tpl.effective_start_date,
            tpl.effective_end_date,
            tpl.week_interval,
            tpl.organization_id,
            tpl.id,
        ),
    )
    await _write_template_children(conn, tpl)
    stored = await get_template(conn, tpl.organization_id, tpl.id)
    assert stored is not None
    return stored


async def get_template(
    conn: Connection, organization_id: str, template_id: str
) -> TemplateRecord | None:
    rows = await _all(
        conn,
        f"SELECT {_TEMPLATE_COLUMNS} FROM availability.schedule_templates t"
        " WHERE t.organization_id = %s::uuid AND t.id = %s::uuid",
        (organization_id, template_id),
    )
    found = await _templates(conn, rows)
    return found[0] if found else None


async def list_templates(
    conn: Connection,
    organization_id: str,
    *,
    provider_id: str,
    location_id: str,
    effective_on: date | None,
    after: tuple[str, ...] | None,
    limit: int,
) -> list[TemplateRecord]:
    rows = await _all(
        conn,
        f"SELECT {_TEMPLATE_COLUMNS} FROM availability.schedule_templates t"
        " WHERE t.organization_id = %(org)s::uuid"
        " AND (%(provider)s::uuid IS NULL OR t.provider_id = %(provider)s::uuid)"
        " AND (%(location)s::uuid IS NULL OR t.location_id = %(location)s::uuid)"
        " AND (%(on)s::date IS NULL OR (t.effective_start_date <= %(on)s::date"
        "      AND (t.effective_end_date IS NULL OR t.effective_end_date >= %(on)s::date)))"
        " AND (%(after_p)s::uuid IS NULL OR (t.provider_id, t.effective_start_date, t.id)"
        "      > (%(after_p)s::uuid, %(after_d)s::date, %(after_id)s::uuid))"
        " ORDER BY t.provider_id, t.effective_start_date, t.id LIMIT %(limit)s",
        {
            "org": organization_id,
            "provider": provider_id or None,
            "location": location_id or None,
            "on": effective_on,
            "after_p": after[0] if after else None,
            "after_d": after[1] if after else None,
            "after_id": after[2] if after else None,
            "limit": limit,
        },
    )
    return await _templates(conn, rows)


# ---------------------------------------------------------------- exceptions

_EXCEPTION_COLUMNS = (
    "id, organization_id, provider_id, location_id, kind, start_date, end_date, start_minute,"
    " end_minute, description, created_at"
)


def _exception(row: Any) -> ExceptionRecord:
    return ExceptionRecord(
        id=_id(row[0]),
        organization_id=_id(row[1]),
        provider_id=_id(row[2]),
        location_id=_opt_id(row[3]),
        kind=ExceptionKind(row[4]),
        start_date=row[5],
        end_date=row[6],
        start_minute=row[7],
        end_minute=row[8],
        description=row[9],
        create_time=row[10],
    )


async def insert_exception(conn: Connection, exc: ExceptionRecord) -> ExceptionRecord:
    row = await _one(
        conn,
        "INSERT INTO availability.schedule_exceptions (id, organization_id, provider_id,"
        " location_id, kind, start_date, end_date, start_minute, end_minute, description)"
        " VALUES (%s::uuid, %s::uuid, %s::uuid, %s::uuid, %s, %s, %s, %s, %s, %s)"
        f" RETURNING {_EXCEPTION_COLUMNS}",
        (
            exc.id,
            exc.organization_id,
            exc.provider_id,
            exc.location_id,
            exc.kind.value,
            exc.start_date,
            exc.end_date,
            exc.start_minute,
            exc.end_minute,
            exc.description,
        ),
    )
    return _exception(row)


async def get_exception(
    conn: Connection, organization_id: str, exception_id: str
) -> ExceptionRecord | None:
    row = await _one(
        conn,
        f"SELECT {_EXCEPTION_COLUMNS} FROM availability.schedule_exceptions"
        " WHERE organization_id = %s::uuid AND id = %s::uuid",
        (organization_id, exception_id),
    )
    return None if row is None else _exception(row)


async def delete_exception(conn: Connection, organization_id: str, exception_id: str) -> bool:
    cursor = await conn.execute(
        "DELETE FROM availability.schedule_exceptions"
        " WHERE organization_id = %s::uuid AND id = %s::uuid",
        (organization_id, exception_id),
    )
    return cursor.rowcount == 1


async def list_exceptions(
    conn: Connection,
    organization_id: str,
    *,
    provider_id: str,
    start_date: date | None,
    end_date: date | None,
    after: tuple[str, ...] | None,
    limit: int,
) -> list[ExceptionRecord]:
    rows = await _all(
        conn,
        f"SELECT {_EXCEPTION_COLUMNS} FROM availability.schedule_exceptions"
        " WHERE organization_id = %(org)s::uuid"
        " AND (%(provider)s::uuid IS NULL OR provider_id = %(provider)s::uuid)"
        " AND (%(from)s::date IS NULL OR end_date >= %(from)s::date)"
        " AND (%(to)s::date IS NULL OR start_date <= %(to)s::date)"
        " AND (%(after_d)s::date IS NULL"
        "      OR (start_date, id) > (%(after_d)s::date, %(after_id)s::uuid))"
        " ORDER BY start_date, id LIMIT %(limit)s",
        {
            "org": organization_id,
            "provider": provider_id or None,
            "from": start_date,
            "to": end_date,
            "after_d": after[0] if after else None,
            "after_id": after[1] if after else None,
            "limit": limit,
        },
    )
    return [_exception(row) for row in rows]


# ---------------------------------------------------------------- overrides

_OVERRIDE_COLUMNS = (
    "o.id, o.organization_id, o.provider_id, o.location_id, o.day, o.kind, o.start_minute,"
    " o.end_minute,"
    " ARRAY(SELECT ov.visit_type_id FROM availability.override_visit_types ov"
    "       WHERE ov.override_id = o.id ORDER BY ov.visit_type_id),"
    " o.description, o.created_at"
)


def _override(row: Any) -> OverrideRecord:
    return OverrideRecord(
        id=_id(row[0]),
        organization_id=_id(row[1]),
        provider_id=_id(row[2]),
        location_id=_id(row[3]),
        day=row[4],
        kind=OverrideKind(row[5]),
        start_minute=row[6],
        end_minute=row[7],
        visit_type_ids=_ids(row[8]),
        description=row[9],
        create_time=row[10],
    )


async def insert_override(conn: Connection, ovr: OverrideRecord) -> OverrideRecord:
    await conn.execute(
        "INSERT INTO availability.schedule_overrides (id, organization_id, provider_id,"
        " location_id, day, kind, start_minute, end_minute, description)"
        " VALUES (%s::uuid, %s::uuid, %s::uuid, %s::uuid, %s, %s, %s, %s, %s)",
        (
            ovr.id,
            ovr.organization_id,
            ovr.provider_id,
            ovr.location_id,
            ovr.day,
            ovr.kind.value,
            ovr.start_minute,
            ovr.end_minute,
            ovr.description,
        ),
    )
    await conn.execute(
        "INSERT INTO availability.override_visit_types (organization_id, override_id,"
        " visit_type_id) SELECT %s::uuid, %s::uuid, v FROM unnest(%s::uuid[]) AS v",
        (ovr.organization_id, ovr.id, list(ovr.visit_type_ids)),
    )
    stored = await get_override(conn, ovr.organization_id, ovr.id)
    assert stored is not None
    return stored


async def get_override(
    conn: Connection, organization_id: str, override_id: str
) -> OverrideRecord | None:
    row = await _one(
        conn,
        f"SELECT {_OVERRIDE_COLUMNS} FROM availability.schedule_overrides o"
        " WHERE o.organization_id = %s::uuid AND o.id = %s::uuid",
        (organization_id, override_id),
    )
    return None if row is None else _override(row)


async def delete_override(conn: Connection, organization_id: str, override_id: str) -> bool:
    cursor = await conn.execute(
        "DELETE FROM availability.schedule_overrides"
        " WHERE organization_id = %s::uuid AND id = %s::uuid",
        (organization_id, override_id),
    )
    return cursor.rowcount == 1


async def list_overrides(
    conn: Connection,
    organization_id: str,
    *,
    provider_id: str,
    start_date: date | None,
    end_date: date | None,
    after: tuple[str, ...] | None,
    limit: int,
) -> list[OverrideRecord]:
    rows = await _all(
        conn,
        f"SELECT {_OVERRIDE_COLUMNS} FROM availability.schedule_overrides o"
        " WHERE o.organization_id = %(org)s::uuid"
        " AND (%(provider)s::uuid IS NULL OR o.provider_id = %(provider)s::uuid)"
        " AND (%(from)s::date IS NULL OR o.day >= %(from)s::date)"
        " AND (%(to)s::date IS NULL OR o.day <= %(to)s::date)"
        " AND (%(after_d)s::date IS NULL"
        "      OR (o.day, o.id) > (%(after_d)s::date, %(after_id)s::uuid))"
        " ORDER BY o.day, o.id LIMIT %(limit)s",
        {
            "org": organization_id,
            "provider": provider_id or None,
            "from": start_date,
            "to": end_date,
            "after_d": after[0] if after else None,
            "after_id": after[1] if after else None,
            "limit": limit,
        },
    )
    return [_override(row) for row in rows]


# ---------------------------------------------------------------- conflicts

_CONFLICT_COLUMNS = (
    "id, organization_id, provider_id, location_id, appointment_id, hold_id, start_time,"
    " end_time, cause, cause_id, state, detected_at, resolved_at"
)


def _conflict(row: Any) -> ConflictRecord:
    return ConflictRecord(
        id=_id(row[0]),
        organization_id=_id(row[1]),
        provider_id=_id(row[2]),
        location_id=_id(row[3]),
        appointment_id=_opt_id(row[4]),
        hold_id=_opt_id(row[5]),
        start_time=row[6],
        end_time=row[7],
        cause=ConflictCause(row[8]),
        cause_id=_opt_id(row[9]),
        state=ConflictState(row[10]),
        detect_time=row[11],
        resolve_time=row[12],
    )


async def get_conflict(
    conn: Connection, organization_id: str, conflict_id: str
) -> ConflictRecord | None:
    row = await _one(
        conn,
        f"SELECT {_CONFLICT_COLUMNS} FROM availability.schedule_conflicts"
        " WHERE organization_id = %s::uuid AND id = %s::uuid",
        (organization_id, conflict_id),
    )
    return None if row is None else _conflict(row)


async def list_conflicts(
    conn: Connection,
    organization_id: str,
    *,
    provider_id: str,
    state: ConflictState,
    after: tuple[str, ...] | None,
    limit: int,
) -> list[ConflictRecord]:
    rows = await _all(
        conn,
        f"SELECT {_CONFLICT_COLUMNS} FROM availability.schedule_conflicts"
        " WHERE organization_id = %(org)s::uuid AND state = %(state)s"
        " AND (%(provider)s::uuid IS NULL OR provider_id = %(provider)s::uuid)"
        " AND (%(after_t)s::timestamptz IS NULL"
        "      OR (start_time, id) > (%(after_t)s::timestamptz, %(after_id)s::uuid))"
        " ORDER BY start_time, id LIMIT %(limit)s",
        {
            "org": organization_id,
            "state": state.value,
            "provider": provider_id or None,
            "after_t": after[0] if after else None,
            "after_id": after[1] if after else None,
            "limit": limit,
        },
    )
    return [_conflict(row) for row in rows]


async def conflict_ids_for_cause(
    conn: Connection, organization_id: str, cause_id: str
) -> tuple[str, ...]:
    rows = await _all(
        conn,
        "SELECT id FROM availability.schedule_conflicts"
        " WHERE organization_id = %s::uuid AND cause_id = %s::uuid ORDER BY start_time, id",
        (organization_id, cause_id),
    )
    return tuple(_id(row[0]) for row in rows)


# ---------------------------------------------------------------- materialization inputs


@dataclass(frozen=True, slots=True)
class ProviderInputs:
    """What materialization needs of one provider over some dates."""

    provider_id: str
    templates: tuple[TemplateRecord, ...]
    exceptions: tuple[ExceptionRecord, ...]
    overrides: tuple[OverrideRecord, ...]


async def load_provider_inputs(
    conn: Connection,
    organization_id: str,
    provider_ids: Sequence[str],
    first: date,
    last: date,
) -> dict[str, ProviderInputs]:
    """Templates, exceptions and overrides of `provider_ids` touching local dates [first, last].

    Every requested provider gets an entry (possibly empty: a provider without templates has
    no granules, so its OPEN ones are blocked).
    """
    params = {"org": organization_id, "ids": list(provider_ids), "first": first, "last": last}
    template_rows = await _all(
        conn,
        f"SELECT {_TEMPLATE_COLUMNS} FROM availability.schedule_templates t"
        " WHERE t.organization_id = %(org)s::uuid AND t.provider_id = ANY(%(ids)s::uuid[])"
        " AND t.effective_start_date <= %(last)s"
        " AND (t.effective_end_date IS NULL OR t.effective_end_date >= %(first)s)",
        params,
    )
    exception_rows = await _all(
        conn,
        f"SELECT {_EXCEPTION_COLUMNS} FROM availability.schedule_exceptions"
        " WHERE organization_id = %(org)s::uuid AND provider_id = ANY(%(ids)s::uuid[])"
        " AND start_date <= %(last)s AND end_date >= %(first)s",
        params,
    )
    override_rows = await _all(
        conn,
        f"SELECT {_OVERRIDE_COLUMNS} FROM availability.schedule_overrides o"
        " WHERE o.organization_id = %(org)s::uuid AND o.provider_id = ANY(%(ids)s::uuid[])"
        " AND o.day BETWEEN %(first)s AND %(last)s",
        params,
    )
    templates: dict[str, list[TemplateRecord]] = {}
    for tpl in await _templates(conn, template_rows):
        templates.setdefault(tpl.provider_id, []).append(tpl)
    exceptions: dict[str, list[ExceptionRecord]] = {}
    for exc in map(_exception, exception_rows):
        exceptions.setdefault(exc.provider_id, []).append(exc)
    overrides: dict[str, list[OverrideRecord]] = {}
    for ovr in map(_override, override_rows):
        overrides.setdefault(ovr.provider_id, []).append(ovr)
    return {
        pid: ProviderInputs(
            provider_id=pid,
            templates=tuple(templates.get(pid, ())),
            exceptions=tuple(exceptions.get(pid, ())),
            overrides=tuple(overrides.get(pid, ())),
        )
        for pid in (str(uuid.UUID(p)) for p in provider_ids)
    }
