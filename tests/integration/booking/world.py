"""A small clinic for the booking tests: one organisation, two sites, three providers, four
visit types (one needing an exam room, one an exam room and an ultrasound, one for new
patients only), rooms, plans and a weekly template, materialized for 14 days.

Rows are written with SQL (as the schedule admin API would leave them) and granules by the
real materializer, so booking runs against the same inventory search reads.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from availability_svc.materializer import EventContext, materialize_organization
from common.db import Connection, Pool
from common.slot_ids import format_slot_id
from medsched.events.v1 import envelope_pb2

TIME_ZONE = "America/New_York"
ZONE = ZoneInfo(TIME_ZONE)
PAYER_ID = "SIMPAYER"
NPI = "1234567893"
# Plans: accepted by providers 0 and 1; known but accepted by nobody.
PLAN = "simplan"
UNACCEPTED_PLAN = "otherplan"
# Roster of the payer simulator (eligibility_svc.payer_sim.builtin_roster).
ACTIVE_MEMBER = ("SIMA00001", "SMITH", "JOHN", "1980-01-15")
INACTIVE_MEMBER = ("SIMI00002", "DOE", "JANE", "1975-06-30")


@dataclass
class Clinic:
    organization_id: uuid.UUID = field(default_factory=uuid.uuid4)
    other_organization_id: uuid.UUID = field(default_factory=uuid.uuid4)
    site_a: uuid.UUID = field(default_factory=uuid.uuid4)
    site_b: uuid.UUID = field(default_factory=uuid.uuid4)
    providers: list[uuid.UUID] = field(default_factory=lambda: [uuid.uuid4() for _ in range(3)])
    # Visit types by name.
    follow_up: uuid.UUID = field(default_factory=uuid.uuid4)  # 1 granule, nothing needed
    exam: uuid.UUID = field(default_factory=uuid.uuid4)  # 2 granules, 1 exam room
    ultrasound: uuid.UUID = field(default_factory=uuid.uuid4)  # 2 granules, room + ultrasound
    new_patient: uuid.UUID = field(default_factory=uuid.uuid4)  # 2 granules, NEW only
    exam_rooms_a: list[uuid.UUID] = field(default_factory=lambda: [uuid.uuid4(), uuid.uuid4()])
    ultrasound_a: uuid.UUID = field(default_factory=uuid.uuid4)
    exam_room_b: uuid.UUID = field(default_factory=uuid.uuid4)
    other_provider: uuid.UUID = field(default_factory=uuid.uuid4)
    other_visit_type: uuid.UUID = field(default_factory=uuid.uuid4)

    def provider_site(self, index: int) -> uuid.UUID:
        return self.site_b if index == 2 else self.site_a

    def start(self, days_ahead: int, hour: int, minute: int = 0) -> datetime:
        """A local wall-clock start `days_ahead` days from today, as a UTC instant."""
        day = datetime.now(ZONE).date() + timedelta(days=days_ahead)
        return datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZONE).astimezone(UTC)

    def slot_id(self, provider: uuid.UUID, start: datetime) -> str:
        return format_slot_id(str(provider), int(start.timestamp()))


async def build_clinic(pool: Pool, *, days: int = 14) -> Clinic:
    clinic = Clinic()
    today = datetime.now(ZONE).date()
    async with pool.connection() as conn, conn.transaction():
        for org in (clinic.organization_id, clinic.other_organization_id):
            await conn.execute(
                "INSERT INTO availability.organizations (id, display_name, time_zone,"
                " horizon_days) VALUES (%s, 'Clinic', %s, %s)",
                (org, TIME_ZONE, days),
            )
            for plan in (PLAN, UNACCEPTED_PLAN):
                await conn.execute(
                    "INSERT INTO availability.insurance_plans (organization_id, plan_id,"
                    " display_name, payer_id) VALUES (%s, %s, %s, %s)",
                    (org, plan, plan.upper(), PAYER_ID),
                )
        org = clinic.organization_id
        for site, name in ((clinic.site_a, "Site A"), (clinic.site_b, "Site B")):
            await conn.execute(
                "INSERT INTO availability.locations (id, organization_id, display_name,"
                " latitude, longitude, time_zone) VALUES (%s, %s, %s, 40.75, -73.99, %s)",
                (site, org, name, TIME_ZONE),
            )
        resources = [
            (clinic.exam_rooms_a[0], clinic.site_a, "ROOM", "exam_room"),
            (clinic.exam_rooms_a[1], clinic.site_a, "ROOM", "exam_room"),
            (clinic.ultrasound_a, clinic.site_a, "EQUIPMENT", "ultrasound"),
            (clinic.exam_room_b, clinic.site_b, "ROOM", "exam_room"),
        ]
        for resource, site, category, kind in resources:
            await conn.execute(
                "INSERT INTO availability.resources (id, organization_id, location_id,"
                " display_name, category, kind) VALUES (%s, %s, %s, %s, %s, %s)",
                (resource, org, site, kind, category, kind),
            )
        visit_types = [
            (clinic.follow_up, 1, "ANY", ()),
            (clinic.exam, 2, "ANY", (("exam_room", "ROOM"),)),
            (clinic.ultrasound, 2, "ANY", (("exam_room", "ROOM"), ("ultrasound", "EQUIPMENT"))),
            (clinic.new_patient, 2, "NEW", ()),
        ]
        for visit_type, granules, kind, needs in visit_types:
            await conn.execute(
                "INSERT INTO availability.visit_types (id, organization_id, display_name,"
                " specialty, duration_granules, patient_kind) VALUES (%s, %s, 'Visit',"
                " 'cardiology', %s, %s)",
                (visit_type, org, granules, kind),
            )
            for need_kind, category in needs:
                await conn.execute(
                    "INSERT INTO availability.visit_type_resource_needs (organization_id,"
                    " visit_type_id, kind, category) VALUES (%s, %s, %s, %s)",
                    (org, visit_type, need_kind, category),
                )
        for index, provider in enumerate(clinic.providers):
            site = clinic.provider_site(index)
            await conn.execute(
                "INSERT INTO availability.providers (id, organization_id, display_name, npi,"
                " specialties) VALUES (%s, %s, %s, %s, ARRAY['cardiology'])",
                (provider, org, f"Dr {index}", NPI if index == 0 else None),
            )
            await conn.execute(
                "INSERT INTO availability.provider_locations (organization_id, provider_id,"
                " location_id) VALUES (%s, %s, %s)",
                (org, provider, site),
            )
            if index < 2:
                await conn.execute(
                    "INSERT INTO availability.provider_plans (organization_id, provider_id,"
                    " plan_id) VALUES (%s, %s, %s)",
                    (org, provider, PLAN),
                )
            await _template(conn, org, provider, site, today, [v[0] for v in visit_types])
        # A second organisation whose rows must never be reachable from the first's callers.
        other = clinic.other_organization_id
        await conn.execute(
            "INSERT INTO availability.locations (id, organization_id, display_name,"
            " latitude, longitude, time_zone) VALUES (%s, %s, 'Elsewhere', 40.0, -75.0, %s)",
            (other_site := uuid.uuid4(), other, TIME_ZONE),
        )
        await conn.execute(
            "INSERT INTO availability.visit_types (id, organization_id, display_name, specialty,"
            " duration_granules) VALUES (%s, %s, 'Visit', 'cardiology', 1)",
            (clinic.other_visit_type, other),
        )
        await conn.execute(
            "INSERT INTO availability.providers (id, organization_id, display_name,"
            " specialties) VALUES (%s, %s, 'Dr Other', ARRAY['cardiology'])",
            (clinic.other_provider, other),
        )
        await conn.execute(
            "INSERT INTO availability.provider_locations (organization_id, provider_id,"
            " location_id) VALUES (%s, %s, %s)",
            (other, clinic.other_provider, other_site),
        )
        await _template(
            conn, other, clinic.other_provider, other_site, today, [clinic.other_visit_type]
        )
    for org_id in (clinic.organization_id, clinic.other_organization_id):
        await materialize_organization(
            pool, str(org_id), now=datetime.now(UTC), context=EventContext(actor_id="test")
        )
    return clinic


async def _template(
    conn: Connection,
    org: uuid.UUID,
    provider: uuid.UUID,
    site: uuid.UUID,
    today: date,
    visit_types: list[uuid.UUID],
) -> None:
    template = uuid.uuid4()
    await conn.execute(
        "INSERT INTO availability.schedule_templates (id, organization_id, provider_id,"
        " location_id, effective_start_date) VALUES (%s, %s, %s, %s, %s)",
        (template, org, provider, site, today - timedelta(days=1)),
    )
    for day in range(1, 8):
        # 08:00-17:00 every day of the week.
        await conn.execute(
            "INSERT INTO availability.template_windows (organization_id, template_id,"
            " window_index, day_of_week, start_minute, end_minute)"
            " VALUES (%s, %s, %s, %s, 480, 1020)",
            (org, template, day - 1, day),
        )
    for visit_type in visit_types:
        await conn.execute(
            "INSERT INTO availability.template_visit_types (organization_id, template_id,"
            " visit_type_id) VALUES (%s, %s, %s)",
            (org, template, visit_type),
        )


# ---- reading what booking wrote ------------------------------------------------------------


async def outbox_position(pool: Pool) -> int:
    """The id of the newest booking outbox row (0 if none): read events written after it."""
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT coalesce(max(id), 0) FROM booking.outbox")
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def outbox_events(pool: Pool, after: int = 0) -> list[envelope_pb2.EventEnvelope]:
    """The booking outbox's envelopes written after row `after`, decoded, in row order."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT payload FROM booking.outbox WHERE id > %s ORDER BY id", (after,)
        )
        rows = await cursor.fetchall()
    return [envelope_pb2.EventEnvelope.FromString(bytes(row[0])) for row in rows]
