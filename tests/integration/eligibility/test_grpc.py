"""`EligibilityService` over gRPC with mutual TLS: the contract's messages, status mapping,
validation errors, deadlines and who may call."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import google.rpc.error_details_pb2 as error_details_pb2  # type: ignore[import-untyped, unused-ignore]
import grpc
import grpc.aio
import pytest
from google.protobuf import duration_pb2

from common.auth import PRINCIPAL_METADATA_KEY, Principal, PrincipalSigner, Role
from common.grpc_client import channel, status_details
from common.grpc_server import Registration, ServerHandle, create_server
from deploy.certs import DevPki
from eligibility_svc.main import ELIGIBILITY_SERVICE
from eligibility_svc.server import EligibilityServicer
from medsched.common.v1 import types_pb2
from medsched.eligibility.v1 import (
    eligibility_pb2,
    eligibility_service_pb2,
    eligibility_service_pb2_grpc,
)
from tests.integration.eligibility.conftest import ORGANIZATION, PAYER_ID, Harness

E = eligibility_pb2
Request = eligibility_service_pb2.CheckEligibilityRequest
GetRequest = eligibility_service_pb2.GetEligibilityCheckRequest
Check = eligibility_pb2.EligibilityCheck


class Api:
    """Calls over mTLS as booking_svc, optionally carrying a signed end-user principal."""

    def __init__(self, ch: grpc.aio.Channel, signer: PrincipalSigner) -> None:
        self._check: grpc.aio.UnaryUnaryMultiCallable[Request, Check] = ch.unary_unary(
            f"/{ELIGIBILITY_SERVICE}/CheckEligibility",
            Request.SerializeToString,
            Check.FromString,
        )
        self._get: grpc.aio.UnaryUnaryMultiCallable[GetRequest, Check] = ch.unary_unary(
            f"/{ELIGIBILITY_SERVICE}/GetEligibilityCheck",
            GetRequest.SerializeToString,
            Check.FromString,
        )
        self.signer = signer

    def metadata(self, principal: Principal | None) -> tuple[tuple[str, str], ...]:
        if principal is None:
            return ()
        return ((PRINCIPAL_METADATA_KEY, self.signer.sign(principal, now=datetime.now(UTC))),)

    async def check(
        self, request: Request, *, principal: Principal | None = None, within_s: float = 5.0
    ) -> Check:
        return await self._check(request, timeout=within_s, metadata=self.metadata(principal))

    async def get(
        self, check_id: str, *, full: bool = False, principal: Principal | None = None
    ) -> Check:
        view = eligibility_service_pb2.FULL if full else eligibility_service_pb2.BASIC
        request = GetRequest(check_id=check_id, view=view)
        return await self._get(request, timeout=5.0, metadata=self.metadata(principal))


@pytest.fixture
async def api(harness: Harness, pki: DevPki) -> AsyncIterator[Api]:
    signer = PrincipalSigner(secrets.token_bytes(32))
    handle: ServerHandle = await create_server(
        service_name="eligibility",
        listen="127.0.0.1:0",
        tls=pki.tls_files("svc-eligibility", require_client_cert=True),
        servicers=[
            Registration.of(
                eligibility_service_pb2_grpc.add_EligibilityServiceServicer_to_server,
                EligibilityServicer(lambda: harness.service),
                ELIGIBILITY_SERVICE,
            )
        ],
        principal_verifier=signer,
    )
    await handle.start()
    await handle.set_serving()
    ch = channel(handle.address, tls=pki.tls_files("svc-booking"))
    try:
        yield Api(ch, signer)
    finally:
        await ch.close(None)
        await handle.stop(0)


def request(member_id: str = "SIMA00001", **fields: Any) -> Request:
    values: dict[str, Any] = {
        "organization_id": ORGANIZATION,
        "patient_id": "pat-1",
        "payer_id": PAYER_ID,
        "member_id": member_id,
        "service_type_code": "98",
        "service_date": "2026-03-02",
        "appointment_id": "appt-1",
    }
    made = Request(**(values | fields))
    made.patient_demographics.name.family_name = "SMITH"
    made.patient_demographics.name.given_name = "JOHN"
    return made


async def test_active_coverage_end_to_end_then_from_the_cache(api: Api, harness: Harness) -> None:
    live = await api.check(request())
    assert live.status == E.ACTIVE
    assert live.source == E.PAYER
    assert live.age.ToTimedelta().total_seconds() == 0
    assert (live.service_type_code, live.service_date, live.appointment_id) == (
        "98",
        "2026-03-02",
        "appt-1",
    )
    assert live.HasField("response_time")
    assert live.plan.plan_name == "SILVER PPO 2000"
    assert live.plan.group_number == "GRP7788"
    assert live.plan.insurance_type_code == "PR"
    assert live.plan.coverage_start_date == "2026-01-01"
    office = live.benefits[0]
    assert office.service_type_code == "98"
    assert office.coverage == E.ServiceTypeBenefits.COVERED
    in_network = office.copayments[0]
    assert (in_network.amount.currency_code, in_network.amount.units, in_network.amount.nanos) == (
        "USD",
        25,
        0,
    )
    assert in_network.network == E.BenefitAmount.IN_NETWORK
    assert in_network.period == E.BenefitAmount.VISIT
    assert in_network.coverage_level == E.BenefitAmount.INDIVIDUAL
    plan_wide = next(b for b in live.benefits if b.service_type_code == "30")
    assert [c.percent for c in plan_wide.coinsurance] == ["0.2"]
    assert [(d.amount.units, d.period) for d in plan_wide.deductibles] == [
        (1500, E.BenefitAmount.CALENDAR_YEAR),
        (500, E.BenefitAmount.REMAINING),
    ]
    assert list(live.payer_messages) == ["OUT OF POCKET INCLUDES DEDUCTIBLE"]
    assert live.x12_request == b""  # BASIC never carries the bodies

    cached = await api.check(request())
    assert (cached.status, cached.source) == (E.ACTIVE, E.CACHE)
    assert cached.check_id != live.check_id
    assert cached.plan == live.plan
    assert harness.simulator.stats.requests == 1

    fetched = await api.get(live.check_id)
    assert fetched.status == E.ACTIVE
    assert fetched.benefits == live.benefits


@pytest.mark.parametrize(
    ("member_id", "service_type", "status", "error_kind", "rejection"),
    [
        ("SIMI00002", "30", E.INACTIVE, E.EligibilityError.KIND_UNSPECIFIED, ""),
        ("SIMN00003", "AL", E.INACTIVE, E.EligibilityError.KIND_UNSPECIFIED, ""),
        ("ZZZ999999", "30", E.NOT_FOUND, E.EligibilityError.KIND_UNSPECIFIED, "75"),
        ("12", "30", E.NOT_FOUND, E.EligibilityError.KIND_UNSPECIFIED, "72"),
        ("SIMU00004", "30", E.ERROR, E.EligibilityError.PAYER_REJECTED, "42"),
        ("SIMG00007", "30", E.ERROR, E.EligibilityError.INVALID_RESPONSE, ""),
        ("SIMD00005", "30", E.ERROR, E.EligibilityError.PAYER_UNAVAILABLE, ""),
    ],
)
async def test_status_mapping(
    api: Api,
    member_id: str,
    service_type: str,
    status: int,
    error_kind: int,
    rejection: str,
) -> None:
    check = await api.check(request(member_id, service_type_code=service_type))
    assert check.status == status
    assert check.error.kind == error_kind
    assert [r.code for r in check.rejections] == ([rejection] if rejection else [])
    if status == E.ERROR:
        assert check.error.description
    if member_id == "SIMN00003":
        assert check.benefits[0].coverage == E.ServiceTypeBenefits.NOT_COVERED
    if rejection in ("72", "75"):
        assert check.rejections[0].level == E.Rejection.SUBSCRIBER
        assert check.rejections[0].follow_up_action == E.Rejection.CORRECT_AND_RESUBMIT


async def test_invalid_request_names_every_bad_field(api: Api) -> None:
    bad = request("SIM*0001")
    bad.service_date = "02/03/2026"
    bad.patient_id = ""
    bad.provider_npi = "1234567890"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.check(bad)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = status_details(raised.value)
    assert details is not None
    fields = []
    for detail in details.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields += [v.field for v in bad_request.field_violations]
    assert sorted(fields) == ["member_id", "patient_id", "provider_npi", "service_date"]
    # The member id is named, never echoed.
    assert "SIM*0001" not in (raised.value.details() or "")


async def test_silent_payer_answers_pending_before_the_grpc_deadline(
    api: Api, harness: Harness
) -> None:
    started = time.monotonic()
    check = await api.check(request("SIMT00006"), within_s=0.5)
    assert time.monotonic() - started < 0.5
    assert check.status == E.PENDING
    assert check.source == E.ELIGIBILITY_SOURCE_UNSPECIFIED
    assert not check.HasField("response_time")
    pending = await api.get(check.check_id)
    assert pending.status == E.PENDING


async def test_max_wait_bounds_the_wait_below_the_deadline(api: Api) -> None:
    started = time.monotonic()
    check = await api.check(
        request("SIMS00009", max_wait=duration_pb2.Duration(nanos=50_000_000)), within_s=5.0
    )
    assert time.monotonic() - started < 0.25
    assert check.status == E.PENDING


async def test_who_may_call(api: Api) -> None:
    patient = Principal(subject="user-1", role=Role.PATIENT, patient_id="pat-1")
    other = Principal(subject="user-2", role=Role.PATIENT, patient_id="pat-2")
    staff = Principal(
        subject="staff-1", role=Role.STAFF, organization_ids=frozenset({ORGANIZATION})
    )
    admin = Principal(subject="admin-1", role=Role.ADMIN)
    own = await api.check(request(), principal=patient)
    assert own.status == E.ACTIVE
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await api.check(request(), principal=other)
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await api.get(own.check_id, principal=other)
    assert hidden.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as not_audit:
        await api.get(own.check_id, full=True, principal=staff)
    assert not_audit.value.code() is grpc.StatusCode.PERMISSION_DENIED
    audited = await api.get(own.check_id, full=True, principal=admin)
    assert b"NM1*IL*1*SMITH*JOHN****MI*SIMA00001" in audited.x12_request
    assert b"ST*271*" in audited.x12_response


async def test_sex_reaches_the_270(api: Api) -> None:
    made = request()
    made.patient_demographics.sex = types_pb2.MALE
    made.patient_demographics.birth_date = "1980-01-15"
    check = await api.check(made)
    assert check.status == E.ACTIVE
    audited = await api.get(
        check.check_id, full=True, principal=Principal(subject="admin-1", role=Role.ADMIN)
    )
    assert b"DMG*D8*19800115*M" in audited.x12_request
