"""How booking reaches eligibility_svc: a small port and its gRPC adapter.

The adapter forwards the end user's signed principal when there is one (the eligibility
service authorizes the patient itself); background work (re-checks of PENDING_VERIFICATION
appointments) calls as the booking service, with a principal signed for `svc-booking`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

import grpc
import grpc.aio

from common.auth import PRINCIPAL_METADATA_KEY, Principal, PrincipalSigner, Role
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
