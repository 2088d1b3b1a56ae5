"""Schedule administration records, and their translation into the pure materialization core.

The administration API stores more than `availability_svc.domain` models (display names,
addresses, activity flags, multi-window templates repeating every n weeks, part-day exceptions
spanning several dates, arrive-late overrides). These frozen records are what `store.py` reads
and writes and what `admin_service.py` validates; the `*_for_materialization` functions turn
them into the domain values `materialize.materialize_provider` understands:

- a template becomes one `domain.Template` per window (for every-week templates), or one per
  window and active week (for templates repeating every n > 1 weeks);
- an exception becomes one `domain.ScheduleException` for a whole-day span, or one per date for
  a part-day window;
- LEAVE_EARLY and ARRIVE_LATE overrides become location-bound exceptions on their date (the
  API's override is bound to one location, the domain's LEAVE_EARLY is not); ADD_HOURS becomes
  a `domain.Override` of kind ADD_SLOTS.

Times of day are minutes since local midnight; an end of 1440 means 24:00. Days of the week
are ISO numbers (1 = Monday .. 7 = Sunday).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum

from availability_svc import domain

__all__ = [
    "MINUTES_PER_DAY",
    "Address",
    "ConflictCause",
    "ConflictRecord",
    "ConflictState",
    "ExceptionKind",
    "ExceptionRecord",
    "InsurancePlanRecord",
    "LocationRecord",
    "OrganizationRecord",
    "OverrideKind",
    "OverrideRecord",
    "ProviderRecord",
    "ResourceCategory",
    "ResourceNeedSpec",
    "ResourceRecord",
    "TemplateRecord",
    "TemplateWindow",
    "VisitTypeRecord",
    "exceptions_for_materialization",
    "format_minute",
    "location_for_materialization",
    "overrides_for_materialization",
    "parse_minute",
    "templates_for_materialization",
]

MINUTES_PER_DAY = 24 * 60


class ResourceCategory(StrEnum):
    """Room or equipment."""

    ROOM = "ROOM"
    EQUIPMENT = "EQUIPMENT"


class ExceptionKind(StrEnum):
    """Why a provider's time is blocked."""

    PTO = "PTO"
    CONFERENCE = "CONFERENCE"
    ADMIN_BLOCK = "ADMIN_BLOCK"
    OTHER = "OTHER"


class OverrideKind(StrEnum):
    """What a same-day override changes."""

    LEAVE_EARLY = "LEAVE_EARLY"
    ARRIVE_LATE = "ARRIVE_LATE"
    ADD_HOURS = "ADD_HOURS"


class ConflictCause(StrEnum):
    """What made a booked visit no longer fit the schedule."""

    EXCEPTION = "EXCEPTION"
    OVERRIDE = "OVERRIDE"
    TEMPLATE_CHANGE = "TEMPLATE_CHANGE"


class ConflictState(StrEnum):
    """Whether a conflict still needs a decision."""

    OPEN = "OPEN"
    RESOLVED = "RESOLVED"


@dataclass(frozen=True, slots=True)
class OrganizationRecord:
    """A health system: the unit of tenancy, with its granule size and horizon."""

    id: str
    display_name: str
    granule_minutes: int
    horizon_days: int
    time_zone: str
    active: bool
    create_time: datetime | None = None
    update_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Address:
    """A facility's postal address (public directory data, not PHI)."""

    address_lines: tuple[str, ...] = ()
    locality: str = ""
    administrative_area: str = ""
    postal_code: str = ""
    region_code: str = ""


@dataclass(frozen=True, slots=True)
class LocationRecord:
    """A clinic site with coordinates and the IANA zone its templates are written in."""

    id: str
    organization_id: str
    display_name: str
    address: Address
    latitude: float
    longitude: float
    time_zone: str
    active: bool
    create_time: datetime | None = None
    update_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class ProviderRecord:
    """A clinician: what search filters on, and the locations templates may name."""

    id: str
    organization_id: str
    display_name: str
    npi: str
    specialties: tuple[str, ...]
    languages: tuple[str, ...]
    accepted_plan_ids: tuple[str, ...]
    location_ids: tuple[str, ...]
    accepting_new_patients: bool
    active: bool
    create_time: datetime | None = None
    update_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class InsurancePlanRecord:
    """A plan an organisation's providers may accept; `plan_id` is chosen by the organisation."""

    plan_id: str
    organization_id: str
    display_name: str
    payer_id: str
    active: bool
    create_time: datetime | None = None
    update_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class ResourceRecord:
    """A room or piece of equipment at one location."""

    id: str
    organization_id: str
    location_id: str
    display_name: str
    category: ResourceCategory
    kind: str
    active: bool
    create_time: datetime | None = None
    update_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class ResourceNeedSpec:
    """A visit needs `count` distinct resources of `kind` for its whole duration."""

    category: ResourceCategory
    kind: str
    count: int


@dataclass(frozen=True, slots=True)
class VisitTypeRecord:
    """A kind of visit: duration in granules, specialty, needs and booking limits."""

    id: str
    organization_id: str
    display_name: str
    specialty: str
    duration_granules: int
    resource_needs: tuple[ResourceNeedSpec, ...]
    patient_kind: domain.PatientKind
    location_ids: tuple[str, ...]
    minimum_notice_seconds: int
    maximum_days_ahead: int
    service_type_code: str
    active: bool
    create_time: datetime | None = None
    update_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class TemplateWindow:
    """One weekly window: ISO day of week, local `[start_minute, end_minute)`, visit types."""

    day_of_week: int
    start_minute: int
    end_minute: int
    visit_type_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TemplateRecord:
    """A provider's recurring weekly hours at one location."""

    id: str
    organization_id: str
    provider_id: str
    location_id: str
    effective_start_date: date
    effective_end_date: date | None
    week_interval: int
    windows: tuple[TemplateWindow, ...]
    visit_type_ids: tuple[str, ...]
    create_time: datetime | None = None
    update_time: datetime | None = None

    def applies_between(self, first: date, last: date) -> bool:
        """Whether the template's effective dates overlap `[first, last]`."""
        end = self.effective_end_date or date.max
        return self.effective_start_date <= last and first <= end


@dataclass(frozen=True, slots=True)
class ExceptionRecord:
    """Blocked time over local dates `[start_date, end_date]`: whole days or a daily window."""

    id: str
    organization_id: str
    provider_id: str
    location_id: str | None
    kind: ExceptionKind
    start_date: date
    end_date: date
    start_minute: int | None
    end_minute: int | None
    description: str
    create_time: datetime | None = None

    @property
    def whole_days(self) -> bool:
        return self.start_minute is None


@dataclass(frozen=True, slots=True)
class OverrideRecord:
    """A change to one local date at one location; the window is the effective one.

    LEAVE_EARLY stores `[leave time, 1440)`, ARRIVE_LATE `[0, arrival time)`, ADD_HOURS the
    added window.
    """

    id: str
    organization_id: str
    provider_id: str
    location_id: str
    day: date
    kind: OverrideKind
    start_minute: int
    end_minute: int
    visit_type_ids: tuple[str, ...]
    description: str
    create_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class ConflictRecord:
    """A booked or held visit a schedule change no longer fits."""

    id: str
    organization_id: str
    provider_id: str
    location_id: str
    appointment_id: str | None
    hold_id: str | None
    start_time: datetime
    end_time: datetime
    cause: ConflictCause
    cause_id: str | None
    state: ConflictState
    detect_time: datetime
    resolve_time: datetime | None


def parse_minute(text: str, *, allow_end_of_day: bool) -> int:
    """Minutes since midnight of `HH:MM`; `24:00` only where an end of day is allowed.

    Raises ValueError with a reason that names the expected format (no input echoed).
    """
    hours, sep, minutes = text.partition(":")
    if sep != ":" or len(hours) != 2 or len(minutes) != 2:
        raise ValueError("must be HH:MM")
    if not (hours.isdigit() and minutes.isdigit()):
        raise ValueError("must be HH:MM")
    value = int(hours) * 60 + int(minutes)
    if int(minutes) >= 60 or value > MINUTES_PER_DAY:
        raise ValueError("must be a time of day between 00:00 and 24:00")
    if value == MINUTES_PER_DAY and not allow_end_of_day:
        raise ValueError("must be before 24:00")
    return value


def format_minute(value: int) -> str:
    """`HH:MM` of a minute of the day (1440 is `24:00`)."""
    return f"{value // 60:02d}:{value % 60:02d}"


def _clock(minute: int) -> time:
    # The domain writes the end of the day as 00:00 (see domain.end_minute_of_day).
    return time(minute // 60, minute % 60) if minute < MINUTES_PER_DAY else time(0)


def _local(day: date, minute: int) -> datetime:
    return datetime.combine(day, time()) + timedelta(minutes=minute)


def location_for_materialization(record: LocationRecord) -> domain.Location:
    """The domain location (coordinates and zone) of a stored location."""
    return domain.Location(
        id=record.id,
        organization_id=record.organization_id,
        name=record.display_name,
        latitude=record.latitude,
        longitude=record.longitude,
        timezone=record.time_zone,
    )


def _week_monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


def _active_dates(
    template: TemplateRecord, window: TemplateWindow, first: date, last: date
) -> Iterator[date]:
    """Dates in `[first, last]` on which `window` of an every-n-weeks template applies."""
    start = max(first, template.effective_start_date)
    end = min(last, template.effective_end_date or date.max)
    anchor = _week_monday(template.effective_start_date)
    day = start + timedelta(days=(window.day_of_week - 1 - start.weekday()) % 7)
    while day <= end:
        weeks = (_week_monday(day) - anchor).days // 7
        if weeks % template.week_interval == 0:
            yield day
        day += timedelta(days=7)


def templates_for_materialization(
    templates: Iterable[TemplateRecord], first: date, last: date
) -> list[domain.Template]:
    """Domain templates equivalent to `templates` on local dates `[first, last]`."""
    result: list[domain.Template] = []
    for template in templates:
        if not template.applies_between(first, last):
            continue
        for index, window in enumerate(template.windows):
            visit_types = frozenset(window.visit_type_ids or template.visit_type_ids)
            if template.week_interval == 1:
                spans = [(template.effective_start_date, template.effective_end_date)]
            else:
                spans = [(d, d) for d in _active_dates(template, window, first, last)]
            for span_start, span_end in spans:
                result.append(
                    domain.Template(
                        id=f"{template.id}/windows/{index}",
                        provider_id=template.provider_id,
                        location_id=template.location_id,
                        weekday=window.day_of_week - 1,
                        start_time=_clock(window.start_minute),
                        end_time=_clock(window.end_minute),
                        effective_from=span_start,
                        effective_to=span_end,
                        visit_type_ids=visit_types,
                    )
                )
    return result


# The domain names fewer kinds than the API; materialization treats every kind alike (time
# away is time away), so OTHER travels as the most general of them.
_DOMAIN_EXCEPTION_KIND = {
    ExceptionKind.PTO: domain.ExceptionKind.PTO,
    ExceptionKind.CONFERENCE: domain.ExceptionKind.CONFERENCE,
    ExceptionKind.ADMIN_BLOCK: domain.ExceptionKind.ADMIN_BLOCK,
    ExceptionKind.OTHER: domain.ExceptionKind.ADMIN_BLOCK,
}


def exceptions_for_materialization(
    exceptions: Iterable[ExceptionRecord], first: date, last: date
) -> list[domain.ScheduleException]:
    """Domain exceptions equivalent to `exceptions` on local dates `[first, last]`."""
    result: list[domain.ScheduleException] = []
    for exc in exceptions:
        span_first, span_last = max(first, exc.start_date), min(last, exc.end_date)
        if span_first > span_last:
            continue
        kind = _DOMAIN_EXCEPTION_KIND[exc.kind]
        if exc.start_minute is None or exc.end_minute is None:
            result.append(
                domain.ScheduleException.whole_days(
                    exc.id, exc.provider_id, kind, span_first, span_last, exc.location_id
                )
            )
            continue
        day = span_first
        while day <= span_last:
            result.append(
                domain.ScheduleException(
                    id=exc.id,
                    provider_id=exc.provider_id,
                    kind=kind,
                    start_local=_local(day, exc.start_minute),
                    end_local=_local(day, exc.end_minute),
                    location_id=exc.location_id,
                )
            )
            day += timedelta(days=1)
    return result


def overrides_for_materialization(
    overrides: Iterable[OverrideRecord], first: date, last: date
) -> tuple[list[domain.ScheduleException], list[domain.Override]]:
    """(removals as exceptions, additions as overrides) for overrides on `[first, last]`."""
    removals: list[domain.ScheduleException] = []
    additions: list[domain.Override] = []
    for ovr in overrides:
        if not first <= ovr.day <= last:
            continue
        if ovr.kind is OverrideKind.ADD_HOURS:
            additions.append(
                domain.Override(
                    id=ovr.id,
                    provider_id=ovr.provider_id,
                    day=ovr.day,
                    kind=domain.OverrideKind.ADD_SLOTS,
                    start_time=_clock(ovr.start_minute),
                    end_time=_clock(ovr.end_minute),
                    location_id=ovr.location_id,
                    visit_type_ids=frozenset(ovr.visit_type_ids),
                )
            )
        else:
            removals.append(
                domain.ScheduleException(
                    id=ovr.id,
                    provider_id=ovr.provider_id,
                    kind=domain.ExceptionKind.ADMIN_BLOCK,
                    start_local=_local(ovr.day, ovr.start_minute),
                    end_local=_local(ovr.day, ovr.end_minute),
                    location_id=ovr.location_id,
                )
            )
    return removals, additions
