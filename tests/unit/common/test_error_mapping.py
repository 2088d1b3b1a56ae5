"""Domain errors -> gRPC status with google.rpc details; mTLS peer names; outbound deadlines."""

from __future__ import annotations

import time

import google.rpc.error_details_pb2 as error_details_pb2  # type: ignore[import-untyped, unused-ignore]
import google.rpc.status_pb2 as status_pb2  # type: ignore[import-untyped, unused-ignore]
import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2

from common import errors
from common.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound, Reason
from common.grpc_client import call_details_for_hop
from common.grpc_server import (
    internal_status,
    rpc_status_of,
    service_peer_name,
    status_code_of,
)


def _unpack(status: status_pb2.Status) -> list[object]:
    kinds = (
        error_details_pb2.BadRequest,
        error_details_pb2.ErrorInfo,
        error_details_pb2.PreconditionFailure,
        error_details_pb2.RequestInfo,
    )
    unpacked: list[object] = []
    for detail in status.details:
        assert isinstance(detail, any_pb2.Any)
        matches = [message for message in (kind() for kind in kinds) if detail.Unpack(message)]
        assert len(matches) == 1, detail.type_url
        unpacked.append(matches[0])
    return unpacked


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgument.single("x", "bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("no such appointment"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("key reused"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.Conflict("slot taken"), grpc.StatusCode.ABORTED),
        (errors.FailedPrecondition("cancelled"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.PermissionDenied("not yours"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.Unauthenticated("who are you"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.ResourceExhausted("slow down"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.DependencyUnavailable("payer down"), grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded("too slow"), grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
def test_each_domain_error_maps_to_its_status_code(
    error: errors.MedschedError, code: grpc.StatusCode
) -> None:
    assert status_code_of(error) is code
    status = rpc_status_of(error)
    assert status.code == code.value[0]
    assert status.message == error.message


def test_invalid_argument_lists_every_field_violation_in_bad_request() -> None:
    error = InvalidArgument(
        [
            FieldViolation("slot.start_time", "must be on a 15-minute boundary"),
            FieldViolation("visit_type_id", "is required"),
        ]
    )
    (bad_request,) = _unpack(rpc_status_of(error))
    assert isinstance(bad_request, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("slot.start_time", "must be on a 15-minute boundary"),
        ("visit_type_id", "is required"),
    ]


def test_reasons_become_error_info_with_subject_in_metadata() -> None:
    error = NotFound(
        "no such provider",
        reasons=[Reason(code="PROVIDER_UNKNOWN", subject="providers/p-17", metadata={"a": "b"})],
    )
    (info,) = _unpack(rpc_status_of(error))
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert info.reason == "PROVIDER_UNKNOWN"
    assert info.domain == "medsched"
    assert dict(info.metadata) == {"a": "b", "subject": "providers/p-17"}


def test_failed_precondition_also_lists_reasons_as_precondition_violations() -> None:
    error = FailedPrecondition(
        "appointment cannot be rescheduled",
        reasons=[
            Reason(code="CANCELLED", subject="appointments/a-1", description="was cancelled"),
            Reason(code="IN_PAST", subject="appointments/a-1", description="already started"),
        ],
    )
    details = _unpack(rpc_status_of(error))
    infos = [d for d in details if isinstance(d, error_details_pb2.ErrorInfo)]
    (failure,) = [d for d in details if isinstance(d, error_details_pb2.PreconditionFailure)]
    assert [i.reason for i in infos] == ["CANCELLED", "IN_PAST"]
    assert [(v.type, v.subject, v.description) for v in failure.violations] == [
        ("CANCELLED", "appointments/a-1", "was cancelled"),
        ("IN_PAST", "appointments/a-1", "already started"),
    ]


def test_internal_status_carries_only_a_generic_message_and_the_error_id() -> None:
    status = internal_status("0123456789abcdef")
    assert status.code == grpc.StatusCode.INTERNAL.value[0]
    assert status.message == "internal error (error id 0123456789abcdef)"
    info, request_info = _unpack(status)
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert dict(info.metadata) == {"error_id": "0123456789abcdef"}
    assert isinstance(request_info, error_details_pb2.RequestInfo)
    assert request_info.request_id == "0123456789abcdef"


def test_service_certificate_common_name_identifies_the_service() -> None:
    context = {
        "transport_security_type": [b"ssl"],
        "x509_common_name": [b"svc-booking"],
        "x509_subject_alternative_name": [b"localhost", b"svc-booking", b"127.0.0.1"],
    }
    assert service_peer_name(context) == "svc-booking"


def test_single_service_alt_name_identifies_the_service_without_common_name() -> None:
    context = {"x509_subject_alternative_name": [b"svc-waitlist.prod.svc", b"svc-waitlist"]}
    assert service_peer_name(context) == "svc-waitlist"


@pytest.mark.parametrize(
    "context",
    [
        {"transport_security_type": [b"insecure"]},
        {"x509_common_name": [b"gateway"], "x509_subject_alternative_name": [b"gateway"]},
        {"x509_common_name": [b"operator"]},
        {"x509_common_name": [b"svc-billing"]},
        {"x509_subject_alternative_name": [b"svc-booking", b"svc-notify"]},
    ],
)
def test_other_peers_are_not_service_principals(context: dict[str, list[bytes]]) -> None:
    assert service_peer_name(context) is None


def _details(timeout: float | None) -> grpc.aio.ClientCallDetails:
    return grpc.aio.ClientCallDetails("/x.Y/Z", timeout, None, None, None)


def test_outbound_call_without_timeout_gets_the_default_outside_any_incoming_call() -> None:
    hop = call_details_for_hop(_details(None), default_timeout_s=3.0, forward_principal=True)
    assert hop.timeout == 3.0
    assert hop.metadata is None  # nothing to forward outside a call


def test_outbound_call_keeps_an_explicit_timeout() -> None:
    hop = call_details_for_hop(_details(0.25), default_timeout_s=3.0, forward_principal=False)
    assert hop.timeout == 0.25


def test_outbound_timeout_never_outlives_the_incoming_deadline() -> None:
    from common import grpc_server

    token = grpc_server._deadline.set(time.monotonic() + 0.5)
    try:
        hop = call_details_for_hop(_details(10.0), default_timeout_s=3.0, forward_principal=False)
        expired = grpc_server._deadline.set(time.monotonic() - 1.0)
        late = call_details_for_hop(_details(None), default_timeout_s=3.0, forward_principal=False)
        grpc_server._deadline.reset(expired)
    finally:
        grpc_server._deadline.reset(token)
    assert hop.timeout is not None
    assert 0.4 < hop.timeout <= 0.5
    assert late.timeout == 0.0
