"""ScheduleAdminService over a real gRPC server and PostgreSQL: CRUD, validation, tenancy."""

from __future__ import annotations

import uuid

import grpc
import grpc.aio
from google.protobuf import field_mask_pb2

from common.auth import Principal, Role
from common.db import Pool
from medsched.availability.v1 import schedule_admin_service_pb2 as api
from medsched.availability.v1 import schedule_resources_pb2 as res
from medsched.common.v1 import types_pb2

from .harness import ADMIN, Caller, expect_error, new_location, new_org, violations


async def test_location_round_trip_and_masked_update(caller: Caller) -> None:
    org = await new_org(caller)
    created = await new_location(caller, org.organization_id)
    fetched = await caller.stub.GetLocation(
        api.GetLocationRequest(
            organization_id=org.organization_id, location_id=created.location_id
        ),
        metadata=caller.as_(ADMIN),
    )
    updated = await caller.stub.UpdateLocation(
        api.UpdateLocationRequest(
            organization_id=org.organization_id,
            location_id=created.location_id,
            location=res.Location(display_name="Midtown West", time_zone="ignored/not masked"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=caller.as_(ADMIN),
    )

    assert fetched == created
    assert (created.time_zone, created.active) == ("America/New_York", True)
    assert list(created.address.address_lines) == ["1 Main St"]
    assert updated.display_name == "Midtown West"
    assert updated.time_zone == "America/New_York"  # not in the mask: unchanged
    assert updated.coordinates == created.coordinates


async def test_invalid_template_reports_every_bad_field_and_stores_nothing(
    caller: Caller,
) -> None:
    org = await new_org(caller)
    loc = await new_location(caller, org.organization_id)
    provider = await caller.stub.CreateProvider(
        api.CreateProviderRequest(
            organization_id=org.organization_id,
            provider=res.Provider(
                display_name="Dr. Ana Ruiz",
                specialties=["cardiology"],
                location_ids=[loc.location_id],
            ),
        ),
        metadata=caller.as_(ADMIN),
    )
    error = await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: caller.stub.CreateScheduleTemplate(
            api.CreateScheduleTemplateRequest(
                organization_id=org.organization_id,
                template=res.ScheduleTemplate(
                    provider_id=provider.provider_id,
                    location_id=loc.location_id,
                    effective_start_date="2026-13-01",
                    windows=[
                        res.TemplateWindow(
                            day_of_week=types_pb2.MONDAY, start_time="08:00", end_time="12:00"
                        ),
                        res.TemplateWindow(
                            day_of_week=types_pb2.TUESDAY, start_time="8am", end_time="25:00"
                        ),
                    ],
                ),
            ),
            metadata=caller.as_(ADMIN),
        ),
    )
    listed = await caller.stub.ListScheduleTemplates(
        api.ListScheduleTemplatesRequest(organization_id=org.organization_id),
        metadata=caller.as_(ADMIN),
    )

    assert violations(error) == {
        "template.effective_start_date": "must be a date YYYY-MM-DD",
        "template.windows[1].start_time": "must be HH:MM",
        "template.windows[1].end_time": "must be a time of day between 00:00 and 24:00",
    }
    assert list(listed.templates) == []


async def test_off_grid_window_and_unknown_plan_are_named(caller: Caller) -> None:
    org = await new_org(caller)
    loc = await new_location(caller, org.organization_id)
    error = await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: caller.stub.CreateProvider(
            api.CreateProviderRequest(
                organization_id=org.organization_id,
                provider=res.Provider(
                    display_name="Dr. B",
                    npi="1234567890",
                    specialties=["Cardiology"],
                    accepted_plan_ids=["no_such_plan"],
                    location_ids=[loc.location_id],
                ),
            ),
            metadata=caller.as_(ADMIN),
        ),
    )
    assert violations(error) == {
        "provider.npi": "must be 10 digits with a valid check digit",
        "provider.specialties[0]": "must be a lower snake case code",
    }


async def test_update_mask_refuses_immutable_and_unknown_paths(caller: Caller) -> None:
    org = await new_org(caller)
    error = await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: caller.stub.UpdateOrganization(
            api.UpdateOrganizationRequest(
                organization_id=org.organization_id,
                organization=res.Organization(granule_minutes=30),
                update_mask=field_mask_pb2.FieldMask(paths=["granule_minutes", "colour"]),
            ),
            metadata=caller.as_(ADMIN),
        ),
    )
    assert violations(error) == {
        "update_mask.paths[0]": "organization.granule_minutes cannot be changed",
        "update_mask.paths[1]": "organization.colour is not a field that can be updated",
    }


async def test_other_organizations_records_are_not_found_for_staff(caller: Caller) -> None:
    mine = await new_org(caller, "Mine")
    theirs = await new_org(caller, "Theirs")
    their_location = await new_location(caller, theirs.organization_id)
    staff = Principal(
        subject="staff-1", role=Role.STAFF, organization_ids=frozenset({mine.organization_id})
    )

    await expect_error(
        grpc.StatusCode.NOT_FOUND,
        lambda: caller.stub.GetLocation(
            api.GetLocationRequest(
                organization_id=theirs.organization_id, location_id=their_location.location_id
            ),
            metadata=caller.as_(staff),
        ),
    )
    # Their location id under my organisation: not found either (ids do not cross tenants).
    await expect_error(
        grpc.StatusCode.NOT_FOUND,
        lambda: caller.stub.GetLocation(
            api.GetLocationRequest(
                organization_id=mine.organization_id, location_id=their_location.location_id
            ),
            metadata=caller.as_(staff),
        ),
    )
    listed = await caller.stub.ListOrganizations(
        api.ListOrganizationsRequest(), metadata=caller.as_(staff)
    )
    assert [o.organization_id for o in listed.organizations] == [mine.organization_id]


async def test_staff_cannot_create_organizations_and_patients_cannot_read(caller: Caller) -> None:
    org = await new_org(caller)
    staff = Principal(
        subject="staff-1", role=Role.STAFF, organization_ids=frozenset({org.organization_id})
    )
    patient = Principal(subject="pat-1", role=Role.PATIENT, patient_id="p-1")
    await expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        lambda: caller.stub.CreateOrganization(
            api.CreateOrganizationRequest(
                organization=res.Organization(display_name="X", time_zone="UTC")
            ),
            metadata=caller.as_(staff),
        ),
    )
    await expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        lambda: caller.stub.GetOrganization(
            api.GetOrganizationRequest(organization_id=org.organization_id),
            metadata=caller.as_(patient),
        ),
    )


async def test_list_pages_with_tokens_until_the_end(caller: Caller) -> None:
    org = await new_org(caller)
    for name in ["E", "A", "D", "B", "C"]:
        await new_location(caller, org.organization_id, name)
    names: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await caller.stub.ListLocations(
            api.ListLocationsRequest(
                organization_id=org.organization_id, page_size=2, page_token=token
            ),
            metadata=caller.as_(ADMIN),
        )
        names += [loc.display_name for loc in page.locations]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert (names, pages) == (["A", "B", "C", "D", "E"], 3)
    await expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: caller.stub.ListProviders(
            api.ListProvidersRequest(organization_id=org.organization_id, page_token="garbage!"),
            metadata=caller.as_(ADMIN),
        ),
    )


async def test_exception_creation_rematerializes_and_reports_conflicts(
    caller: Caller, pool: Pool
) -> None:
    org = await new_org(caller)
    loc = await new_location(caller, org.organization_id)
    md = caller.as_(ADMIN)
    visit = await caller.stub.CreateVisitType(
        api.CreateVisitTypeRequest(
            organization_id=org.organization_id,
            visit_type=res.VisitType(
                display_name="Follow-up", specialty="cardiology", duration_granules=2
            ),
        ),
        metadata=md,
    )
    provider = await caller.stub.CreateProvider(
        api.CreateProviderRequest(
            organization_id=org.organization_id,
            provider=res.Provider(
                display_name="Dr. Ana Ruiz",
                specialties=["cardiology"],
                location_ids=[loc.location_id],
            ),
        ),
        metadata=md,
    )
    await caller.stub.CreateScheduleTemplate(
        api.CreateScheduleTemplateRequest(
            organization_id=org.organization_id,
            template=res.ScheduleTemplate(
                provider_id=provider.provider_id,
                location_id=loc.location_id,
                effective_start_date="2026-03-02",
                effective_end_date="2026-03-08",
                windows=[
                    res.TemplateWindow(
                        day_of_week=types_pb2.MONDAY, start_time="08:00", end_time="12:00"
                    )
                ],
                visit_type_ids=[visit.visit_type_id],
            ),
        ),
        metadata=md,
    )
    async with pool.connection() as conn:
        opened = await (
            await conn.execute(
                "SELECT count(*) FROM availability.slots WHERE provider_id = %s::uuid"
                " AND status = 'OPEN'",
                (provider.provider_id,),
            )
        ).fetchone()
        # booking_svc books 09:00-09:30 local (14:00Z) for an appointment
        await conn.execute(
            "UPDATE availability.slots SET status = 'BOOKED', version = version + 1,"
            " appointment_id = %s::uuid WHERE provider_id = %s::uuid"
            " AND start_time IN ('2026-03-02T14:00Z', '2026-03-02T14:15Z')",
            (str(uuid.uuid4()), provider.provider_id),
        )
    exception = await caller.stub.CreateScheduleException(
        api.CreateScheduleExceptionRequest(
            organization_id=org.organization_id,
            exception=res.ScheduleException(
                provider_id=provider.provider_id,
                kind=res.ScheduleException.ADMIN_BLOCK,
                start_date="2026-03-02",
                time_window=types_pb2.LocalTimeWindow(start_time="09:00", end_time="10:00"),
            ),
        ),
        metadata=md,
    )
    conflicts = await caller.stub.ListScheduleConflicts(
        api.ListScheduleConflictsRequest(organization_id=org.organization_id), metadata=md
    )
    async with pool.connection() as conn:
        statuses = await (
            await conn.execute(
                "SELECT status, count(*) FROM availability.slots WHERE provider_id = %s::uuid"
                " GROUP BY status ORDER BY status",
                (provider.provider_id,),
            )
        ).fetchall()

    assert opened == (16,)
    assert statuses == [("BLOCKED", 2), ("BOOKED", 2), ("OPEN", 12)]
    assert len(exception.conflict_ids) == 1
    assert [c.conflict_id for c in conflicts.conflicts] == list(exception.conflict_ids)
    assert conflicts.conflicts[0].cause == res.ScheduleConflict.EXCEPTION
    assert conflicts.conflicts[0].cause_id == exception.exception_id

    await caller.stub.DeleteScheduleException(
        api.DeleteScheduleExceptionRequest(
            organization_id=org.organization_id, exception_id=exception.exception_id
        ),
        metadata=md,
    )
    open_after = await caller.stub.ListScheduleConflicts(
        api.ListScheduleConflictsRequest(organization_id=org.organization_id), metadata=md
    )
    assert list(open_after.conflicts) == []  # removing the cause resolved it


async def test_masking_part_of_coordinates_keeps_the_other_part(caller: Caller) -> None:
    org = await new_org(caller)
    created = await new_location(caller, org.organization_id)
    moved = await caller.stub.UpdateLocation(
        api.UpdateLocationRequest(
            organization_id=org.organization_id,
            location_id=created.location_id,
            location=res.Location(coordinates=types_pb2.GeoPoint(latitude=40.8)),
            update_mask=field_mask_pb2.FieldMask(paths=["coordinates.latitude"]),
        ),
        metadata=caller.as_(ADMIN),
    )
    assert (moved.coordinates.latitude, moved.coordinates.longitude) == (
        40.8,
        created.coordinates.longitude,
    )
