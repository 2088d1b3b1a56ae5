"""`SearchAvailability` over gRPC, in-process: results, paging, field errors, readiness."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import google.rpc.error_details_pb2 as error_details_pb2  # type: ignore[import-untyped, unused-ignore]
import grpc
import grpc.aio
import psycopg
import pytest
from psycopg import sql

from availability_svc.main import SearchReadModel
from availability_svc.projection import IndexBackend, Projection
from availability_svc.search_server import search_registration
from availability_svc.search_service import SearchService, parse_slot_id
from common.db import Pool, open_pool
from common.grpc_client import status_details
from common.grpc_server import ServerHandle, create_server
from common.migrations import migrate
from medsched.availability.v1 import availability_service_pb2 as pb
from medsched.availability.v1 import availability_service_pb2_grpc as pb_grpc
from medsched.common.v1 import types_pb2
from tests.conftest import Servers
from tests.integration.availability.search.world import FIXED_NOW, MIGRATIONS, World

FIRST_DAY = FIXED_NOW.date().isoformat()
LAST_DAY = (FIXED_NOW.date() + timedelta(days=5)).isoformat()


@dataclass
class Served:
    handle: ServerHandle
    stub: pb_grpc.AvailabilityServiceAsyncStub
    world: World


async def serve(service: SearchService) -> tuple[ServerHandle, grpc.aio.Channel]:
    handle = await create_server(
        service_name="availability",
        listen="127.0.0.1:0",
        tls=None,
        servicers=[search_registration(service)],
        principal_verifier=None,
    )
    await handle.start()
    await handle.set_serving()
    return handle, grpc.aio.insecure_channel(handle.address)


@pytest.fixture(scope="module")
async def module_pool(stack: Servers) -> AsyncIterator[Pool]:
    """One seeded database for the whole module: these tests only read."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    async with await psycopg.AsyncConnection.connect(stack.admin_url(), autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = stack.url_for_database(name)
    await migrate(url, "availability", MIGRATIONS)
    db_pool = await open_pool(url, min_size=1, max_size=4, name="test-search-grpc")
    try:
        yield db_pool
    finally:
        await db_pool.close()
        async with await psycopg.AsyncConnection.connect(
            stack.admin_url(), autocommit=True
        ) as admin:
            await admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="module")
async def served(module_pool: Pool) -> AsyncIterator[Served]:
    world = World(module_pool, None, None, random.Random(20260305))
    await world.seed()
    projection = Projection(module_pool, None, clock=lambda: FIXED_NOW)
    await projection.build()
    service = SearchService(
        IndexBackend(projection),
        catalog=projection.catalog,
        clock=lambda: FIXED_NOW,
        freshness=lambda: projection.index_time,
    )
    handle, channel = await serve(service)
    try:
        yield Served(handle, pb_grpc.AvailabilityServiceStub(channel), world)
    finally:
        await channel.close(None)
        await handle.stop(0)


def request(world: World, **fields: object) -> pb.SearchAvailabilityRequest:
    base: dict[str, object] = {
        "organization_id": world.organization_id,
        "from_date": FIRST_DAY,
        "to_date": LAST_DAY,
    }
    base.update(fields)
    return pb.SearchAvailabilityRequest(**base)  # type: ignore[arg-type]


async def location_point(pool: Pool, location: str) -> str:
    async with pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT latitude, longitude FROM availability.locations WHERE id = %s",
                (location,),
            )
        ).fetchone()
    assert row is not None
    return f"{row[0]},{row[1]}"


async def test_results_carry_provider_location_distance_and_local_times(
    served: Served, module_pool: Pool
) -> None:
    point = await location_point(module_pool, served.world.locations[0])
    response = await served.stub.SearchAvailability(
        request(
            served.world,
            location=point,
            radius="30mi",
            sort=pb.SearchAvailabilityRequest.DISTANCE,
            limit=25,
        ),
        timeout=5,
    )
    assert len(response.slots) == 25
    assert response.next_page_token
    assert response.index_time.ToDatetime(tzinfo=UTC) <= datetime.now(UTC)
    distances = [s.location.distance.value for s in response.slots]
    assert distances == sorted(distances)
    assert distances[0] == 0.0  # the search is centred on the first location
    for slot in response.slots:
        assert slot.location.distance.unit == types_pb2.MILES
        assert slot.location.distance.value <= 30.0
        assert slot.provider.display_name.startswith("Dr. ")
        assert slot.provider.specialties
        start = slot.start_time.ToDatetime(tzinfo=UTC)
        assert slot.end_time.ToDatetime(tzinfo=UTC) - start == timedelta(minutes=15)
        local = start.astimezone(ZoneInfo(slot.time_zone))
        assert slot.local_start_time == local.isoformat()
        assert datetime.fromisoformat(slot.local_end_time) - local == timedelta(minutes=15)
        assert parse_slot_id(slot.slot_id) == (slot.provider.provider_id, start)
        assert not slot.HasField("visit_type")


async def test_visit_type_results_are_sized_for_the_visit(served: Served) -> None:
    long_visit = served.world.visit_types[4]  # four granules, no rooms needed
    response = await served.stub.SearchAvailability(
        request(served.world, visit_type_id=long_visit, limit=10), timeout=5
    )
    assert response.slots
    for slot in response.slots:
        assert slot.visit_type.visit_type_id == long_visit
        assert slot.visit_type.duration_minutes == 60
        length = slot.end_time.ToDatetime() - slot.start_time.ToDatetime()
        assert length == timedelta(minutes=60)


async def test_paging_returns_every_result_once_in_order(served: Served) -> None:
    everything = await served.stub.SearchAvailability(
        request(served.world, specialty="cardiology", to_date=FIRST_DAY, limit=100), timeout=5
    )
    assert 7 < len(everything.slots) < 100
    assert everything.next_page_token == ""
    paged: list[str] = []
    token = ""
    while True:
        page = await served.stub.SearchAvailability(
            request(
                served.world, specialty="cardiology", to_date=FIRST_DAY, limit=7, page_token=token
            ),
            timeout=5,
        )
        paged.extend(f"{s.slot_id}@{s.location.location_id}" for s in page.slots)
        token = page.next_page_token
        if not token:
            break
    assert paged == [f"{s.slot_id}@{s.location.location_id}" for s in everything.slots]


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    status = status_details(error)
    assert status is not None
    found = {}
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            found.update({v.field: v.description for v in bad_request.field_violations})
    return found


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"location": "91,0"}, "location", "latitude must be between -90 and 90"),
        ({"location": "40.7;-74"}, "location", "must be lat,lon in decimal degrees"),
        ({"location": "40.7,-74", "radius": "10 parsecs"}, "radius", "followed by mi or km"),
        ({"location": "40.7,-74", "radius": "0km"}, "radius", "greater than zero"),
        ({"location": "40.7,-74", "radius": "300mi"}, "radius", "at most 250 miles"),
        ({"radius": "10mi"}, "radius", "needs location"),
        ({"from_date": "2026-03-10", "to_date": "2026-03-09"}, "to", "must not be before from"),
        ({"from_date": "2026-03-10", "to_date": "2026-09-09"}, "to", "at most 90 days after"),
        ({"from_date": "03/10/2026"}, "from", "must be a date YYYY-MM-DD"),
        ({"limit": 101}, "limit", "between 1 and 100"),
        ({"limit": -3}, "limit", "between 1 and 100"),
        ({"page_token": "not-a-token"}, "page_token", "not a page token this service issued"),
        ({"earliest_start_time": "25:00"}, "earliest_start_time", "HH:MM"),
        (
            {"earliest_start_time": "14:00", "latest_start_time": "09:00"},
            "latest_start_time",
            "after earliest_start_time",
        ),
        ({"sort": pb.SearchAvailabilityRequest.DISTANCE}, "sort", "DISTANCE needs location"),
        ({"provider_ids": ["not-an-id"]}, "provider_ids[0]", "not a valid id"),
    ],
)
async def test_a_bad_parameter_is_refused_naming_it(
    served: Served, fields: dict[str, object], field: str, says: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.stub.SearchAvailability(request(served.world, **fields), timeout=5)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    found = violations(refused.value)
    assert says in found[field]


async def test_every_bad_parameter_is_reported_at_once(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.stub.SearchAvailability(
            request(served.world, location="north", limit=1000, to_date="2026-03-01"), timeout=5
        )
    assert set(violations(refused.value)) == {"location", "limit", "to"}


async def test_a_page_token_is_refused_with_other_filters(served: Served) -> None:
    first = await served.stub.SearchAvailability(request(served.world, limit=2), timeout=5)
    assert first.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.stub.SearchAvailability(
            request(
                served.world, limit=2, specialty="pediatrics", page_token=first.next_page_token
            ),
            timeout=5,
        )
    assert "different filters" in violations(refused.value)["page_token"]


async def test_an_unknown_visit_type_is_not_found(served: Served) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await served.stub.SearchAvailability(
            request(served.world, visit_type_id="6f1c9a4e-0000-4000-8000-000000000000"), timeout=5
        )
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND


async def test_searches_are_unavailable_until_the_index_is_built() -> None:
    read_model = SearchReadModel()
    service = SearchService(read_model, catalog=read_model.catalog, clock=lambda: FIXED_NOW)
    handle, channel = await serve(service)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.AvailabilityServiceStub(channel).SearchAvailability(
                pb.SearchAvailabilityRequest(), timeout=5
            )
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        await channel.close(None)
        await handle.stop(0)
