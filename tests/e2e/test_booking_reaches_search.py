"""The whole path on the running stack: a booking made over gRPC disappears from search (the
booking outbox -> JetStream -> the availability index), a room it took stops being offered to
other visits needing it, and a cancellation brings the time back."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from common.auth import PRINCIPAL_METADATA_KEY, Principal, PrincipalSigner, Role
from deploy.stack import Stack
from medsched.availability.v1 import (
    availability_service_pb2 as search_pb,
)
from medsched.availability.v1 import (
    availability_service_pb2_grpc as search_grpc,
)
from medsched.availability.v1 import (
    schedule_admin_service_pb2 as admin_pb,
)
from medsched.availability.v1 import (
    schedule_admin_service_pb2_grpc as admin_grpc,
)
from medsched.booking.v1 import appointment_pb2, booking_service_pb2, booking_service_pb2_grpc
from medsched.common.v1 import types_pb2

FRESHNESS_LIMIT_S = 10.0  # generous for a loaded CI machine; the bench measures the real figure


def _secure(stack: Stack, address: str) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=stack.pki.ca_cert.read_bytes(),
        private_key=stack.pki.key("operator").read_bytes(),
        certificate_chain=stack.pki.cert("operator").read_bytes(),
    )
    return grpc.secure_channel(address, credentials)


@pytest.fixture
def signed(running_stack: Stack) -> Callable[[Principal], tuple[tuple[str, str]]]:
    signer = PrincipalSigner(base64.b64decode(running_stack.env["MEDSCHED_PRINCIPAL_KEY"]))

    def metadata(principal: Principal) -> tuple[tuple[str, str]]:
        return ((PRINCIPAL_METADATA_KEY, signer.sign(principal, now=datetime.now(UTC))),)

    return metadata


@pytest.fixture
def channels(running_stack: Stack) -> Iterator[tuple[grpc.Channel, grpc.Channel]]:
    availability = _secure(running_stack, running_stack.addresses["availability"])
    booking = _secure(running_stack, running_stack.addresses["booking"])
    try:
        yield availability, booking
    finally:
        availability.close()
        booking.close()


def _wait(condition: Callable[[], bool], what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < FRESHNESS_LIMIT_S:
        if condition():
            return time.monotonic() - started
        time.sleep(0.02)
    pytest.fail(f"{what} not seen within {FRESHNESS_LIMIT_S} s")


def test_booking_and_cancel_reach_search(
    channels: tuple[grpc.Channel, grpc.Channel],
    signed: Callable[[Principal], tuple[tuple[str, str]]],
) -> None:
    availability, booking_channel = channels
    admin = admin_grpc.ScheduleAdminServiceStub(availability)
    search = search_grpc.AvailabilityServiceStub(availability)
    booking = booking_service_pb2_grpc.BookingServiceStub(booking_channel)
    ops = signed(Principal(subject="ops", role=Role.ADMIN))
    org = admin.ListOrganizations(admin_pb.ListOrganizationsRequest(), metadata=ops, timeout=10)
    organization_id = org.organizations[0].organization_id
    visit_types = admin.ListVisitTypes(
        admin_pb.ListVisitTypesRequest(organization_id=organization_id, page_size=100),
        metadata=ops,
        timeout=10,
    ).visit_types
    # A visit needing a room or equipment (so the booking also reserves a resource) that a
    # first-time patient may book: for new patients or for anyone.
    candidates = [
        v for v in visit_types if v.resource_needs and v.patient_kind != types_pb2.RETURNING_PATIENT
    ]
    tomorrow = (datetime.now(UTC) + timedelta(days=2)).date()

    def offered(visit_type_id: str) -> list[search_pb.AvailableSlot]:
        found = search.SearchAvailability(
            search_pb.SearchAvailabilityRequest(
                organization_id=organization_id,
                visit_type_id=visit_type_id,
                patient_kind=types_pb2.NEW_PATIENT,
                from_date=tomorrow.isoformat(),
                to_date=(tomorrow + timedelta(days=7)).isoformat(),
                limit=20,
            ),
            timeout=10,
        )
        return list(found.slots)

    visit, slots = next((v, found) for v in candidates if (found := offered(v.visit_type_id)))
    first = slots[0]
    patient = f"e2e-{uuid.uuid4().hex[:8]}"
    made = booking.BookAppointment(
        booking_service_pb2.BookAppointmentRequest(
            slot_id=first.slot_id,
            visit_type_id=visit.visit_type_id,
            patient_id=patient,
            idempotency_key=str(uuid.uuid4()),
        ),
        metadata=signed(Principal(subject=patient, role=Role.PATIENT, patient_id=patient)),
        timeout=10,
    )
    assert made.status == appointment_pb2.Appointment.BOOKED
    assert made.reservations, "the visit type needs a room: one must be reserved"

    _wait(
        lambda: all(s.slot_id != first.slot_id for s in offered(visit.visit_type_id)),
        "the booking in search",
    )
    cancelled = booking.CancelAppointment(
        booking_service_pb2.CancelAppointmentRequest(
            appointment_id=made.appointment_id,
            cancellation_reason=appointment_pb2.PATIENT_REQUEST,
        ),
        metadata=signed(Principal(subject=patient, role=Role.PATIENT, patient_id=patient)),
        timeout=10,
    )
    assert cancelled.status == appointment_pb2.Appointment.CANCELLED
    _wait(
        lambda: any(s.slot_id == first.slot_id for s in offered(visit.visit_type_id)),
        "the cancellation in search",
    )
