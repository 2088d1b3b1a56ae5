"""The availability migration: it applies, and its constraints keep tenants apart."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest

from common.migrations import migrate

MIGRATIONS = Path(__file__).resolve().parents[4] / "availability_svc" / "migrations"


async def test_migration_applies_once_and_is_recorded(database_url: str) -> None:
    applied = await migrate(database_url, "availability", MIGRATIONS)
    assert "0001" in applied
    assert await migrate(database_url, "availability", MIGRATIONS) == []


async def test_template_cannot_name_a_location_of_another_organization(database_url: str) -> None:
    await migrate(database_url, "availability", MIGRATIONS)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        org_a, org_b = uuid.uuid4(), uuid.uuid4()
        for org in (org_a, org_b):
            await conn.execute(
                "INSERT INTO availability.organizations (id, display_name, time_zone)"
                " VALUES (%s, 'Org', 'America/New_York')",
                (org,),
            )
        provider, foreign_location = uuid.uuid4(), uuid.uuid4()
        await conn.execute(
            "INSERT INTO availability.providers (id, organization_id, display_name, specialties)"
            " VALUES (%s, %s, 'Dr. A', ARRAY['cardiology'])",
            (provider, org_a),
        )
        await conn.execute(
            "INSERT INTO availability.locations (id, organization_id, display_name, latitude,"
            " longitude, time_zone) VALUES (%s, %s, 'B site', 40.7, -74.0, 'America/New_York')",
            (foreign_location, org_b),
        )
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            await conn.execute(
                "INSERT INTO availability.provider_locations"
                " (organization_id, provider_id, location_id) VALUES (%s, %s, %s)",
                (org_a, provider, foreign_location),
            )
