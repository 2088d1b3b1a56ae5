"""How booking reaches eligibility_svc: a small port, its gRPC adapter, and how booking reads
the answers (verdicts, refusal reasons, the eligibility service's field violations).

The adapter forwards the end user's signed principal when there is one (the eligibility
service authorizes the patient itself); background work (re-checks of PENDING_VERIFICATION
appointments) calls as the booking service, with a principal signed for `svc-booking`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import grpc
import grpc.aio
from google.rpc import error_details_pb2  # type: ignore[import-untyped, unused-ignore]

from booking_svc.domain import RefusalReason
from common.auth import PRINCIPAL_METADATA_KEY, Principal, PrincipalSigner, Role
from common.errors import FieldViolation, InvalidArgument
from common.grpc_client import status_details
from common.grpc_server import current_principal_credential
from medsched.eligibility.v1 import eligibility_pb2, eligibility_service_pb2

CheckRequest = eligibility_service_pb2.CheckEligibilityRequest
Check = eligibility_pb2.EligibilityCheck

SERVICE_SUBJECT = "svc-booking"
_SERVICE_NAME = "medsched.eligibility.v1.EligibilityService"


class EligibilityPort(Protocol):
    async def check(self, request: CheckRequest, *, timeout_s: float) -> Check: ...

    async def get(self, check_id: str, *, timeout_s: float) -> Check: ...


class GrpcEligibility:
    """`EligibilityPort` over a gRPC channel to eligibility_svc."""

    def __init__(self, channel: grpc.aio.Channel, signer: PrincipalSigner) -> None:
        self._signer = signer
        self._check: grpc.aio.UnaryUnaryMultiCallable[CheckRequest, Check] = channel.unary_unary(
            f"/{_SERVICE_NAME}/CheckEligibility", CheckRequest.SerializeToString, Check.FromString
        )
        get_request = eligibility_service_pb2.GetEligibilityCheckRequest
        self._get: grpc.aio.UnaryUnaryMultiCallable[
            eligibility_service_pb2.GetEligibilityCheckRequest, Check
        ] = channel.unary_unary(
            f"/{_SERVICE_NAME}/GetEligibilityCheck", get_request.SerializeToString, Check.FromString
        )

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        credential = current_principal_credential()
        if credential is None:
            credential = self._signer.sign(
                Principal(subject=SERVICE_SUBJECT, role=Role.SERVICE), now=datetime.now(UTC)
            )
        return ((PRINCIPAL_METADATA_KEY, credential),)

    async def check(self, request: CheckRequest, *, timeout_s: float) -> Check:
        return await self._check(request, timeout=timeout_s, metadata=self._metadata())

    async def get(self, check_id: str, *, timeout_s: float) -> Check:
        request = eligibility_service_pb2.GetEligibilityCheckRequest(check_id=check_id)
        return await self._get(request, timeout=timeout_s, metadata=self._metadata())


@dataclass(frozen=True)
class Eligibility:
    """What the eligibility check said, as booking's policy sees it."""

    status: eligibility_pb2.EligibilityStatus.ValueType
    check_id: str = ""
    verified_at: datetime | None = None


# Answers that refuse a booking outright, and their refusal reasons.
ELIGIBILITY_REFUSALS = {
    eligibility_pb2.INACTIVE: RefusalReason.ELIGIBILITY_INACTIVE,
    eligibility_pb2.NOT_FOUND: RefusalReason.ELIGIBILITY_NOT_FOUND,
}
# How an answer's status is stored in `booking.appointments.eligibility_status`.
STATUS_NAME = {
    eligibility_pb2.ACTIVE: "ACTIVE",
    eligibility_pb2.INACTIVE: "INACTIVE",
    eligibility_pb2.NOT_FOUND: "NOT_FOUND",
    eligibility_pb2.ERROR: "ERROR",
    eligibility_pb2.PENDING: "PENDING",
}


def verdict_of(answer: Check) -> Eligibility:
    """A check as booking's policy reads it (a cached answer keeps its original time)."""
    verified = (
        answer.response_time.ToDatetime(tzinfo=UTC) if answer.HasField("response_time") else None
    )
    return Eligibility(status=answer.status, check_id=answer.check_id, verified_at=verified)


_REQUEST_FIELDS = {
    "member_id": "insurance_member_id",
    "payer_id": "insurance_payer_id",
    "plan_id": "insurance_plan_id",
}


def invalid_request_of(error: grpc.aio.AioRpcError) -> InvalidArgument:
    """The eligibility service's field violations, named by this request's field paths."""
    violations: list[FieldViolation] = []
    status = status_details(error)
    for detail in status.details if status is not None else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            for v in bad.field_violations:
                head, _, rest = v.field.partition(".")
                name = _REQUEST_FIELDS.get(head, head)
                violations.append(FieldViolation(f"{name}.{rest}" if rest else name, v.description))
    if not violations:
        violations.append(
            FieldViolation("insurance_member_id", "was refused by the eligibility check")
        )
    return InvalidArgument(violations)
