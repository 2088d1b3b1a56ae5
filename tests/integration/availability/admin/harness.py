"""gRPC helpers for the ScheduleAdminService tests: signed callers, errors, small fixtures."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import google.rpc.error_details_pb2 as error_details_pb2  # type: ignore[import-untyped, unused-ignore]
import grpc
import grpc.aio
import pytest

from availability_svc.admin_server import SERVICE_NAME, ScheduleAdminServicer
from availability_svc.admin_service import ScheduleAdmin
from common.auth import PRINCIPAL_METADATA_KEY, Principal, PrincipalSigner, Role
from common.db import Pool
from common.grpc_client import status_details
from common.grpc_server import Registration, create_server
from medsched.availability.v1 import schedule_admin_service_pb2 as api
from medsched.availability.v1 import schedule_admin_service_pb2_grpc as api_grpc
from medsched.availability.v1 import schedule_resources_pb2 as res
from medsched.common.v1 import types_pb2


@contextlib.asynccontextmanager
async def serving_admin(pool: Pool, now: datetime) -> AsyncIterator[Caller]:
    """A real gRPC server with the admin servicer (clock fixed at `now`) and a client."""
    signer = PrincipalSigner(secrets.token_bytes(32))
    servicer = ScheduleAdminServicer(lambda: ScheduleAdmin(pool, clock=lambda: now))
    handle = await create_server(
        service_name="availability",
        listen="127.0.0.1:0",
        tls=None,
        servicers=[
            Registration.of(
                api_grpc.add_ScheduleAdminServiceServicer_to_server, servicer, SERVICE_NAME
            )
        ],
        principal_verifier=signer,
    )
    await handle.start()
    try:
        async with grpc.aio.insecure_channel(handle.address) as chan:
            yield Caller(api_grpc.ScheduleAdminServiceStub(chan), signer)
    finally:
        await handle.server.stop(0)


@dataclass
class Caller:
    """The admin stub and a way to sign principals for its calls."""

    stub: api_grpc.ScheduleAdminServiceAsyncStub
    signer: PrincipalSigner

    def as_(self, principal: Principal) -> tuple[tuple[str, str], ...]:
        return ((PRINCIPAL_METADATA_KEY, self.signer.sign(principal, now=datetime.now(UTC))),)


ADMIN = Principal(subject="ops-1", role=Role.ADMIN)


def violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    status = status_details(error)
    assert status is not None
    found: dict[str, str] = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found.update({v.field: v.description for v in bad.field_violations})
    return found


async def expect_error(code: grpc.StatusCode, call: Callable[[], object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call()  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    return info.value


async def new_org(c: Caller, name: str = "Riverside Health") -> res.Organization:
    return await c.stub.CreateOrganization(
        api.CreateOrganizationRequest(
            organization=res.Organization(display_name=name, time_zone="America/New_York")
        ),
        metadata=c.as_(ADMIN),
    )


async def new_location(c: Caller, org_id: str, name: str = "Midtown") -> res.Location:
    return await c.stub.CreateLocation(
        api.CreateLocationRequest(
            organization_id=org_id,
            location=res.Location(
                display_name=name,
                coordinates=types_pb2.GeoPoint(latitude=40.754, longitude=-73.984),
                address=res.FacilityAddress(address_lines=["1 Main St"], locality="New York"),
            ),
        ),
        metadata=c.as_(ADMIN),
    )


async def new_visit_type(c: Caller, org_id: str) -> res.VisitType:
    return await c.stub.CreateVisitType(
        api.CreateVisitTypeRequest(
            organization_id=org_id,
            visit_type=res.VisitType(
                display_name="Follow-up", specialty="cardiology", duration_granules=2
            ),
        ),
        metadata=c.as_(ADMIN),
    )


async def new_provider(c: Caller, org_id: str, location_ids: list[str]) -> res.Provider:
    return await c.stub.CreateProvider(
        api.CreateProviderRequest(
            organization_id=org_id,
            provider=res.Provider(
                display_name="Dr. Ana Ruiz", specialties=["cardiology"], location_ids=location_ids
            ),
        ),
        metadata=c.as_(ADMIN),
    )


def window(day: types_pb2.DayOfWeek.ValueType, start: str, end: str) -> res.TemplateWindow:
    return res.TemplateWindow(day_of_week=day, start_time=start, end_time=end)
