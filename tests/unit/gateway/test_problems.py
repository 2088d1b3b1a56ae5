"""Unit tests for gRPC status -> problem+json translation."""

from __future__ import annotations

import google.rpc.error_details_pb2 as error_details_pb2  # type: ignore[import-untyped, unused-ignore]
import google.rpc.status_pb2 as status_pb2  # type: ignore[import-untyped, unused-ignore]
import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

from gateway.problems import (
    GRPC_TO_PROBLEM,
    Problem,
    ProblemField,
    problem_from_rpc_error,
)


def rpc_error(code: grpc.StatusCode, message: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=message, debug_error_string=""
    )


def status(code: grpc.StatusCode, message: str, *details: Message) -> status_pb2.Status:
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)
        packed.append(item)
    return status_pb2.Status(code=code.value[0], message=message, details=packed)


def identity(path: str) -> tuple[str, str]:
    return path, "body"


@pytest.mark.parametrize(
    ("code", "http"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.OUT_OF_RANGE, 400),
        (grpc.StatusCode.UNAUTHENTICATED, 502),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.ALREADY_EXISTS, 409),
        (grpc.StatusCode.ABORTED, 409),
        (grpc.StatusCode.FAILED_PRECONDITION, 409),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.CANCELLED, 503),
        (grpc.StatusCode.UNKNOWN, 500),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.DATA_LOSS, 500),
        (grpc.StatusCode.UNIMPLEMENTED, 501),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    ],
)
def test_grpc_codes_map_to_http_statuses(code: grpc.StatusCode, http: int) -> None:
    assert GRPC_TO_PROBLEM[code].status == http
    assert problem_from_rpc_error(rpc_error(code, "x"), None, identity).status == http


def test_every_error_code_has_a_mapping() -> None:
    assert set(GRPC_TO_PROBLEM) == set(grpc.StatusCode) - {grpc.StatusCode.OK}


def test_application_codes_pass_the_service_message_through() -> None:
    problem = problem_from_rpc_error(
        rpc_error(grpc.StatusCode.NOT_FOUND, "appointment not found"), None, identity
    )

    assert problem.detail == "appointment not found"


@pytest.mark.parametrize(
    ("code", "detail"),
    [
        (grpc.StatusCode.UNAVAILABLE, "the service is not reachable; retry later"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "the service did not answer in time"),
        (grpc.StatusCode.INTERNAL, "the service failed to handle the request"),
        (grpc.StatusCode.UNKNOWN, "the service failed to handle the request"),
    ],
)
def test_library_messages_without_our_trailer_are_replaced(
    code: grpc.StatusCode, detail: str
) -> None:
    leaky = "failed to connect to all addresses; last error: ipv4:10.1.2.3:50052 refused"

    problem = problem_from_rpc_error(rpc_error(code, leaky), None, identity)

    assert problem.detail == detail


def test_library_code_with_our_trailer_keeps_the_service_message() -> None:
    error = rpc_error(grpc.StatusCode.UNAVAILABLE, "payer not answering")
    details = status(grpc.StatusCode.UNAVAILABLE, "payer not answering")

    assert problem_from_rpc_error(error, details, identity).detail == "payer not answering"


def test_unauthenticated_from_a_service_never_blames_the_client() -> None:
    error = rpc_error(grpc.StatusCode.UNAUTHENTICATED, "invalid principal metadata: bad signature")
    details = status(grpc.StatusCode.UNAUTHENTICATED, "invalid principal metadata: bad signature")

    problem = problem_from_rpc_error(error, details, identity)

    assert problem.status == 502
    assert problem.detail == "the gateway could not authenticate to the service"


def test_field_violations_become_errors_with_mapped_paths() -> None:
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field="visit.start_time", description="is required"
            ),
            error_details_pb2.BadRequest.FieldViolation(field="limit", description="too big"),
        ]
    )
    error = rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad")
    mapped = {"visit.start_time": ("startTime", "body"), "limit": ("limit", "query")}

    problem = problem_from_rpc_error(
        error, status(grpc.StatusCode.INVALID_ARGUMENT, "bad", bad_request), mapped.__getitem__
    )

    assert problem.errors == (
        ProblemField("startTime", "body", "is required"),
        ProblemField("limit", "query", "too big"),
    )


def test_error_info_and_precondition_failure_merge_into_reasons() -> None:
    info = error_details_pb2.ErrorInfo(
        reason="SLOT_TAKEN", domain="medsched", metadata={"subject": "slots/9", "granule": "3"}
    )
    foreign = error_details_pb2.ErrorInfo(reason="SOCKET", domain="grpc.io", metadata={"x": "y"})
    failure = error_details_pb2.PreconditionFailure(
        violations=[
            error_details_pb2.PreconditionFailure.Violation(
                type="SLOT_TAKEN", subject="slots/9", description="booked by someone else"
            ),
            error_details_pb2.PreconditionFailure.Violation(
                type="HOLD_EXPIRED", subject="holds/1", description="hold lapsed"
            ),
        ]
    )
    error = rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "cannot book")

    problem = problem_from_rpc_error(
        error,
        status(grpc.StatusCode.FAILED_PRECONDITION, "cannot book", info, foreign, failure),
        identity,
    )

    assert problem.reasons == (
        {
            "code": "SLOT_TAKEN",
            "subject": "slots/9",
            "metadata": {"granule": "3"},
            "description": "booked by someone else",
        },
        {"code": "HOLD_EXPIRED", "subject": "holds/1", "description": "hold lapsed"},
    )


def test_retry_info_becomes_retry_after_in_whole_seconds() -> None:
    retry = error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=2, nanos=1))
    error = rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down")

    problem = problem_from_rpc_error(
        error, status(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", retry), identity
    )

    assert problem.headers == {"Retry-After": "3"}


def test_long_messages_are_clipped() -> None:
    problem = problem_from_rpc_error(
        rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "x" * 2000), None, identity
    )

    assert len(problem.detail) == 500


def test_problem_body_has_rfc_9457_members_and_the_request_id() -> None:
    problem = Problem(
        GRPC_TO_PROBLEM[grpc.StatusCode.INVALID_ARGUMENT],
        "the request is invalid",
        errors=(ProblemField("limit", "query", "must be an integer"),),
    )

    assert problem.body("req-1") == {
        "type": "urn:medsched:problem:invalid-argument",
        "title": "Invalid argument",
        "status": 400,
        "detail": "the request is invalid",
        "request_id": "req-1",
        "errors": [{"field": "limit", "in": "query", "description": "must be an integer"}],
    }
