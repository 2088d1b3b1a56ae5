"""The X12 side of a check: the 270 we send for a command, the outcome a 271 (or failure) means.

Status decisions are `x12.summarize`'s (see its docstring); this module turns its summary
into the service's `Outcome`, classifies errors into the contract's kinds, and gathers the
AAA rejections of every level of the response.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from eligibility_svc.core_client import ExchangeFailure, ExchangeResult
from eligibility_svc.domain import (
    Amount,
    CheckCommand,
    CheckError,
    CheckStatus,
    CoverageState,
    ErrorKind,
    Outcome,
    Person,
    Plan,
    RejectionInfo,
    RejectionLevel,
    ServiceBenefits,
    failed,
)
from eligibility_svc.routing import PayerRoute, ProviderIdentity
from eligibility_svc.x12 import (
    Benefit,
    DatePeriod,
    EligibilityInquiry,
    EligibilityResponse,
    EligibilityStatus,
    EligibilitySummary,
    Entity,
    InformationReceiver,
    Member,
    PatientContext,
    Rejection,
    ServiceInquiry,
    TraceNumber,
    build_270,
    interchange_for,
    summarize,
)
from eligibility_svc.x12.codes import NON_COVERED

# Real-time AAA codes after which the same inquiry may succeed later.
_RETRYABLE_REJECTIONS = frozenset({"42", "80"})
_RETRYABLE_FOLLOW_UPS = frozenset({"P", "R", "W", "X", "Y"})
# A 271 listing more service types than this is summarised for the first ones only.
_MAX_SERVICE_TYPES = 40
_MAX_DESCRIPTION = 400
_ST_CONTROL = "0001"


@dataclass(frozen=True)
class Inquiry:
    """A 270 ready to send: its text (PHI) and the BHT03 reference the 271 must echo."""

    x12: str
    reference: str


def build_inquiry(
    command: CheckCommand,
    *,
    route: PayerRoute,
    provider: ProviderIdentity,
    service_date: date,
    reference: str,
    control_number: int,
    now: datetime,
) -> Inquiry:
    """The 270 for `command`: the patient as subscriber, or as dependent of `subscriber`."""
    patient = command.patient or Person()
    dates = (DatePeriod("291", service_date),)
    trace = TraceNumber("1", reference, _originator(route))
    if command.subscriber is None:
        subscriber = _member("IL", patient, command.member_id, dates, trace)
        dependent = None
    else:
        subscriber = _member("IL", command.subscriber, command.member_id, (), trace)
        dependent = _member("03", patient, None, dates, None)
    stamp = now.replace(second=0, microsecond=0, tzinfo=None)
    inquiry = EligibilityInquiry(
        control_number=_ST_CONTROL,
        reference=reference,
        created_date=stamp.date(),
        created_time=stamp.time(),
        information_source=Entity(
            "PR", "2", name=route.payer_name, id_qualifier="PI", identifier=route.payer_identifier
        ),
        information_receiver=InformationReceiver(
            Entity(
                "1P",
                "2",
                name=provider.name,
                id_qualifier="XX",
                identifier=command.provider_npi or provider.npi,
            )
        ),
        subscriber=subscriber,
        dependent=dependent,
        service_inquiries=(ServiceInquiry(service_types=(command.service_type,)),),
    )
    interchange = interchange_for(
        [inquiry],
        sender_id=route.sender_id,
        receiver_id=route.receiver_id,
        control_number=control_number,
        created=now,
    )
    return Inquiry(build_270(interchange), reference)


def _originator(route: PayerRoute) -> str:
    # TRN03: '9' + a user-assigned 9-character id of the submitter (TR3 2100C TRN03).
    return "9" + "".join(c for c in route.sender_id.upper() if c.isalnum())[:9].ljust(9, "0")


def _member(
    code: str,
    person: Person,
    member_id: str | None,
    dates: tuple[DatePeriod, ...],
    trace: TraceNumber | None,
) -> Member:
    entity = Entity(
        code,
        "1",
        name=person.family_name or None,
        first_name=person.given_name or None,
        middle_name=person.middle_name or None,
        suffix=person.suffix or None,
        id_qualifier=None if member_id is None else "MI",
        identifier=member_id,
    )
    return Member(
        entity=entity,
        trace_numbers=() if trace is None else (trace,),
        birth_date=person.birth_date,
        gender=person.sex or None,
        dates=dates,
    )


# --- reading the answer ----------------------------------------------------------------------


_FAILURE_KINDS = {
    ExchangeFailure.TIMEOUT: ErrorKind.PAYER_TIMEOUT,
    ExchangeFailure.UNAVAILABLE: ErrorKind.PAYER_UNAVAILABLE,
    ExchangeFailure.CIRCUIT_OPEN: ErrorKind.CIRCUIT_OPEN,
    ExchangeFailure.INVALID_RESPONSE: ErrorKind.INVALID_RESPONSE,
}


def outcome_of(
    result: ExchangeResult, service_type: str, *, exchange_id: str | None, received_at: datetime
) -> Outcome:
    """The outcome of one exchange: its failure, or what its 271 says about `service_type`."""
    answered = result.response_payload is not None
    responded_at = received_at if answered else None
    if result.failure is not None or result.response is None:
        kind = _FAILURE_KINDS[result.failure or ExchangeFailure.INVALID_RESPONSE]
        return failed(
            kind,
            result.description[:_MAX_DESCRIPTION],
            retryable=result.retryable,
            responded_at=responded_at,
            exchange_id=exchange_id,
        )
    return outcome_of_response(
        result.response, service_type, exchange_id=exchange_id, responded_at=received_at
    )


def outcome_of_response(
    response: EligibilityResponse,
    service_type: str,
    *,
    exchange_id: str | None,
    responded_at: datetime,
) -> Outcome:
    summary = summarize(response, service_type)
    rejections = _all_rejections(response)
    if summary.status is EligibilityStatus.ERROR:
        return _error_outcome(summary, rejections, exchange_id, responded_at)
    status = CheckStatus(summary.status.value)
    contexts = response.patients()
    context = contexts[0]
    return Outcome(
        status=status,
        plan=_plan(summary, context) if status is not CheckStatus.NOT_FOUND else None,
        benefits=_benefits(response, context, service_type)
        if status is not CheckStatus.NOT_FOUND
        else (),
        rejections=rejections,
        messages=summary.messages,
        responded_at=responded_at,
        exchange_id=exchange_id,
    )


def _error_outcome(
    summary: EligibilitySummary,
    rejections: tuple[RejectionInfo, ...],
    exchange_id: str | None,
    responded_at: datetime,
) -> Outcome:
    description = "; ".join(summary.reasons)[:_MAX_DESCRIPTION]
    if not summary.rejections:
        # Parsed, but says nothing usable about coverage (no EB 1-8, several patients...).
        return Outcome(
            CheckStatus.ERROR,
            rejections=rejections,
            error=CheckError(ErrorKind.INVALID_RESPONSE, description, retryable=False),
            responded_at=responded_at,
            exchange_id=exchange_id,
        )
    retryable = any(
        r.reason_code in _RETRYABLE_REJECTIONS or (r.follow_up_code in _RETRYABLE_FOLLOW_UPS)
        for r in summary.rejections
    )
    return Outcome(
        CheckStatus.ERROR,
        rejections=rejections,
        error=CheckError(ErrorKind.PAYER_REJECTED, description, retryable=retryable),
        responded_at=responded_at,
        exchange_id=exchange_id,
    )


def _plan(summary: EligibilitySummary, context: PatientContext) -> Plan:
    insurance_type = next((b.insurance_type for b in summary.coverage if b.insurance_type), None)
    if insurance_type is None:
        insurance_type = next(
            (b.insurance_type for b in context.patient.benefits if b.insurance_type), ""
        )
    return Plan(
        name=summary.plan_description or "",
        group_number=summary.group_number or "",
        group_name=_group_name(context, summary.group_number),
        insurance_type=insurance_type,
        coverage_start=summary.coverage_begin,
        coverage_end=summary.coverage_end,
    )


def _group_name(context: PatientContext, group_number: str | None) -> str:
    if group_number is None:
        return ""
    for member in (context.patient.member, context.subscriber.member):
        for ref in member.references:
            if ref.identifier == group_number and ref.description:
                return ref.description
    return ""


def _benefits(
    response: EligibilityResponse, context: PatientContext, asked: str
) -> tuple[ServiceBenefits, ...]:
    named = [t for b in context.patient.benefits for t in b.service_types]
    service_types = list(dict.fromkeys((asked, *named)))[:_MAX_SERVICE_TYPES]
    return tuple(_service_benefits(summarize(response, t)) for t in service_types)


def _service_benefits(summary: EligibilitySummary) -> ServiceBenefits:
    return ServiceBenefits(
        service_type=summary.service_type,
        coverage=_coverage_state(summary),
        copayments=_amounts(summary.copays),
        coinsurance=_amounts(summary.coinsurance),
        deductibles=_amounts(summary.deductibles),
        out_of_pocket=_amounts(summary.out_of_pocket),
        messages=tuple(
            message
            for benefit in (
                *summary.copays,
                *summary.coinsurance,
                *summary.deductibles,
                *summary.out_of_pocket,
            )
            for message in benefit.messages
        ),
    )


def _coverage_state(summary: EligibilitySummary) -> CoverageState:
    if summary.status is EligibilityStatus.ACTIVE:
        return CoverageState.COVERED
    if summary.status is EligibilityStatus.INACTIVE:
        if any(b.code == NON_COVERED for b in summary.coverage):
            return CoverageState.NOT_COVERED
        return CoverageState.NOT_ACTIVE
    return CoverageState.UNSPECIFIED


def _amounts(benefits: tuple[Benefit, ...]) -> tuple[Amount, ...]:
    return tuple(
        Amount(
            coverage_level=b.coverage_level or "",
            network=b.in_plan_network or "",
            period=b.time_period or "",
            amount=b.amount,
            percent=b.percent,
            authorization_required=b.authorization_required == "Y",
        )
        for b in benefits
    )


def _all_rejections(response: EligibilityResponse) -> tuple[RejectionInfo, ...]:
    found: list[RejectionInfo] = []
    for source in response.sources:
        found += _rejections(source.rejections, RejectionLevel.SOURCE)
        for receiver in source.receivers:
            found += _rejections(receiver.rejections, RejectionLevel.RECEIVER)
            for subscriber in receiver.subscribers:
                found += _rejections(subscriber.rejections, RejectionLevel.SUBSCRIBER)
                for benefit in subscriber.benefits:
                    found += _rejections(benefit.rejections, RejectionLevel.SUBSCRIBER)
                for dependent in subscriber.dependents:
                    found += _rejections(dependent.rejections, RejectionLevel.DEPENDENT)
                    for benefit in dependent.benefits:
                        found += _rejections(benefit.rejections, RejectionLevel.DEPENDENT)
    return tuple(found)


def _rejections(items: tuple[Rejection, ...], level: RejectionLevel) -> list[RejectionInfo]:
    return [
        RejectionInfo(
            level=level,
            valid_request=r.valid_request,
            code=r.reason_code,
            description=r.reason or "unknown reject reason",
            follow_up_code=r.follow_up_code or "",
        )
        for r in items
    ]
