"""Errors as RFC 9457 `application/problem+json`, and gRPC status -> HTTP status.

Every error response of the gateway is one JSON object::

    {"type": "urn:medsched:problem:invalid-argument", "title": "Invalid argument",
     "status": 400, "detail": "...", "request_id": "...",
     "errors": [{"field": "startTime", "in": "body", "description": "..."}],
     "reasons": [{"code": "SLOT_TAKEN", "subject": "...", "description": "...",
                  "metadata": {...}}],
     "details": [{"@type": "type.googleapis.com/medsched.booking.v1.BookingRefusal",
                  "violations": [{"reason": "TAKEN", "slotIds": ["..."], ...}]}]}

`type` is a URN per problem kind (they are identifiers, not links). `errors` lists field
violations (from the request checks or a service's `google.rpc.BadRequest`) with the field
as the client sees it: JSON names, relative to the JSON body when the body is one field.
`reasons` carries `google.rpc.ErrorInfo` (domain `medsched` or `medsched.<package>`) and
`PreconditionFailure`. `details` carries every other status detail whose type the served
contracts define (a `medsched.*` message such as `medsched.booking.v1.BookingRefusal`), as
the canonical JSON of a `google.protobuf.Any`: `@type` (the type URL) beside the message's
fields, in the same JSON mapping as responses, with PHI-marked fields left out. A new
detail type in a contract therefore reaches REST clients without gateway code; detail
types from elsewhere are dropped (they may describe internals).
`request_id` is also the `X-Request-Id` response header.

gRPC -> HTTP (the usual mapping, with these decisions):

- FAILED_PRECONDITION -> 409: the request is well formed but conflicts with the current
  state (slot taken, appointment already cancelled); 412 is reserved for HTTP conditional
  headers and 400 would tell the client its request was malformed. ABORTED -> 409 too.
- CANCELLED -> 503: the client is still waiting, so for it the backend gave up; retry.
- UNAUTHENTICATED from a service -> 502: the gateway always forwards a signed principal, so
  a service refusing it means the two disagree on the signing key, not that the client's
  token is bad (the gateway answers 401 for that itself, before calling anything).

Only text a service wrote on purpose reaches `detail`: codes the gRPC library itself
produces (UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL, ...) carry transport details such as
addresses, so their message is passed on only when the call ended with our error trailer
(`grpc-status-details-bin`, written by `common.grpc_server`); otherwise a fixed text is used.
No stack trace, SQL or PHI is ever part of a problem.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import google.rpc.error_details_pb2 as error_details_pb2  # type: ignore[import-untyped, unused-ignore]
import google.rpc.status_pb2 as status_pb2  # type: ignore[import-untyped, unused-ignore]
import grpc
import grpc.aio
from google.protobuf import any_pb2

from common.grpc_server import ERROR_DOMAIN

PROBLEM_CONTENT_TYPE = "application/problem+json"
_TYPE_PREFIX = "urn:medsched:problem:"
_MAX_DETAIL_CHARS = 500


@dataclass(frozen=True)
class ProblemKind:
    """One row of the mapping: HTTP status, `type` slug and `title`."""

    status: int
    slug: str
    title: str

    @property
    def type_uri(self) -> str:
        return _TYPE_PREFIX + self.slug


BAD_REQUEST = ProblemKind(400, "invalid-argument", "Invalid argument")
UNAUTHENTICATED = ProblemKind(401, "unauthenticated", "Authentication required")
PERMISSION_DENIED = ProblemKind(403, "permission-denied", "Permission denied")
NOT_FOUND = ProblemKind(404, "not-found", "Not found")
METHOD_NOT_ALLOWED = ProblemKind(405, "method-not-allowed", "Method not allowed")
CONFLICT = ProblemKind(409, "conflict", "Conflict")
ALREADY_EXISTS = ProblemKind(409, "already-exists", "Already exists")
FAILED_PRECONDITION = ProblemKind(409, "failed-precondition", "Failed precondition")
PAYLOAD_TOO_LARGE = ProblemKind(413, "payload-too-large", "Request body too large")
UNSUPPORTED_MEDIA_TYPE = ProblemKind(415, "unsupported-media-type", "Unsupported media type")
TOO_MANY_REQUESTS = ProblemKind(429, "rate-limited", "Too many requests")
INTERNAL = ProblemKind(500, "internal", "Internal error")
NOT_IMPLEMENTED = ProblemKind(501, "not-implemented", "Not implemented")
BAD_GATEWAY = ProblemKind(502, "bad-gateway", "Bad gateway")
UNAVAILABLE = ProblemKind(503, "unavailable", "Service unavailable")
TIMEOUT = ProblemKind(504, "timeout", "Gateway timeout")

GRPC_TO_PROBLEM: Mapping[grpc.StatusCode, ProblemKind] = {
    grpc.StatusCode.CANCELLED: UNAVAILABLE,
    grpc.StatusCode.UNKNOWN: INTERNAL,
    grpc.StatusCode.INVALID_ARGUMENT: BAD_REQUEST,
    grpc.StatusCode.DEADLINE_EXCEEDED: TIMEOUT,
    grpc.StatusCode.NOT_FOUND: NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED: PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: TOO_MANY_REQUESTS,
    grpc.StatusCode.FAILED_PRECONDITION: FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED: CONFLICT,
    grpc.StatusCode.OUT_OF_RANGE: BAD_REQUEST,
    grpc.StatusCode.UNIMPLEMENTED: NOT_IMPLEMENTED,
    grpc.StatusCode.INTERNAL: INTERNAL,
    grpc.StatusCode.UNAVAILABLE: UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS: INTERNAL,
    grpc.StatusCode.UNAUTHENTICATED: BAD_GATEWAY,
}

# Codes only application code returns: their message was always written by a service.
_APPLICATION_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
_FIXED_DETAIL: Mapping[grpc.StatusCode, str] = {
    grpc.StatusCode.CANCELLED: "the service stopped handling the request; retry later",
    grpc.StatusCode.UNKNOWN: "the service failed to handle the request",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the service did not answer in time",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "the service is overloaded; retry later",
    grpc.StatusCode.UNIMPLEMENTED: "this operation is not available yet",
    grpc.StatusCode.INTERNAL: "the service failed to handle the request",
    grpc.StatusCode.UNAVAILABLE: "the service is not reachable; retry later",
    grpc.StatusCode.DATA_LOSS: "the service failed to handle the request",
    grpc.StatusCode.UNAUTHENTICATED: "the gateway could not authenticate to the service",
}


@dataclass(frozen=True)
class ProblemField:
    """One field violation: where (`field` in `in`) and why."""

    field: str
    location: str
    description: str


@dataclass(frozen=True)
class Problem:
    """An error response; `headers` are extra response headers (Retry-After, Allow, ...)."""

    kind: ProblemKind
    detail: str
    errors: tuple[ProblemField, ...] = ()
    reasons: tuple[Mapping[str, Any], ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    details: tuple[Mapping[str, Any], ...] = ()

    @property
    def status(self) -> int:
        return self.kind.status

    def body(self, request_id: str) -> dict[str, Any]:
        document: dict[str, Any] = {
            "type": self.kind.type_uri,
            "title": self.kind.title,
            "status": self.kind.status,
            "detail": self.detail,
            "request_id": request_id,
        }
        if self.errors:
            document["errors"] = [
                {"field": e.field, "in": e.location, "description": e.description}
                for e in self.errors
            ]
        if self.reasons:
            document["reasons"] = [dict(reason) for reason in self.reasons]
        if self.details:
            document["details"] = [dict(detail) for detail in self.details]
        return document


# Maps a service's field path (proto names) to (client path, location).
FieldPathMapper = Callable[[str], tuple[str, str]]
# Renders a status detail of a contract type as JSON (with "@type"); None for other types.
DetailRenderer = Callable[[any_pb2.Any], Mapping[str, Any] | None]


def problem_from_rpc_error(
    error: grpc.aio.AioRpcError,
    status: status_pb2.Status | None,
    field_path: FieldPathMapper,
    render_detail: DetailRenderer | None = None,
) -> Problem:
    """The problem for a failed backend call; `status` is its `google.rpc.Status` if any."""
    code = error.code()
    kind = GRPC_TO_PROBLEM.get(code, INTERNAL)
    detail = _detail(code, status, error)
    if status is None:
        return Problem(kind, detail)
    errors: list[ProblemField] = []
    reasons: list[dict[str, Any]] = []
    details: list[Mapping[str, Any]] = []
    retry_after: int | None = None
    for packed in status.details:
        type_name = packed.TypeName()
        if type_name == "google.rpc.BadRequest":
            errors.extend(_field_violations(packed, field_path))
        elif type_name == "google.rpc.ErrorInfo":
            _add_error_info(packed, reasons)
        elif type_name == "google.rpc.PreconditionFailure":
            _add_precondition_failure(packed, reasons)
        elif type_name == "google.rpc.RetryInfo":
            retry_after = _retry_after(packed)
        elif render_detail is not None:
            rendered = render_detail(packed)
            if rendered is not None:
                details.append(rendered)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return Problem(kind, detail, tuple(errors), tuple(reasons), headers, tuple(details))


def _detail(
    code: grpc.StatusCode, status: status_pb2.Status | None, error: grpc.aio.AioRpcError
) -> str:
    if code in _APPLICATION_CODES or (status is not None and code in _FIXED_DETAIL):
        text = status.message if status is not None else (error.details() or "")
        if code is not grpc.StatusCode.UNAUTHENTICATED and text:
            return _clip(text)
    return _FIXED_DETAIL.get(code, GRPC_TO_PROBLEM.get(code, INTERNAL).title)


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL_CHARS else text[: _MAX_DETAIL_CHARS - 1] + "…"


def _field_violations(packed: any_pb2.Any, field_path: FieldPathMapper) -> list[ProblemField]:
    bad_request = error_details_pb2.BadRequest()
    packed.Unpack(bad_request)
    found = []
    for violation in bad_request.field_violations:
        client_path, location = field_path(str(violation.field))
        found.append(ProblemField(client_path, location, _clip(str(violation.description))))
    return found


def _add_error_info(packed: any_pb2.Any, reasons: list[dict[str, Any]]) -> None:
    info = error_details_pb2.ErrorInfo()
    packed.Unpack(info)
    # Other domains (e.g. a library's) may describe internals; only ours are written for
    # callers: `medsched` and a contract package's own (`medsched.booking.v1`).
    if info.domain != ERROR_DOMAIN and not info.domain.startswith(ERROR_DOMAIN + "."):
        return
    metadata = dict(info.metadata)
    reason: dict[str, Any] = {"code": str(info.reason)}
    subject = metadata.pop("subject", "")
    if subject:
        reason["subject"] = subject
    if metadata:
        reason["metadata"] = metadata
    reasons.append(reason)


def _add_precondition_failure(packed: any_pb2.Any, reasons: list[dict[str, Any]]) -> None:
    failure = error_details_pb2.PreconditionFailure()
    packed.Unpack(failure)
    for violation in failure.violations:
        code, subject = str(violation.type), str(violation.subject)
        match = _find_reason(reasons, code, subject)
        if match is None:
            match = {"code": code}
            if subject:
                match["subject"] = subject
            reasons.append(match)
        if violation.description:
            match["description"] = _clip(str(violation.description))


def _find_reason(
    reasons: Sequence[dict[str, Any]], code: str, subject: str
) -> dict[str, Any] | None:
    for reason in reasons:
        if reason["code"] == code and reason.get("subject", "") == subject:
            return reason
    return None


def _retry_after(packed: any_pb2.Any) -> int:
    info = error_details_pb2.RetryInfo()
    packed.Unpack(info)
    seconds: float = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return max(1, math.ceil(seconds))
