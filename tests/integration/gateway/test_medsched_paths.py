"""The design brief's public paths through the gateway, on the real medsched contracts.

Test servicers built on the generated base classes stand in for the availability, booking
and waitlist services: they answer from what they received, so each test sees exactly which
request message the gateway built from the HTTP request.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import google.rpc.error_details_pb2 as error_details_pb2  # type: ignore[import-untyped, unused-ignore]
import google.rpc.status_pb2 as status_pb2  # type: ignore[import-untyped, unused-ignore]
import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from common.auth import Role
from common.errors import InvalidArgument
from common.grpc_server import Registration, ServerHandle, abort_with_status, current_principal
from deploy.certs import DevPki
from gateway.config import packaged_descriptor_set
from gateway.descriptors import load_api_file
from medsched.availability.v1 import availability_service_pb2 as availability_pb2
from medsched.availability.v1 import availability_service_pb2_grpc as availability_grpc
from medsched.booking.v1 import appointment_pb2
from medsched.booking.v1 import booking_service_pb2 as booking_pb2
from medsched.booking.v1 import booking_service_pb2_grpc as booking_grpc
from medsched.waitlist.v1 import waitlist_pb2
from medsched.waitlist.v1 import waitlist_service_pb2 as waitlist_service_pb2
from medsched.waitlist.v1 import waitlist_service_pb2_grpc as waitlist_grpc
from tests.integration.gateway.harness import RunningGateway, start_backend, start_gateway


class Availability(availability_grpc.AvailabilityServiceServicer):
    async def SearchAvailability(  # noqa: N802 (generated servicer method name)
        self, request: availability_pb2.SearchAvailabilityRequest, context: Any
    ) -> availability_pb2.SearchAvailabilityResponse:
        del context
        if request.radius == "ten miles":
            raise InvalidArgument.single("radius", "must be a number followed by mi or km")
        # Echo the parsed request so the test sees every field the gateway set, and who
        # called (the forwarded principal's subject; empty for an anonymous call).
        principal = current_principal()
        slot = availability_pb2.AvailableSlot(
            provider=availability_pb2.ProviderSummary(
                provider_id=principal.subject if principal is not None else ""
            ),
            slot_id="|".join(
                [
                    request.specialty,
                    request.location,
                    request.radius,
                    request.insurance,
                    request.from_date,
                    request.to_date,
                    str(request.limit),
                    request.page_token,
                ]
            ),
            start_time=timestamp_pb2.Timestamp(seconds=1738592100),
        )
        return availability_pb2.SearchAvailabilityResponse(slots=[slot], next_page_token="p2")


class Booking(booking_grpc.BookingServiceServicer):
    async def BookAppointment(  # noqa: N802 (generated servicer method name)
        self, request: booking_pb2.BookAppointmentRequest, context: Any
    ) -> appointment_pb2.Appointment:
        del context
        principal = current_principal()
        assert principal is not None
        return appointment_pb2.Appointment(
            appointment_id="appt-1",
            patient_id=request.patient_id,
            slot_id=request.slot_id,
            visit_type_id=request.visit_type_id,
            status=appointment_pb2.Appointment.BOOKED,
            insurance_plan_id=principal.subject,
        )

    async def RescheduleAppointment(  # noqa: N802 (generated servicer method name)
        self, request: booking_pb2.RescheduleAppointmentRequest, context: Any
    ) -> appointment_pb2.Appointment:
        # Refused the way booking_svc refuses: ErrorInfo in the contract's own domain, the
        # BookingRefusal, plus a detail of a type outside the contracts and one with PHI.
        refusal = appointment_pb2.BookingRefusal(
            violations=[
                appointment_pb2.BookingRefusal.Violation(
                    reason=appointment_pb2.BookingRefusal.HELD_BY_OTHER,
                    description="held for another patient",
                    slot_ids=[request.slot_id],
                    hold_expire_time=timestamp_pb2.Timestamp(seconds=1738592190),
                ),
                appointment_pb2.BookingRefusal.Violation(
                    reason=appointment_pb2.BookingRefusal.RESOURCE_UNAVAILABLE,
                    description="no ultrasound free",
                    resource_kind="ultrasound",
                ),
                appointment_pb2.BookingRefusal.Violation(
                    reason=appointment_pb2.BookingRefusal.ELIGIBILITY_INACTIVE,
                    description="coverage not active",
                    eligibility_check_id="chk-1",
                ),
            ]
        )
        details = [
            error_details_pb2.ErrorInfo(
                reason="BOOKING_REFUSED", domain="medsched.booking.v1", metadata={"k": "v"}
            ),
            refusal,
            error_details_pb2.ErrorInfo(reason="SECRET", domain="googleapis.com"),
            duration_pb2.Duration(seconds=5),
            appointment_pb2.Appointment(appointment_id="appt-x", visit_reason="chest pain"),
        ]
        status = status_pb2.Status(code=grpc.StatusCode.ABORTED.value[0], message="refused")
        for detail in details:
            status.details.add().Pack(detail)
        await abort_with_status(context, status)

    async def CancelAppointment(  # noqa: N802 (generated servicer method name)
        self, request: booking_pb2.CancelAppointmentRequest, context: Any
    ) -> appointment_pb2.Appointment:
        del context
        return appointment_pb2.Appointment(
            appointment_id=request.appointment_id,
            status=appointment_pb2.Appointment.CANCELLED,
            cancellation_reason=request.cancellation_reason,
        )


class Waitlist(waitlist_grpc.WaitlistServiceServicer):
    async def JoinWaitlist(  # noqa: N802 (generated servicer method name)
        self, request: waitlist_service_pb2.JoinWaitlistRequest, context: Any
    ) -> waitlist_pb2.WaitlistEntry:
        del context
        return waitlist_pb2.WaitlistEntry(
            entry_id="wl-1",
            organization_id=request.organization_id,
            patient_id=request.patient_id,
            specialty=request.specialty,
            visit_type_id=request.visit_type_id,
            preferred_providers=list(request.preferred_providers),
            state=waitlist_pb2.WaitlistEntry.WAITING,
        )


@pytest.fixture
async def medsched_backend() -> AsyncIterator[ServerHandle]:
    handle = await start_backend(
        [
            Registration.of(
                availability_grpc.add_AvailabilityServiceServicer_to_server,
                Availability(),
                "medsched.availability.v1.AvailabilityService",
            ),
            Registration.of(
                booking_grpc.add_BookingServiceServicer_to_server,
                Booking(),
                "medsched.booking.v1.BookingService",
            ),
            Registration.of(
                waitlist_grpc.add_WaitlistServiceServicer_to_server,
                Waitlist(),
                "medsched.waitlist.v1.WaitlistService",
            ),
        ]
    )
    yield handle
    await handle.stop(0)


@pytest.fixture
async def gateway(
    medsched_backend: ServerHandle, pki: DevPki, redis_url: str, tmp_path: Path
) -> AsyncIterator[RunningGateway]:
    address = medsched_backend.address
    running = await start_gateway(
        load_api_file(packaged_descriptor_set()),
        {"availability": address, "booking": address, "waitlist": address},
        pki=pki,
        redis_url=redis_url,
        work_dir=tmp_path,
    )
    yield running
    await running.close()


async def request(
    gateway: RunningGateway,
    method: str,
    path: str,
    body: Any = None,
    *,
    auth: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """A JSON call; `auth` None: as patient pat-42, {}: anonymous, else those headers."""
    chosen = gateway.auth(Role.PATIENT, "pat-42") if auth is None else auth
    headers = {**chosen, "Content-Type": "application/json"}
    data = json.dumps(body).encode() if body is not None else None
    async with gateway.session.request(
        method, gateway.url + path, headers=headers, data=data, ssl=gateway.client_context()
    ) as response:
        return response.status, json.loads(await response.text())


async def test_availability_search_path_of_the_brief(gateway: RunningGateway) -> None:
    status, body = await request(
        gateway,
        "GET",
        "/v1/availability?specialty=cardiology&location=40.7,-74.0&radius=10mi"
        "&insurance=bcbs_ppo&from=2025-02-01&to=2025-02-14&limit=20&page_token=abc",
    )

    assert status == 200
    assert body["slots"][0]["slotId"] == (
        "cardiology|40.7,-74.0|10mi|bcbs_ppo|2025-02-01|2025-02-14|20|abc"
    )
    assert body["slots"][0]["startTime"] == "2025-02-03T14:15:00Z"
    assert body["nextPageToken"] == "p2"


async def test_availability_search_violation_names_the_query_parameter(
    gateway: RunningGateway,
) -> None:
    status, body = await request(gateway, "GET", "/v1/availability?radius=ten%20miles")

    assert status == 400
    assert body["errors"] == [
        {
            "field": "radius",
            "in": "query",
            "description": "must be a number followed by mi or km",
        }
    ]


async def test_book_appointment(gateway: RunningGateway) -> None:
    status, body = await request(
        gateway,
        "POST",
        "/v1/appointments",
        {
            "slotId": "slot-9",
            "visitTypeId": "vt-1",
            "patientId": "pat-42",
            "idempotency_key": "3f1c2a9e-0000-4000-8000-000000000001",
        },
    )

    assert status == 200
    assert body["appointmentId"] == "appt-1"
    assert body["slotId"] == "slot-9"
    assert body["patientId"] == "pat-42"
    assert body["status"] == "BOOKED"
    assert body["insurancePlanId"] == "pat-42"  # the forwarded principal's subject


async def test_cancel_appointment(gateway: RunningGateway) -> None:
    status, body = await request(
        gateway,
        "POST",
        "/v1/appointments/appt-7/cancel",
        {"cancellation_reason": "PATIENT_REQUEST"},
    )

    assert status == 200
    assert body["appointmentId"] == "appt-7"
    assert body["status"] == "CANCELLED"
    assert body["cancellationReason"] == "PATIENT_REQUEST"


async def test_join_waitlist(gateway: RunningGateway) -> None:
    status, body = await request(
        gateway,
        "POST",
        "/v1/waitlist",
        {
            "organizationId": "org-1",
            "patientId": "pat-42",
            "specialty": "dermatology",
            "visitTypeId": "vt-2",
            "preferredProviders": ["prov-1", "prov-2"],
        },
    )

    assert status == 200
    assert body["entryId"] == "wl-1"
    assert body["preferredProviders"] == ["prov-1", "prov-2"]
    assert body["state"] == "WAITING"


async def test_unimplemented_method_is_a_501(gateway: RunningGateway) -> None:
    status, body = await request(gateway, "GET", "/v1/appointments/appt-1")

    assert status == 501
    assert body["type"] == "urn:medsched:problem:not-implemented"
    assert "not implemented" in body["detail"]


async def test_services_without_an_address_are_not_routed(gateway: RunningGateway) -> None:
    status, body = await request(gateway, "POST", "/v1/eligibility-checks", {})

    assert status == 404
    assert body["title"] == "Not found"


async def test_public_search_answers_anonymous_callers_without_a_principal(
    gateway: RunningGateway,
) -> None:
    status, body = await request(gateway, "GET", "/v1/availability?specialty=x", auth={})

    assert status == 200
    assert body["slots"][0]["provider"]["providerId"] == ""  # no principal was forwarded


async def test_public_search_still_identifies_a_caller_who_sends_a_token(
    gateway: RunningGateway,
) -> None:
    status, body = await request(gateway, "GET", "/v1/availability?specialty=x")
    assert status == 200
    assert body["slots"][0]["provider"]["providerId"] == "pat-42"

    status, body = await request(
        gateway, "GET", "/v1/availability", auth={"Authorization": "Bearer not-a-token"}
    )
    assert status == 401


async def test_methods_not_marked_public_refuse_anonymous_callers(
    gateway: RunningGateway,
) -> None:
    status, body = await request(
        gateway, "POST", "/v1/appointments/appt-7/cancel", {"cancellationReason": 1}, auth={}
    )

    assert status == 401
    assert body["type"] == "urn:medsched:problem:unauthenticated"


async def test_openapi_marks_exactly_the_public_operations_as_anonymous(
    gateway: RunningGateway,
) -> None:
    async with gateway.session.get(
        gateway.url + "/openapi.json", ssl=gateway.client_context()
    ) as response:
        document = json.loads(await response.text())
    optional = {
        operation["operationId"]
        for item in document["paths"].values()
        for operation in item.values()
        if operation.get("security") == [{}, {"bearerAuth": []}]
    }
    assert optional == {"AvailabilityService_SearchAvailability"}


async def test_anonymous_callers_are_rate_limited_per_client_address(
    medsched_backend: ServerHandle, pki: DevPki, redis_url: str, tmp_path: Path
) -> None:
    running = await start_gateway(
        load_api_file(packaged_descriptor_set()),
        {"availability": medsched_backend.address},
        pki=pki,
        redis_url=redis_url,
        work_dir=tmp_path,
        rate_limit=2,
    )
    try:
        # Earlier tests of the session may have counted this address: clear its windows.
        async for key in running.redis.scan_iter(match="medsched:gateway:rate:*"):
            await running.redis.delete(key)
        anonymous = [
            (await request(running, "GET", "/v1/availability", auth={}))[0] for _ in range(3)
        ]
        signed_in, _ = await request(running, "GET", "/v1/availability")
    finally:
        await running.close()

    assert anonymous == [200, 200, 429]
    assert signed_in == 200  # a patient has their own window, not the address's


async def test_booking_refusal_is_a_structured_member_of_the_problem(
    gateway: RunningGateway,
) -> None:
    status, body = await request(
        gateway,
        "POST",
        "/v1/appointments/appt-7/reschedule",
        {"slotId": "slot-3", "idempotencyKey": "3f1c2a9e-0000-4000-8000-000000000002"},
    )

    assert status == 409
    assert body["request_id"]
    assert body["reasons"] == [{"code": "BOOKING_REFUSED", "metadata": {"k": "v"}}]
    refusal, appointment = body["details"]  # the foreign ErrorInfo and Duration are dropped
    assert refusal == {
        "@type": "type.googleapis.com/medsched.booking.v1.BookingRefusal",
        "violations": [
            {
                "reason": "HELD_BY_OTHER",
                "description": "held for another patient",
                "slotIds": ["slot-3"],
                "resourceKind": "",
                "eligibilityCheckId": "",
                "holdExpireTime": "2025-02-03T14:16:30Z",
            },
            {
                "reason": "RESOURCE_UNAVAILABLE",
                "description": "no ultrasound free",
                "slotIds": [],
                "resourceKind": "ultrasound",
                "eligibilityCheckId": "",
            },
            {
                "reason": "ELIGIBILITY_INACTIVE",
                "description": "coverage not active",
                "slotIds": [],
                "resourceKind": "",
                "eligibilityCheckId": "chk-1",
            },
        ],
    }
    # A detail of a contract type keeps its fields but never a PHI-marked one.
    assert appointment["appointmentId"] == "appt-x"
    assert "visitReason" not in appointment
    assert "chest pain" not in json.dumps(body)


async def test_nul_characters_are_refused_in_every_string_before_any_service_sees_them(
    gateway: RunningGateway,
) -> None:
    # PostgreSQL text cannot hold U+0000: a service would fail on it, so it never gets there.
    nul = "must not contain NUL (U+0000) characters"
    status, body = await request(gateway, "GET", "/v1/availability?specialty=a%00b")
    assert (status, body["errors"]) == (
        400,
        [{"field": "specialty", "in": "query", "description": nul}],
    )

    status, body = await request(
        gateway, "POST", "/v1/appointments/a%00b/cancel", {"cancellationReason": 1}
    )
    assert (status, body["errors"]) == (
        400,
        [{"field": "appointmentId", "in": "path", "description": nul}],
    )

    status, body = await request(
        gateway,
        "POST",
        "/v1/appointments",
        {"slotId": "s", "visitTypeId": "v", "patientId": "pat-42", "visitReason": "a\u0000b"},
    )
    assert (status, body["errors"]) == (
        400,
        [{"field": "visitReason", "in": "body", "description": nul}],
    )
