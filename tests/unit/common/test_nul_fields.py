"""`nul_field_path` finds a NUL in any set string of a request, however deep, by its path."""

from __future__ import annotations

from common.grpc_server import nul_field_path
from medsched.booking.v1 import booking_service_pb2
from medsched.eligibility.v1 import eligibility_service_pb2


def test_clean_request_has_no_path() -> None:
    request = booking_service_pb2.BookAppointmentRequest(
        slot_id="p_20260101T0900Z", patient_id="p-1", resource_ids=["a", "b"]
    )
    assert nul_field_path(request) is None


def test_top_level_repeated_and_nested_strings_are_found() -> None:
    top = booking_service_pb2.BookAppointmentRequest(patient_id="p\x00")
    listed = booking_service_pb2.BookAppointmentRequest(resource_ids=["ok", "b\x00ad"])
    nested = eligibility_service_pb2.CheckEligibilityRequest(patient_id="p-1")
    nested.patient_demographics.name.family_name = "SMI\x00TH"
    assert nul_field_path(top) == "patient_id"
    assert nul_field_path(listed) == "resource_ids[1]"
    assert nul_field_path(nested) == "patient_demographics.name.family_name"
