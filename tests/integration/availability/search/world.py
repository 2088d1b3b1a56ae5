"""A small random health system in the availability tables, and booking-like changes with events.

`World.seed` writes reference data and a week of granules in several time zones (around the
US daylight-saving change), with every status, versions above 1 and room reservations.
The change methods (`book`, `cancel`, `hold`, `release`, `block`, `reopen`, `add_granules`)
do what booking and materialization do: one transaction moves rows and bumps their versions,
then the matching slot event is published with the versions after the change, the way the
outbox relay would publish it.
"""

from __future__ import annotations

import asyncio
import random
import time as time_module
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.js import JetStreamContext

from availability_svc.domain import PatientKind
from availability_svc.geo import DistanceUnit
from availability_svc.index import GeoPoint, SortOrder
from availability_svc.projection import IndexBackend, Projection, load_reference
from availability_svc.reference_sql import ReferenceSqlBackend
from availability_svc.search_service import AvailabilityQuery
from availability_svc.verify import QueryDomain, compare_pages
from common import bus
from common.db import Connection, Pool
from medsched.events.v1 import envelope_pb2, slot_events_pb2

MIGRATIONS = Path(__file__).resolve().parents[4] / "availability_svc" / "migrations"
# A Thursday afternoon before the US switch to daylight saving time (Sunday 2026-03-08): the
# seeded week crosses it in New York and Chicago but not in London or Kolkata.
FIXED_NOW = datetime(2026, 3, 5, 15, 0, tzinfo=UTC)
NOW_S = int(FIXED_NOW.timestamp())
MAX_PAGES = 4
GRANULE = timedelta(minutes=15)
ZONES = ("America/New_York", "America/Chicago", "Europe/London", "Asia/Kolkata")
SPECIALTIES = ("cardiology", "dermatology", "pediatrics")
LANGUAGES = ("en", "es", "vi")
PLANS = ("plan_a", "plan_b", "plan_c", "plan_d")
STATUSES = ("OPEN",) * 14 + ("BLOCKED",) * 2 + ("HELD",) + ("BOOKED",) * 3


@dataclass(frozen=True)
class EventStream:
    """The test's own stream and subject root (`<root>.slots.<event>`)."""

    name: str
    root: str


@dataclass
class Granules:
    """Rows of one provider moved together, as a change returned them."""

    provider_id: str
    location_id: str
    rows: list[tuple[datetime, datetime, int]]  # start, end, version after the change


@dataclass
class World:
    """One seeded organisation (plus a second one that must never show up in its searches)."""

    pool: Pool
    js: JetStreamContext | None
    stream: EventStream | None
    rng: random.Random
    organization_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    other_organization_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    providers: list[str] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    location_zone: dict[str, str] = field(default_factory=dict)
    provider_locations: dict[str, list[str]] = field(default_factory=dict)
    resources: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    visit_types: list[str] = field(default_factory=list)
    appointments: dict[str, tuple[str, list[tuple[str, datetime, datetime]]]] = field(
        default_factory=dict
    )
    holds: dict[str, str] = field(default_factory=dict)
    last_sequence: int = 0
    published: list[tuple[str, str, bytes]] = field(default_factory=list)
    """Every event published: (kind, provider, payload), for replays."""
    hold_back: bool = False
    """Keep events in `held_back` instead of publishing (to publish them later, reordered)."""
    held_back: list[tuple[str, str, bytes]] = field(default_factory=list)

    # ---- seeding ---------------------------------------------------------------------------

    async def seed(self, *, providers: int = 10, locations: int = 5, days: int = 7) -> None:
        async with self.pool.connection() as conn, conn.transaction():
            await self._seed_organization(conn, self.organization_id, providers, locations, days)
            other = World(self.pool, None, None, random.Random(self.rng.random()))
            await other._seed_organization(conn, self.other_organization_id, 3, 2, days)

    async def _seed_organization(
        self, conn: Connection, org: str, n_providers: int, n_locations: int, days: int
    ) -> None:
        rng = self.rng
        await conn.execute(
            "INSERT INTO availability.organizations (id, display_name, time_zone)"
            " VALUES (%s, 'Org', 'America/New_York')",
            (org,),
        )
        for plan in PLANS:
            await conn.execute(
                "INSERT INTO availability.insurance_plans"
                " (organization_id, plan_id, display_name, payer_id) VALUES (%s, %s, %s, 'P1')",
                (org, plan, plan.upper()),
            )
        for n in range(n_locations):
            location = str(uuid.uuid4())
            zone = ZONES[n % len(ZONES)]
            self.locations.append(location)
            self.location_zone[location] = zone
            # Clustered within about 40 km, one location inactive.
            await conn.execute(
                "INSERT INTO availability.locations (id, organization_id, display_name,"
                " latitude, longitude, time_zone, active) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    location,
                    org,
                    f"Site {n}",
                    40.7 + rng.uniform(-0.2, 0.2),
                    -74.0 + rng.uniform(-0.2, 0.2),
                    zone,
                    n != n_locations - 1 or n_locations < 3,
                ),
            )
            kinds = ["exam_room"] * rng.randint(0, 3) + ["ultrasound"] * rng.randint(0, 1)
            self.resources[location] = []
            for k, kind in enumerate(kinds):
                resource = str(uuid.uuid4())
                self.resources[location].append((resource, kind))
                await conn.execute(
                    "INSERT INTO availability.resources (id, organization_id, location_id,"
                    " display_name, category, kind, active) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (
                        resource,
                        org,
                        location,
                        f"{kind} {k}",
                        "ROOM" if kind == "exam_room" else "EQUIPMENT",
                        kind,
                        rng.random() > 0.1,
                    ),
                )
        await self._seed_visit_types(conn, org)
        for n in range(n_providers):
            await self._seed_provider(conn, org, n, days)

    async def _seed_visit_types(self, conn: Connection, org: str) -> None:
        shapes = (
            (1, "ANY", ()),
            (2, "NEW", (("ultrasound", 1),)),
            (3, "ANY", (("exam_room", 2),)),
            (2, "RETURNING", (("exam_room", 1),)),
            (4, "ANY", ()),
        )
        for n, (duration, kind, needs) in enumerate(shapes):
            visit_type = str(uuid.uuid4())
            self.visit_types.append(visit_type)
            await conn.execute(
                "INSERT INTO availability.visit_types (id, organization_id, display_name,"
                " specialty, duration_granules, patient_kind) VALUES (%s, %s, %s, %s, %s, %s)",
                (visit_type, org, f"Visit {n}", SPECIALTIES[n % 3], duration, kind),
            )
            for need_kind, count in needs:
                await conn.execute(
                    "INSERT INTO availability.visit_type_resource_needs (organization_id,"
                    " visit_type_id, kind, category, count) VALUES (%s, %s, %s, %s, %s)",
                    (org, visit_type, need_kind, "ROOM", count),
                )
        # One visit type only at the first two locations.
        for location in self.locations[:2]:
            await conn.execute(
                "INSERT INTO availability.visit_type_locations"
                " (organization_id, visit_type_id, location_id) VALUES (%s, %s, %s)",
                (org, self.visit_types[2], location),
            )

    async def _seed_provider(self, conn: Connection, org: str, n: int, days: int) -> None:
        rng = self.rng
        provider = str(uuid.uuid4())
        self.providers.append(provider)
        await conn.execute(
            "INSERT INTO availability.providers (id, organization_id, display_name, specialties,"
            " languages, accepting_new_patients, active) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                provider,
                org,
                f"Dr. {n}",
                rng.sample(SPECIALTIES, rng.randint(1, 2)),
                rng.sample(LANGUAGES, rng.randint(0, 2)),
                rng.random() > 0.2,
                n % 7 != 6,
            ),
        )
        for plan in rng.sample(PLANS, rng.randint(1, 3)):
            await conn.execute(
                "INSERT INTO availability.provider_plans (organization_id, provider_id, plan_id)"
                " VALUES (%s, %s, %s)",
                (org, provider, plan),
            )
        places = rng.sample(self.locations, rng.randint(1, min(2, len(self.locations))))
        self.provider_locations[provider] = places
        for location in places:
            await conn.execute(
                "INSERT INTO availability.provider_locations (organization_id, provider_id,"
                " location_id) VALUES (%s, %s, %s)",
                (org, provider, location),
            )
            template = str(uuid.uuid4())
            await conn.execute(
                "INSERT INTO availability.schedule_templates (id, organization_id, provider_id,"
                " location_id, effective_start_date) VALUES (%s, %s, %s, %s, %s)",
                (template, org, provider, location, date(2026, 1, 1)),
            )
            for visit_type in rng.sample(self.visit_types, rng.randint(1, len(self.visit_types))):
                await conn.execute(
                    "INSERT INTO availability.template_visit_types (organization_id,"
                    " template_id, visit_type_id) VALUES (%s, %s, %s)",
                    (org, template, visit_type),
                )
        await self._seed_granules(conn, org, provider, places, days)

    async def _seed_granules(
        self, conn: Connection, org: str, provider: str, places: list[str], days: int
    ) -> None:
        rng = self.rng
        taken: set[datetime] = set()
        rows = []
        first_day = FIXED_NOW.date() - timedelta(days=1)
        for offset in range(days):
            day = first_day + timedelta(days=offset)
            for location in places:
                zone = ZoneInfo(self.location_zone[location])
                start_hour = rng.choice((0, 1, 7, 8, 9, 13, 20))
                hours = rng.randint(2, 6)
                for start in _local_window(day, start_hour, hours, zone):
                    if start in taken:
                        continue  # a provider is in one place at a time
                    taken.add(start)
                    status = rng.choice(STATUSES)
                    version = 1 if status == "OPEN" and rng.random() < 0.7 else rng.randint(2, 5)
                    rows.append((provider, start, start + GRANULE, location, org, status, version))
        async with (
            conn.cursor() as cursor,
            cursor.copy(
                "COPY availability.slots (provider_id, start_time, end_time, location_id,"
                " organization_id, status, version) FROM STDIN"
            ) as copy,
        ):
            for row in rows:
                await copy.write_row(row)
        for _, start, end, location, _, status, _ in rows:
            reservable = [r for r, _ in self.resources[location]]
            if status == "BOOKED" and reservable and rng.random() < 0.5:
                # Some reservations cover part of a granule only.
                lower = start + timedelta(minutes=rng.choice((0, 0, 5)))
                await conn.execute(
                    "INSERT INTO availability.resource_busy (resource_id, appointment_id, during)"
                    " VALUES (%s, %s, tstzrange(%s, %s))",
                    (rng.choice(reservable), uuid.uuid4(), lower, end),
                )

    # ---- changes with their events ------------------------------------------------------------

    async def rows(self, status: str, limit: int = 50) -> list[tuple[str, datetime, str]]:
        """Some (provider, start, location) rows of this organisation with `status`."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT provider_id, start_time, location_id FROM availability.slots"
                " WHERE organization_id = %s AND status = %s AND start_time >= %s"
                " ORDER BY random() LIMIT %s",
                (self.organization_id, status, FIXED_NOW, limit),
            )
            return [(str(p), s, str(loc)) for p, s, loc in await cursor.fetchall()]

    async def _move(
        self,
        conn: Connection,
        provider: str,
        starts: Sequence[datetime],
        from_statuses: Sequence[str],
        to_status: str,
        *,
        appointment: str | None = None,
        hold: str | None = None,
    ) -> Granules | None:
        cursor = await conn.execute(
            "UPDATE availability.slots SET status = %s, version = version + 1,"
            " appointment_id = %s, hold_id = %s, updated_at = now()"
            " WHERE provider_id = %s AND start_time = ANY(%s) AND status = ANY(%s)"
            " RETURNING start_time, end_time, version, location_id",
            (to_status, appointment, hold, provider, list(starts), list(from_statuses)),
        )
        rows = await cursor.fetchall()
        if len(rows) != len(starts) or len({str(r[3]) for r in rows}) != 1:
            return None
        ordered = sorted((r[0], r[1], int(r[2])) for r in rows)
        return Granules(provider, str(rows[0][3]), ordered)

    async def book(
        self, provider: str, start: datetime, granules: int, resources: Sequence[str] = ()
    ) -> str | None:
        """Book `granules` granules from `start` (OPEN ones only); return the appointment."""
        appointment = str(uuid.uuid4())
        starts = [start + GRANULE * k for k in range(granules)]
        end = starts[-1] + GRANULE
        async with self.pool.connection() as conn, conn.transaction():
            moved = await self._move(
                conn, provider, starts, ("OPEN",), "BOOKED", appointment=appointment
            )
            if moved is None:
                raise psycopg.Rollback()
            for resource in resources:
                await conn.execute(
                    "INSERT INTO availability.resource_busy (resource_id, appointment_id, during)"
                    " VALUES (%s, %s, tstzrange(%s, %s))",
                    (resource, appointment, start, end),
                )
        if moved is None:
            return None
        spans = [(r, start, end) for r in resources]
        self.appointments[appointment] = (provider, spans)
        event = slot_events_pb2.SlotsBooked(
            provider_id=provider,
            location_id=moved.location_id,
            appointment_id=appointment,
            granules=_granules(moved),
            resources=[_span(r, s, e) for r, s, e in spans],
        )
        await self.publish("booked", provider, event)
        return appointment

    async def cancel(self, appointment: str) -> bool:
        provider, spans = self.appointments.pop(appointment)
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "SELECT start_time FROM availability.slots WHERE appointment_id = %s",
                (appointment,),
            )
            starts = [r[0] for r in await cursor.fetchall()]
            moved = await self._move(conn, provider, starts, ("BOOKED",), "OPEN")
            if moved is None:
                raise psycopg.Rollback()
            await conn.execute(
                "DELETE FROM availability.resource_busy WHERE appointment_id = %s", (appointment,)
            )
        if moved is None:
            self.appointments[appointment] = (provider, spans)
            return False
        event = slot_events_pb2.SlotFreed(
            provider_id=provider,
            location_id=moved.location_id,
            start_time=_ts(moved.rows[0][0]),
            end_time=_ts(moved.rows[-1][1]),
            granules=_granules(moved),
            resources=[_span(r, s, e) for r, s, e in spans],
            cause=slot_events_pb2.SlotFreed.CANCELLATION,
            appointment_id=appointment,
        )
        await self.publish("freed", provider, event)
        return True

    async def hold(self, provider: str, starts: Sequence[datetime], expire: datetime) -> str | None:
        hold = str(uuid.uuid4())
        async with self.pool.connection() as conn, conn.transaction():
            moved = await self._move(conn, provider, starts, ("OPEN",), "HELD", hold=hold)
            if moved is None:
                raise psycopg.Rollback()
        if moved is None:
            return None
        self.holds[hold] = provider
        event = slot_events_pb2.SlotsHeld(
            provider_id=provider,
            location_id=moved.location_id,
            hold_id=hold,
            granules=_granules(moved),
            expire_time=_ts(expire),
        )
        await self.publish("held", provider, event)
        return hold

    async def release(self, hold: str) -> bool:
        provider = self.holds.pop(hold)
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "SELECT start_time FROM availability.slots WHERE hold_id = %s", (hold,)
            )
            starts = [r[0] for r in await cursor.fetchall()]
            moved = await self._move(conn, provider, starts, ("HELD",), "OPEN")
            if moved is None:
                raise psycopg.Rollback()
        if moved is None:
            self.holds[hold] = provider
            return False
        event = slot_events_pb2.SlotsReleased(
            provider_id=provider,
            location_id=moved.location_id,
            hold_id=hold,
            granules=_granules(moved),
            reason=slot_events_pb2.SlotsReleased.RELEASED,
        )
        await self.publish("released", provider, event)
        return True

    async def block(self, provider: str, starts: Sequence[datetime]) -> bool:
        async with self.pool.connection() as conn, conn.transaction():
            moved = await self._move(conn, provider, starts, ("OPEN",), "BLOCKED")
            if moved is None:
                raise psycopg.Rollback()
        if moved is None:
            return False
        event = slot_events_pb2.SlotsBlocked(
            provider_id=provider, location_id=moved.location_id, granules=_granules(moved)
        )
        await self.publish("blocked", provider, event)
        return True

    async def reopen(self, provider: str, starts: Sequence[datetime]) -> bool:
        """BLOCKED granules become OPEN again (an exception removed)."""
        async with self.pool.connection() as conn, conn.transaction():
            moved = await self._move(conn, provider, starts, ("BLOCKED",), "OPEN")
            if moved is None:
                raise psycopg.Rollback()
        if moved is None:
            return False
        await self.publish("materialized", provider, self._materialized(moved))
        return True

    async def add_granules(self, provider: str, location: str, starts: Sequence[datetime]) -> bool:
        """New OPEN granules (added hours) where the provider has none."""
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "INSERT INTO availability.slots (provider_id, start_time, end_time, location_id,"
                " organization_id, status) SELECT %s, s, s + %s, %s, %s, 'OPEN'"
                " FROM unnest(%s::timestamptz[]) AS s ON CONFLICT DO NOTHING"
                " RETURNING start_time, end_time, version",
                (provider, GRANULE, location, self.organization_id, list(starts)),
            )
            rows = sorted((r[0], r[1], int(r[2])) for r in await cursor.fetchall())
        if not rows:
            return False
        await self.publish(
            "materialized", provider, self._materialized(Granules(provider, location, rows))
        )
        return True

    def _materialized(self, moved: Granules) -> slot_events_pb2.SlotsMaterialized:
        zone = ZoneInfo(self.location_zone.get(moved.location_id, "UTC"))
        return slot_events_pb2.SlotsMaterialized(
            provider_id=moved.provider_id,
            location_id=moved.location_id,
            local_date=moved.rows[0][0].astimezone(zone).date().isoformat(),
            granules=_granules(moved),
        )

    # ---- publishing ----------------------------------------------------------------------------

    async def publish(self, kind: str, provider: str, event: object) -> int:
        envelope = envelope_pb2.EventEnvelope(
            event_id=str(uuid.uuid4()),
            event_type=f"slots.{kind}",
            aggregate_type="slots",
            aggregate_id=provider,
            organization_id=self.organization_id,
        )
        envelope.occurred_at.FromDatetime(datetime.now(UTC))
        field_name = {
            "materialized": "slots_materialized",
            "blocked": "slots_blocked",
            "held": "slots_held",
            "released": "slots_released",
            "booked": "slots_booked",
            "freed": "slot_freed",
        }[kind]
        getattr(envelope, field_name).CopyFrom(event)
        payload = envelope.SerializeToString()
        self.published.append((kind, provider, payload))
        if self.hold_back:
            self.held_back.append((kind, provider, payload))
            return 0
        return await self.send(kind, provider, payload)

    async def flush(self, order: Sequence[int]) -> None:
        """Publish the held-back events in the given order (indexes into `held_back`)."""
        events, self.held_back, self.hold_back = self.held_back, [], False
        for position in order:
            await self.send(*events[position])

    async def send(self, kind: str, provider: str, payload: bytes) -> int:
        """Publish a payload as a new message (a replay of an old one gets a new id)."""
        assert self.js is not None
        assert self.stream is not None
        ack = await bus.publish(
            self.js,
            f"{self.stream.root}.slots.{kind}",
            payload,
            msg_id=str(uuid.uuid4()),
            headers={
                bus.HEADER_EVENT_TYPE: f"slots.{kind}",
                bus.HEADER_AGGREGATE_TYPE: "slots",
                bus.HEADER_AGGREGATE_ID: provider,
            },
        )
        self.last_sequence = max(self.last_sequence, ack.seq)
        return ack.seq


def _local_window(day: date, start_hour: int, hours: int, zone: ZoneInfo) -> list[datetime]:
    """UTC starts of the granules of local [start_hour, start_hour + hours) on `day`, as
    materialization lays them: a skipped local hour has none, a repeated one has both."""
    local_start = datetime.combine(day, time(start_hour))
    start = local_start.replace(tzinfo=zone).astimezone(UTC)
    end = (local_start + timedelta(hours=hours)).replace(tzinfo=zone).astimezone(UTC)
    starts = []
    while start < end:
        starts.append(start)
        start += GRANULE
    return starts


def _ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _granules(moved: Granules) -> list[slot_events_pb2.Granule]:
    return [
        slot_events_pb2.Granule(
            slot_id=f"{moved.provider_id}_{start:%Y%m%dT%H%MZ}",
            start_time=_ts(start),
            end_time=_ts(end),
            version=version,
        )
        for start, end, version in moved.rows
    ]


def _span(resource: str, start: datetime, end: datetime) -> slot_events_pb2.ResourceSpan:
    return slot_events_pb2.ResourceSpan(
        resource_id=resource, start_time=_ts(start), end_time=_ts(end)
    )


# ---- helpers for tests ----------------------------------------------------------------------


def make_projection(pool: Pool, js: JetStreamContext | None, stream: EventStream) -> Projection:
    """A projection of the test stream, its grid placed around the seeded week."""
    return Projection(
        pool,
        js,
        stream=stream.name,
        subjects=(f"{stream.root}.slots.>",),
        clock=lambda: FIXED_NOW,
    )


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], *, timeout_s: float = 10.0, what: str
) -> None:
    """Poll `condition` until it holds; fail after `timeout_s`."""
    deadline = time_module.monotonic() + timeout_s
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time_module.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)


async def caught_up(projection: Projection, world: World) -> None:
    """Wait until the projection has handled everything the world published."""
    await wait_for(
        lambda: projection.position >= world.last_sequence,
        what=f"the projection to reach stream sequence {world.last_sequence}",
    )


def queries(domain: QueryDomain, now_s: int = NOW_S) -> st.SearchStrategy[AvailabilityQuery]:
    """Searches of an organisation, made at `now_s`."""

    @st.composite
    def build(draw: st.DrawFn) -> AvailabilityQuery:
        date_from = domain.today + timedelta(days=draw(st.integers(-1, 6)))
        date_to = date_from + timedelta(days=draw(st.sampled_from((0, 0, 1, 2, 6, 13))))
        near = draw(
            st.none()
            | st.builds(GeoPoint, st.floats(40.4, 41.0), st.floats(-74.3, -73.7))
            | st.sampled_from(domain.points)
        )
        radius, unit = None, DistanceUnit.MI
        if near is not None and draw(st.booleans()):
            radius = draw(st.floats(0.5, 40.0))
            unit = draw(st.sampled_from(DistanceUnit))
        time_from = time_to = None
        if draw(st.integers(0, 3)) == 0:
            first, second = sorted(
                draw(st.lists(st.integers(0, 95), min_size=2, max_size=2, unique=True))
            )
            time_from = time(first // 4, first % 4 * 15)
            time_to = None if second == 95 else time(second // 4, second % 4 * 15)
        return AvailabilityQuery(
            organization_id=domain.organization_id,
            date_from=date_from,
            date_to=date_to,
            not_before_utc=now_s + draw(st.sampled_from((0, 0, 1, 3600, 86_400))),
            specialty=draw(st.none() | st.sampled_from(domain.specialties)),
            provider_ids=draw(
                st.none() | st.frozensets(st.sampled_from(domain.provider_ids), max_size=3)
            ),
            location_ids=draw(
                st.none()
                | st.frozensets(st.sampled_from(domain.location_ids), min_size=1, max_size=2)
            ),
            near=near,
            radius=radius,
            unit=unit,
            plan_id=draw(st.none() | st.sampled_from(domain.plans)),
            language=draw(st.none() | st.sampled_from(domain.languages)),
            visit_type_id=draw(st.none() | st.sampled_from(domain.visit_types)),
            time_from=time_from,
            time_to=time_to,
            patient_kind=draw(st.sampled_from(PatientKind)),
            sort=SortOrder.DISTANCE
            if near is not None and draw(st.booleans())
            else SortOrder.SOONEST,
            limit=draw(st.sampled_from((1, 2, 5, 20, 100))),
        )

    return build()


async def domain_of(pool: Pool, world: World) -> QueryDomain:
    async with pool.connection() as conn:
        data = await load_reference(conn)
    return QueryDomain.of(data, world.organization_id, FIXED_NOW)


async def check_random_searches(
    projection: Projection,
    pool: Pool,
    domain: QueryDomain,
    examples: int,
    now_s: int = NOW_S,
) -> int:
    """Compare `examples` hypothesis searches on both backends; return the offers compared.

    Hypothesis drives a synchronous test function, so it runs in a worker thread and hands
    each comparison to this event loop, where the index and the pool live.
    """
    loop = asyncio.get_running_loop()
    index, reference = IndexBackend(projection), ReferenceSqlBackend(pool)
    compared = [0]

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(query=queries(domain, now_s))
    def agree(query: AvailabilityQuery) -> None:
        future = asyncio.run_coroutine_threadsafe(
            compare_pages(index, reference, query, MAX_PAGES), loop
        )
        comparison = future.result(timeout=60)
        assert comparison.mismatch is None, comparison.mismatch.describe()
        compared[0] += comparison.offers

    await asyncio.to_thread(agree)
    return compared[0]
