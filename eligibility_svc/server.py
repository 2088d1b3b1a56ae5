"""The gRPC `EligibilityService`: requests to commands, checks to messages, nothing more.

Errors are domain errors raised below (`common.errors`); the server bootstrap maps them to
status codes once. The caller's deadline comes from the bootstrap (`current_deadline`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import grpc.aio
from google.protobuf import duration_pb2, timestamp_pb2

from common.auth import Principal
from common.errors import Unauthenticated
from common.grpc_server import current_deadline, current_principal
from eligibility_svc.domain import (
    Amount,
    CheckStatus,
    CoverageState,
    ErrorKind,
    Outcome,
    PersonInput,
    RejectionInfo,
    RejectionLevel,
    ServiceBenefits,
    Source,
    build_command,
)
from eligibility_svc.service import CheckView, EligibilityService
from medsched.common.v1 import types_pb2
from medsched.eligibility.v1 import (
    eligibility_pb2,
    eligibility_service_pb2,
    eligibility_service_pb2_grpc,
)

Context = grpc.aio.ServicerContext[Any, Any]
E = eligibility_pb2
NANOS = Decimal(1_000_000_000)

_STATUS = {
    CheckStatus.ACTIVE: E.ACTIVE,
    CheckStatus.INACTIVE: E.INACTIVE,
    CheckStatus.NOT_FOUND: E.NOT_FOUND,
    CheckStatus.ERROR: E.ERROR,
    CheckStatus.PENDING: E.PENDING,
}
_SOURCE = {Source.CACHE: E.CACHE, Source.PAYER: E.PAYER}
_COVERAGE = {
    CoverageState.UNSPECIFIED: E.ServiceTypeBenefits.COVERAGE_STATE_UNSPECIFIED,
    CoverageState.COVERED: E.ServiceTypeBenefits.COVERED,
    CoverageState.NOT_ACTIVE: E.ServiceTypeBenefits.NOT_ACTIVE,
    CoverageState.NOT_COVERED: E.ServiceTypeBenefits.NOT_COVERED,
}
_LEVELS = {
    "IND": E.BenefitAmount.INDIVIDUAL,
    "FAM": E.BenefitAmount.FAMILY,
    "EMP": E.BenefitAmount.EMPLOYEE,
    "ESP": E.BenefitAmount.EMPLOYEE_AND_SPOUSE,
}
_NETWORKS = {
    "Y": E.BenefitAmount.IN_NETWORK,
    "N": E.BenefitAmount.OUT_OF_NETWORK,
    "W": E.BenefitAmount.BOTH,
}
_PERIODS = {
    "27": E.BenefitAmount.VISIT,
    "23": E.BenefitAmount.CALENDAR_YEAR,
    "22": E.BenefitAmount.SERVICE_YEAR,
    "29": E.BenefitAmount.REMAINING,
    "24": E.BenefitAmount.YEAR_TO_DATE,
}
_REJECTION_LEVELS = {
    RejectionLevel.UNSPECIFIED: E.Rejection.LEVEL_UNSPECIFIED,
    RejectionLevel.SOURCE: E.Rejection.SOURCE,
    RejectionLevel.RECEIVER: E.Rejection.RECEIVER,
    RejectionLevel.SUBSCRIBER: E.Rejection.SUBSCRIBER,
    RejectionLevel.DEPENDENT: E.Rejection.DEPENDENT,
}
_FOLLOW_UPS = {
    "C": E.Rejection.CORRECT_AND_RESUBMIT,
    "N": E.Rejection.RESUBMISSION_NOT_ALLOWED,
    "P": E.Rejection.RESUBMIT_ORIGINAL,
    "R": E.Rejection.RESUBMISSION_ALLOWED,
    "S": E.Rejection.DO_NOT_RESUBMIT_THIRD_PARTY,
    "W": E.Rejection.WAIT_30_DAYS,
    "X": E.Rejection.WAIT_10_DAYS,
    "Y": E.Rejection.DO_NOT_RESUBMIT_HANDED_OVER,
}
_ERROR_KINDS = {
    ErrorKind.UNKNOWN_PAYER: E.EligibilityError.UNKNOWN_PAYER,
    ErrorKind.PAYER_TIMEOUT: E.EligibilityError.PAYER_TIMEOUT,
    ErrorKind.PAYER_UNAVAILABLE: E.EligibilityError.PAYER_UNAVAILABLE,
    ErrorKind.CIRCUIT_OPEN: E.EligibilityError.CIRCUIT_OPEN,
    ErrorKind.INVALID_RESPONSE: E.EligibilityError.INVALID_RESPONSE,
    ErrorKind.PAYER_REJECTED: E.EligibilityError.PAYER_REJECTED,
}
_SEX = {types_pb2.FEMALE: "F", types_pb2.MALE: "M", types_pb2.UNKNOWN_SEX: "U"}


class EligibilityServicer(eligibility_service_pb2_grpc.EligibilityServiceServicer):
    """Translates between the contract and `EligibilityService`."""

    def __init__(
        self,
        service: Callable[[], EligibilityService],
        *,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        # A getter, not the service: the service exists only once the process's database
        # and Redis are up, while the servicer is registered before (health NOT_SERVING).
        self._service = service
        self._now = now or (lambda: datetime.now(UTC))

    async def CheckEligibility(  # noqa: N802 (generated servicer method name)
        self, request: eligibility_service_pb2.CheckEligibilityRequest, context: Context
    ) -> eligibility_pb2.EligibilityCheck:
        command = build_command(
            organization_id=request.organization_id,
            patient_id=request.patient_id,
            payer_id=request.payer_id,
            member_id=request.member_id,
            service_type=request.service_type_code,
            service_date=request.service_date,
            provider_npi=request.provider_npi,
            appointment_id=request.appointment_id,
            plan_id=request.plan_id,
            patient=_person(request.patient_demographics)
            if request.HasField("patient_demographics")
            else None,
            subscriber=_person(request.subscriber_demographics)
            if request.HasField("subscriber_demographics")
            else None,
            max_cache_age_s=request.max_cache_age.ToTimedelta().total_seconds()
            if request.HasField("max_cache_age")
            else None,
            max_wait_s=request.max_wait.ToTimedelta().total_seconds()
            if request.HasField("max_wait")
            else None,
        )
        check = await self._service().check(command, _principal(), deadline=current_deadline())
        return check_message(CheckView(check), self._now())

    async def GetEligibilityCheck(  # noqa: N802 (generated servicer method name)
        self, request: eligibility_service_pb2.GetEligibilityCheckRequest, context: Context
    ) -> eligibility_pb2.EligibilityCheck:
        full = request.view == eligibility_service_pb2.FULL
        view = await self._service().get(request.check_id, _principal(), full=full)
        return check_message(view, self._now())


def _principal() -> Principal:
    principal = current_principal()
    if principal is None:
        # The bootstrap refuses anonymous calls to these methods; this is the second lock.
        raise Unauthenticated("this method needs an authenticated caller")
    return principal


def _person(message: types_pb2.PatientDemographics) -> PersonInput:
    return PersonInput(
        family_name=message.name.family_name,
        given_name=message.name.given_name,
        middle_name=message.name.middle_name,
        suffix=message.name.name_suffix,
        birth_date=message.birth_date,
        sex=_SEX.get(message.sex, ""),
    )


# --- domain -> messages ----------------------------------------------------------------------


def check_message(view: CheckView, now: datetime) -> eligibility_pb2.EligibilityCheck:
    """The contract's view of a check; X12 bodies only when `view` carries them."""
    check = view.check
    message = E.EligibilityCheck(
        check_id=check.check_id,
        organization_id=check.organization_id,
        patient_id=check.patient_id,
        payer_id=check.payer_id,
        appointment_id=check.appointment_id,
        service_type_code=check.service_type,
        service_date=check.service_date.isoformat(),
        status=_STATUS[check.status],
        source=_SOURCE[check.source]
        if check.source is not None
        else E.ELIGIBILITY_SOURCE_UNSPECIFIED,
        x12_request=view.x12_request,
        x12_response=view.x12_response,
    )
    message.request_time.CopyFrom(_timestamp(check.requested_at))
    if check.status is not CheckStatus.PENDING:
        message.age.CopyFrom(_duration(check.age(now)))
    if check.outcome is not None:
        _fill_outcome(message, check.outcome)
    return message


def _fill_outcome(message: eligibility_pb2.EligibilityCheck, outcome: Outcome) -> None:
    if outcome.responded_at is not None:
        message.response_time.CopyFrom(_timestamp(outcome.responded_at))
    plan = outcome.plan
    if plan is not None:
        message.plan.CopyFrom(
            E.PlanCoverage(
                plan_name=plan.name,
                group_number=plan.group_number,
                group_name=plan.group_name,
                insurance_type_code=plan.insurance_type,
                coverage_start_date=_date(plan.coverage_start),
                coverage_end_date=_date(plan.coverage_end),
            )
        )
    message.benefits.extend(_benefits(b) for b in outcome.benefits)
    message.rejections.extend(_rejection(r) for r in outcome.rejections)
    message.payer_messages.extend(outcome.messages)
    if outcome.error is not None:
        message.error.CopyFrom(
            E.EligibilityError(
                kind=_ERROR_KINDS[outcome.error.kind],
                description=outcome.error.description,
                retryable=outcome.error.retryable,
            )
        )


def _benefits(benefits: ServiceBenefits) -> eligibility_pb2.ServiceTypeBenefits:
    return E.ServiceTypeBenefits(
        service_type_code=benefits.service_type,
        coverage=_COVERAGE[benefits.coverage],
        copayments=[_amount(a) for a in benefits.copayments],
        coinsurance=[_amount(a) for a in benefits.coinsurance],
        deductibles=[_amount(a) for a in benefits.deductibles],
        out_of_pocket=[_amount(a) for a in benefits.out_of_pocket],
        messages=list(benefits.messages),
    )


def _amount(amount: Amount) -> eligibility_pb2.BenefitAmount:
    if amount.coverage_level:
        level = _LEVELS.get(amount.coverage_level, E.BenefitAmount.OTHER_LEVEL)
    else:
        level = E.BenefitAmount.COVERAGE_LEVEL_UNSPECIFIED
    if amount.period:
        period = _PERIODS.get(amount.period, E.BenefitAmount.OTHER_PERIOD)
    else:
        period = E.BenefitAmount.PERIOD_UNSPECIFIED
    message = E.BenefitAmount(
        coverage_level=level,
        network=_NETWORKS.get(amount.network, E.BenefitAmount.NETWORK_UNSPECIFIED),
        period=period,
        period_code=amount.period,
        percent="" if amount.percent is None else format(amount.percent, "f"),
        authorization_required=amount.authorization_required,
    )
    if amount.amount is not None:
        message.amount.CopyFrom(money(amount.amount))
    return message


def money(value: Decimal, currency: str = "USD") -> types_pb2.Money:
    """`value` as Money: whole units plus nanos with the same sign."""
    units = int(value)  # truncates toward zero, so the fraction keeps the sign of `value`
    nanos = int((value - units) * NANOS)
    return types_pb2.Money(currency_code=currency, units=units, nanos=nanos)


def _rejection(rejection: RejectionInfo) -> eligibility_pb2.Rejection:
    return E.Rejection(
        level=_REJECTION_LEVELS[rejection.level],
        valid_request=rejection.valid_request,
        code=rejection.code,
        description=rejection.description,
        follow_up_action=_FOLLOW_UPS.get(
            rejection.follow_up_code, E.Rejection.FOLLOW_UP_ACTION_UNSPECIFIED
        ),
        follow_up_action_code=rejection.follow_up_code,
    )


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _duration(span: timedelta) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(span)
    return duration


def _date(value: date | None) -> str:
    return "" if value is None else value.isoformat()
