"""One status for one patient and service type, decided from a normalized 271.

The decision, in order (the first rule that applies wins):

1. An AAA at the information source (2000A/2100A) or receiver (2100B) level: ERROR. The
   payer or clearinghouse refused the exchange itself (42 unable to respond, 79 invalid
   participant, 50 provider ineligible...), so nothing is known about the patient.
2. An AAA at the patient's level (2100C, and 2100D when a dependent is the patient):
   NOT_FOUND when every such code says the patient could not be matched from the
   identifiers sent (72 member id, 73 name, 75 subscriber not found, 58/71 birth date...,
   see `codes.PATIENT_IDENTITY_REJECTIONS`): the fix is to correct the demographics.
   Any other code (42 payer down, 57 bad service date...) gives ERROR. A rejection wins
   over EB segments in the same loop: payers sometimes send both, and booking must not
   treat a rejected request as verified coverage.
3. Coverage entries (EB01 1-8) are looked for in this order: those naming the service type;
   an EB01 I (non-covered) naming it, which gives INACTIVE; those naming 30 (health benefit
   plan coverage); those naming no service type. An entry carrying its own AAA (2110) is a
   rejected answer for that service, not evidence of coverage.
4. Among the usable entries any active one (1-5) gives ACTIVE, otherwise INACTIVE (6-8).
   Only rejected entries give ERROR; no entries at all give ERROR too, because the
   response does not say whether the patient is covered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from eligibility_svc.x12 import codes
from eligibility_svc.x12.model import (
    Benefit,
    CoverageStatus,
    DatePeriod,
    EligibilityResponse,
    EligibilityStatus,
    PatientContext,
    Rejection,
)


@dataclass(frozen=True)
class EligibilitySummary:
    """The decided status with its reasons and the plan details relevant to the service type.

    `reasons` hold codes and their meanings only (no PHI), so they may be logged.
    """

    status: EligibilityStatus
    service_type: str
    reasons: tuple[str, ...]
    rejections: tuple[Rejection, ...] = ()
    patient_level: str | None = None
    coverage: tuple[Benefit, ...] = ()
    plan_description: str | None = None
    group_number: str | None = None
    plan_number: str | None = None
    coverage_begin: date | None = None
    coverage_end: date | None = None
    copays: tuple[Benefit, ...] = ()
    coinsurance: tuple[Benefit, ...] = ()
    deductibles: tuple[Benefit, ...] = ()
    out_of_pocket: tuple[Benefit, ...] = ()
    messages: tuple[str, ...] = ()


def summarize(
    response: EligibilityResponse, service_type: str = codes.HEALTH_BENEFIT_PLAN_COVERAGE
) -> EligibilitySummary:
    """The status of the one patient a real-time 271 answers for."""
    contexts = response.patients()
    if len(contexts) == 1:
        return summarize_patient(contexts[0], service_type)
    if len(contexts) > 1:
        return EligibilitySummary(
            EligibilityStatus.ERROR,
            service_type,
            (f"the response carries {len(contexts)} patients; a real-time answer carries one",),
        )
    rejections = tuple(
        rejection
        for source in response.sources
        for rejection in (
            *source.rejections,
            *(r for receiver in source.receivers for r in receiver.rejections),
        )
    )
    reasons = tuple(f"rejected: {describe_rejection(r)}" for r in rejections)
    return EligibilitySummary(
        EligibilityStatus.ERROR,
        service_type,
        reasons or ("the response names no subscriber",),
        rejections,
    )


def summarize_patient(
    context: PatientContext, service_type: str = codes.HEALTH_BENEFIT_PLAN_COVERAGE
) -> EligibilitySummary:
    """The status of one patient in a 271 for one service type (see the module docstring)."""
    level = "dependent" if context.dependent is not None else "subscriber"
    exchange = (
        *(("information source", r) for r in context.source.rejections),
        *(("information receiver", r) for r in context.receiver.rejections),
    )
    if exchange:
        return EligibilitySummary(
            EligibilityStatus.ERROR,
            service_type,
            tuple(f"{where} level rejected: {describe_rejection(r)}" for where, r in exchange),
            tuple(r for _, r in exchange),
            level,
        )
    patient_rejections = (
        *context.subscriber.rejections,
        *(() if context.dependent is None else context.dependent.rejections),
    )
    if patient_rejections:
        return _rejected_patient(patient_rejections, service_type, level)
    decision = _decide_coverage(context.patient.benefits, service_type)
    return _with_details(context, service_type, level, decision)


def describe_rejection(rejection: Rejection) -> str:
    """'72 Invalid/Missing Subscriber/Insured ID (follow-up C: Please Correct and Resubmit)'."""
    text = f"{rejection.reason_code} {rejection.reason or 'unknown reject reason'}"
    if rejection.follow_up_code is not None:
        text += f" (follow-up {rejection.follow_up_code}: {rejection.follow_up or 'unknown'})"
    return text


def _rejected_patient(
    rejections: Sequence[Rejection], service_type: str, level: str
) -> EligibilitySummary:
    identity = all(r.reason_code in codes.PATIENT_IDENTITY_REJECTIONS for r in rejections)
    return EligibilitySummary(
        EligibilityStatus.NOT_FOUND if identity else EligibilityStatus.ERROR,
        service_type,
        tuple(f"patient level rejected: {describe_rejection(r)}" for r in rejections),
        tuple(rejections),
        level,
    )


@dataclass(frozen=True)
class _Decision:
    status: EligibilityStatus
    entries: tuple[Benefit, ...]
    reasons: tuple[str, ...]
    rejections: tuple[Rejection, ...] = ()


def _decide_coverage(benefits: Sequence[Benefit], service_type: str) -> _Decision:
    entries, scope = _coverage_entries(benefits, service_type)
    if not entries:
        not_covered = tuple(
            b for b in benefits if b.code == codes.NON_COVERED and b.applies_to(service_type)
        )
        if not_covered:
            return _Decision(
                EligibilityStatus.INACTIVE,
                not_covered,
                (f"EB01 I (Non-Covered) for service type {service_type}",),
            )
        return _Decision(
            EligibilityStatus.ERROR,
            (),
            (f"no coverage information (EB01 1-8) for service type {service_type}",),
        )
    usable = tuple(b for b in entries if not b.rejections)
    if not usable:
        rejections = tuple(r for b in entries for r in b.rejections)
        return _Decision(
            EligibilityStatus.ERROR,
            entries,
            tuple(f"coverage for {scope} rejected: {describe_rejection(r)}" for r in rejections),
            rejections,
        )
    active = tuple(b for b in usable if b.coverage is CoverageStatus.ACTIVE)
    chosen = active or usable
    return _Decision(
        EligibilityStatus.ACTIVE if active else EligibilityStatus.INACTIVE,
        chosen,
        tuple(f"EB01 {b.code} ({b.meaning}) for {scope}" for b in chosen),
    )


def _coverage_entries(
    benefits: Sequence[Benefit], service_type: str
) -> tuple[tuple[Benefit, ...], str]:
    coverage = [b for b in benefits if b.coverage is not None]
    explicit = tuple(b for b in coverage if b.applies_to(service_type))
    if explicit:
        return explicit, f"service type {service_type}"
    if any(b.code == codes.NON_COVERED and b.applies_to(service_type) for b in benefits):
        return (), ""
    plan = codes.HEALTH_BENEFIT_PLAN_COVERAGE
    plan_wide = tuple(b for b in coverage if b.applies_to(plan))
    if plan_wide:
        return plan_wide, f"service type {plan} (the plan as a whole)"
    general = tuple(b for b in coverage if not b.service_types)
    return general, "all services (no service type named)"


def _with_details(
    context: PatientContext,
    service_type: str,
    level: str,
    decision: _Decision,
) -> EligibilitySummary:
    entries = decision.entries
    benefits = context.patient.benefits
    relevant = tuple(b for b in benefits if b.applies_to(service_type) or not b.service_types)
    plan_description = next(
        (b.plan_description for b in (*entries, *benefits) if b.plan_description), None
    )
    dates = (
        *context.patient.member.dates,
        *(d for b in entries for d in b.dates),
        *context.subscriber.member.dates,
    )
    begin, end = coverage_period(dates)
    return EligibilitySummary(
        status=decision.status,
        service_type=service_type,
        reasons=decision.reasons,
        rejections=decision.rejections,
        patient_level=level,
        coverage=entries,
        plan_description=plan_description,
        group_number=reference_of(context, codes.GROUP_NUMBER_QUALIFIERS),
        plan_number=reference_of(context, (codes.PLAN_NUMBER_QUALIFIER,)),
        coverage_begin=begin,
        coverage_end=end,
        copays=_with_code(relevant, codes.COPAY),
        coinsurance=_with_code(relevant, codes.COINSURANCE),
        deductibles=_with_code(relevant, codes.DEDUCTIBLE),
        out_of_pocket=_with_code(relevant, codes.OUT_OF_POCKET),
        messages=tuple(message for b in benefits for message in b.messages),
    )


def _with_code(benefits: Sequence[Benefit], code: str) -> tuple[Benefit, ...]:
    return tuple(b for b in benefits if b.code == code)


def coverage_period(dates: Sequence[DatePeriod]) -> tuple[date | None, date | None]:
    """Plan/eligibility begin and end: 346/356/348 and 347/357/349, else a 291/307 range."""
    begin = _first(dates, codes.COVERAGE_BEGIN_QUALIFIERS)
    end = _first(dates, codes.COVERAGE_END_QUALIFIERS)
    period = next(
        (d for q in codes.COVERAGE_PERIOD_QUALIFIERS for d in dates if d.qualifier == q), None
    )
    if period is not None and period.end is not None:
        begin = begin or period.start
        end = end or period.end
    return begin, end


def _first(dates: Sequence[DatePeriod], qualifiers: Sequence[str]) -> date | None:
    for qualifier in qualifiers:
        for period in dates:
            if period.qualifier == qualifier:
                return period.start
    return None


def reference_of(context: PatientContext, qualifiers: Sequence[str]) -> str | None:
    """The first REF with one of `qualifiers` (best first): the patient's own, then the
    subscriber's (a dependent is covered under the subscriber's group), then the benefits'.
    """
    members = (context.patient.member, context.subscriber.member)
    for qualifier in qualifiers:
        for member in members:
            for ref in member.references:
                if ref.qualifier == qualifier:
                    return ref.identifier
        for benefit in context.patient.benefits:
            for ref in benefit.references:
                if ref.qualifier == qualifier:
                    return ref.identifier
    return None
