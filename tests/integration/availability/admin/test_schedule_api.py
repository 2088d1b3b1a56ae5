"""Schedule changes through the API re-materialize at once: templates, overrides, references."""

from __future__ import annotations

from typing import Any

import google.rpc.error_details_pb2 as error_details_pb2  # type: ignore[import-untyped, unused-ignore]
import grpc
from google.protobuf import duration_pb2, field_mask_pb2

from common.db import Pool
from common.grpc_client import status_details
from medsched.availability.v1 import schedule_admin_service_pb2 as api
from medsched.availability.v1 import schedule_resources_pb2 as res
from medsched.common.v1 import types_pb2
from medsched.events.v1 import envelope_pb2, slot_events_pb2

from .harness import (
    ADMIN,
    Caller,
    expect_error,
    new_location,
    new_org,
    new_provider,
    new_visit_type,
    window,
)


async def statuses_by_date(pool: Pool, provider_id: str) -> dict[str, dict[str, int]]:
    """{local date: {status: granules}} of a provider (New York dates)."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT (start_time AT TIME ZONE 'America/New_York')::date::text, status, count(*)"
            " FROM availability.slots WHERE provider_id = %s::uuid GROUP BY 1, 2 ORDER BY 1, 2",
            (provider_id,),
        )
        result: dict[str, dict[str, int]] = {}
        for day, status, count in await cursor.fetchall():
            result.setdefault(day, {})[status] = count
        return result


async def outbox_events(pool: Pool) -> list[envelope_pb2.EventEnvelope]:
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT payload FROM availability.outbox ORDER BY id")
        return [envelope_pb2.EventEnvelope.FromString(r[0]) for r in await cursor.fetchall()]


async def clinic(caller: Caller) -> tuple[Any, Any, Any, Any]:
    org = await new_org(caller)
    loc = await new_location(caller, org.organization_id)
    visit = await new_visit_type(caller, org.organization_id)
    provider = await new_provider(caller, org.organization_id, [loc.location_id])
    return org, loc, visit, provider


async def create_template(
    caller: Caller, org: Any, loc: Any, visit: Any, provider: Any, **fields: Any
) -> res.ScheduleTemplate:
    fields.setdefault("effective_start_date", "2026-03-02")
    template = res.ScheduleTemplate(
        provider_id=provider.provider_id,
        location_id=loc.location_id,
        visit_type_ids=[visit.visit_type_id],
        **fields,
    )
    return await caller.stub.CreateScheduleTemplate(
        api.CreateScheduleTemplateRequest(organization_id=org.organization_id, template=template),
        metadata=caller.as_(ADMIN),
    )


async def test_overlapping_template_is_a_failed_precondition_naming_the_other(
    caller: Caller, pool: Pool
) -> None:
    org, loc, visit, provider = await clinic(caller)
    first = await create_template(
        caller, org, loc, visit, provider, windows=[window(types_pb2.MONDAY, "08:00", "12:00")]
    )
    error = await expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda: create_template(
            caller,
            org,
            loc,
            visit,
            provider,
            windows=[window(types_pb2.MONDAY, "11:00", "13:00")],
        ),
    )
    status = status_details(error)
    assert status is not None
    subjects = []
    for detail in status.details:
        failure = error_details_pb2.PreconditionFailure()
        if detail.Unpack(failure):
            subjects += [v.subject for v in failure.violations]
    assert subjects == [f"templates/{first.template_id}"]
    # Every other week at the same time does not collide with a template that has ended.
    await caller.stub.UpdateScheduleTemplate(
        api.UpdateScheduleTemplateRequest(
            organization_id=org.organization_id,
            template_id=first.template_id,
            template=res.ScheduleTemplate(effective_end_date="2026-03-08"),
            update_mask=field_mask_pb2.FieldMask(paths=["effective_end_date"]),
        ),
        metadata=caller.as_(ADMIN),
    )
    later = await create_template(
        caller,
        org,
        loc,
        visit,
        provider,
        effective_start_date="2026-03-09",
        week_interval=2,
        windows=[window(types_pb2.MONDAY, "11:00", "13:00")],
    )
    assert later.week_interval == 2
    by_date = await statuses_by_date(pool, provider.provider_id)
    # From 03-09 the old 08:00-12:00 is blocked, except 11:00-12:00 which the new template
    # re-opens; 12:00-13:00 is new. The off weeks of the new template keep only blocked time.
    assert by_date["2026-03-02"] == {"OPEN": 16}
    assert by_date["2026-03-09"] == {"BLOCKED": 12, "OPEN": 8}
    assert by_date["2026-03-16"] == {"BLOCKED": 16}
    assert by_date["2026-03-23"] == {"BLOCKED": 12, "OPEN": 8}


async def test_ending_a_template_blocks_the_dates_it_no_longer_covers(
    caller: Caller, pool: Pool
) -> None:
    org, loc, visit, provider = await clinic(caller)
    template = await create_template(
        caller, org, loc, visit, provider, windows=[window(types_pb2.TUESDAY, "09:00", "10:00")]
    )
    before = await statuses_by_date(pool, provider.provider_id)
    await caller.stub.UpdateScheduleTemplate(
        api.UpdateScheduleTemplateRequest(
            organization_id=org.organization_id,
            template_id=template.template_id,
            template=res.ScheduleTemplate(effective_end_date="2026-03-10"),
            update_mask=field_mask_pb2.FieldMask(paths=["effective_end_date"]),
        ),
        metadata=caller.as_(ADMIN),
    )
    after = await statuses_by_date(pool, provider.provider_id)

    assert before["2026-03-17"] == {"OPEN": 4}
    assert after["2026-03-03"] == after["2026-03-10"] == {"OPEN": 4}
    assert after["2026-03-17"] == {"BLOCKED": 4}
    assert sorted(after) == sorted(before)  # nothing deleted: blocked rows keep their history


async def test_overrides_leave_early_add_hours_and_deleting_restores(
    caller: Caller, pool: Pool
) -> None:
    org, loc, visit, provider = await clinic(caller)
    md = caller.as_(ADMIN)
    await create_template(
        caller, org, loc, visit, provider, windows=[window(types_pb2.MONDAY, "08:00", "17:00")]
    )
    leave = await caller.stub.CreateScheduleOverride(
        api.CreateScheduleOverrideRequest(
            organization_id=org.organization_id,
            override=res.ScheduleOverride(
                provider_id=provider.provider_id,
                location_id=loc.location_id,
                date="2026-03-02",
                kind=res.ScheduleOverride.LEAVE_EARLY,
                time_window=types_pb2.LocalTimeWindow(start_time="15:00"),
            ),
        ),
        metadata=md,
    )
    added = await caller.stub.CreateScheduleOverride(
        api.CreateScheduleOverrideRequest(
            organization_id=org.organization_id,
            override=res.ScheduleOverride(
                provider_id=provider.provider_id,
                location_id=loc.location_id,
                date="2026-03-09",
                kind=res.ScheduleOverride.ADD_HOURS,
                time_window=types_pb2.LocalTimeWindow(start_time="17:00", end_time="19:00"),
                visit_type_ids=[visit.visit_type_id],
            ),
        ),
        metadata=md,
    )
    changed = await statuses_by_date(pool, provider.provider_id)
    freed = [e.slot_freed for e in await outbox_events(pool) if e.HasField("slot_freed")]
    await caller.stub.DeleteScheduleOverride(
        api.DeleteScheduleOverrideRequest(
            organization_id=org.organization_id, override_id=leave.override_id
        ),
        metadata=md,
    )
    restored = await statuses_by_date(pool, provider.provider_id)

    assert (leave.time_window.start_time, leave.time_window.end_time) == ("15:00", "24:00")
    assert changed["2026-03-02"] == {"BLOCKED": 8, "OPEN": 28}
    assert changed["2026-03-09"] == {"OPEN": 36 + 8}
    assert [(f.cause, len(f.granules)) for f in freed] == [
        (slot_events_pb2.SlotFreed.NEW_CAPACITY, 8)  # the added hours, for the waitlist
    ]
    assert added.override_id
    assert restored["2026-03-02"] == {"OPEN": 36}


async def test_provider_cannot_drop_a_location_its_template_uses(caller: Caller) -> None:
    org, loc, visit, provider = await clinic(caller)
    other = await new_location(caller, org.organization_id, "Uptown")
    await create_template(
        caller, org, loc, visit, provider, windows=[window(types_pb2.MONDAY, "08:00", "12:00")]
    )
    await expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda: caller.stub.UpdateProvider(
            api.UpdateProviderRequest(
                organization_id=org.organization_id,
                provider_id=provider.provider_id,
                provider=res.Provider(location_ids=[other.location_id]),
                update_mask=field_mask_pb2.FieldMask(paths=["location_ids"]),
            ),
            metadata=caller.as_(ADMIN),
        ),
    )
    widened = await caller.stub.UpdateProvider(
        api.UpdateProviderRequest(
            organization_id=org.organization_id,
            provider_id=provider.provider_id,
            provider=res.Provider(location_ids=[loc.location_id, other.location_id]),
            update_mask=field_mask_pb2.FieldMask(paths=["location_ids"]),
        ),
        metadata=caller.as_(ADMIN),
    )
    assert sorted(widened.location_ids) == sorted([loc.location_id, other.location_id])


async def test_visit_type_and_resource_round_trip(caller: Caller) -> None:
    org = await new_org(caller)
    loc = await new_location(caller, org.organization_id)
    md = caller.as_(ADMIN)
    echo = await caller.stub.CreateVisitType(
        api.CreateVisitTypeRequest(
            organization_id=org.organization_id,
            visit_type=res.VisitType(
                display_name="Echocardiogram",
                specialty="cardiology",
                duration_granules=4,
                patient_kind=types_pb2.RETURNING_PATIENT,
                resource_needs=[
                    res.ResourceNeed(category=types_pb2.ROOM, kind="exam_room"),
                    res.ResourceNeed(category=types_pb2.EQUIPMENT, kind="ultrasound", count=1),
                ],
                location_ids=[loc.location_id],
                booking_window=res.BookingWindow(
                    minimum_notice=duration_pb2.Duration(seconds=7200), maximum_days_ahead=30
                ),
            ),
        ),
        metadata=md,
    )
    probe = await caller.stub.CreateResource(
        api.CreateResourceRequest(
            organization_id=org.organization_id,
            resource=res.Resource(
                location_id=loc.location_id,
                display_name="Ultrasound (GE Logiq)",
                category=types_pb2.EQUIPMENT,
                kind="ultrasound",
            ),
        ),
        metadata=md,
    )
    fetched = await caller.stub.GetVisitType(
        api.GetVisitTypeRequest(
            organization_id=org.organization_id, visit_type_id=echo.visit_type_id
        ),
        metadata=md,
    )
    listed = await caller.stub.ListResources(
        api.ListResourcesRequest(organization_id=org.organization_id, kind="ultrasound"),
        metadata=md,
    )

    assert fetched == echo
    assert [(n.kind, n.count) for n in echo.resource_needs] == [("exam_room", 1), ("ultrasound", 1)]
    assert echo.booking_window.minimum_notice.seconds == 7200
    assert echo.service_type_code == "30"
    assert [r.resource_id for r in listed.resources] == [probe.resource_id]
