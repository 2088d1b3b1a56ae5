"""Fixtures for the schedule administration tests: a migrated database and a small clinic."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from availability_svc import store
from availability_svc.admin_model import (
    Address,
    InsurancePlanRecord,
    LocationRecord,
    OrganizationRecord,
    ProviderRecord,
    TemplateRecord,
    TemplateWindow,
    VisitTypeRecord,
)
from availability_svc.domain import PatientKind
from common.db import Connection, Pool, open_pool
from common.migrations import migrate

from .harness import Caller, serving_admin

MIGRATIONS = Path(__file__).resolve().parents[4] / "availability_svc" / "migrations"
NEW_YORK = "America/New_York"
# A fixed "now" well before the dates the tests materialize, so the horizon covers them.
NOW = datetime(2026, 2, 20, 15, 0, tzinfo=UTC)


@pytest.fixture
async def availability_db(database_url: str) -> str:
    await migrate(database_url, "availability", MIGRATIONS)
    return database_url


@pytest.fixture
async def caller(pool: Pool) -> AsyncIterator[Caller]:
    """A gRPC client of the admin service served over `pool`, its clock at NOW."""
    async with serving_admin(pool, NOW) as client:
        yield client


@pytest.fixture
async def pool(availability_db: str) -> AsyncIterator[Pool]:
    db_pool = await open_pool(availability_db, min_size=1, max_size=4, name="test")
    try:
        yield db_pool
    finally:
        await db_pool.close()


@dataclass(frozen=True)
class Clinic:
    """One organisation with two locations, a provider working at both and a visit type."""

    org: OrganizationRecord
    midtown: LocationRecord
    uptown: LocationRecord
    provider: ProviderRecord
    visit_type: VisitTypeRecord


def new_id() -> str:
    return str(uuid.uuid4())


async def create_clinic(conn: Connection, *, name: str = "Riverside Health") -> Clinic:
    org = await store.insert_organization(
        conn,
        OrganizationRecord(
            id=new_id(),
            display_name=name,
            granule_minutes=15,
            horizon_days=90,
            time_zone=NEW_YORK,
            active=True,
        ),
    )

    async def location(display_name: str, lat: float, lon: float) -> LocationRecord:
        return await store.insert_location(
            conn,
            LocationRecord(
                id=new_id(),
                organization_id=org.id,
                display_name=display_name,
                address=Address(("1 Main St",), "New York", "NY", "10001", "US"),
                latitude=lat,
                longitude=lon,
                time_zone=NEW_YORK,
                active=True,
            ),
        )

    midtown = await location("Midtown", 40.754, -73.984)
    uptown = await location("Uptown", 40.800, -73.950)
    await store.insert_plan(
        conn,
        InsurancePlanRecord("bcbs_ppo", org.id, "Blue Cross PPO", "BCBS01", True),
    )
    visit_type = await store.insert_visit_type(
        conn,
        VisitTypeRecord(
            id=new_id(),
            organization_id=org.id,
            display_name="Follow-up",
            specialty="cardiology",
            duration_granules=2,
            resource_needs=(),
            patient_kind=PatientKind.ANY,
            location_ids=(),
            minimum_notice_seconds=0,
            maximum_days_ahead=0,
            service_type_code="30",
            active=True,
        ),
    )
    provider = await store.insert_provider(
        conn,
        ProviderRecord(
            id=new_id(),
            organization_id=org.id,
            display_name="Dr. Ana Ruiz",
            npi="1234567893",
            specialties=("cardiology",),
            languages=("en", "es"),
            accepted_plan_ids=("bcbs_ppo",),
            location_ids=(midtown.id, uptown.id),
            accepting_new_patients=True,
            active=True,
        ),
    )
    return Clinic(org, midtown, uptown, provider, visit_type)


async def add_template(
    conn: Connection,
    clinic: Clinic,
    location: LocationRecord,
    windows: list[tuple[int, str, str]],
    *,
    start: date = date(2026, 1, 5),
    end: date | None = None,
    week_interval: int = 1,
) -> TemplateRecord:
    """A template at `location` with windows (ISO weekday, 'HH:MM', 'HH:MM')."""
    from availability_svc.admin_model import parse_minute

    return await store.insert_template(
        conn,
        TemplateRecord(
            id=new_id(),
            organization_id=clinic.org.id,
            provider_id=clinic.provider.id,
            location_id=location.id,
            effective_start_date=start,
            effective_end_date=end,
            week_interval=week_interval,
            windows=tuple(
                TemplateWindow(
                    day,
                    parse_minute(s, allow_end_of_day=False),
                    parse_minute(e, allow_end_of_day=True),
                )
                for day, s, e in windows
            ),
            visit_type_ids=(clinic.visit_type.id,),
        ),
    )


async def slot_rows(conn: Connection, provider_id: str) -> list[tuple[Any, ...]]:
    """(start, end, location, status, version) of a provider's granules in time order."""
    cursor = await conn.execute(
        "SELECT start_time, end_time, location_id::text, status, version"
        " FROM availability.slots WHERE provider_id = %s::uuid ORDER BY start_time",
        (provider_id,),
    )
    return list(await cursor.fetchall())


async def outbox_count(conn: Connection) -> int:
    cursor = await conn.execute("SELECT count(*) FROM availability.outbox")
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])
