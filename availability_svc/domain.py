"""Availability domain: locations, providers, resources, visit types, templates and exceptions.

Pure values only: no database, protobuf or wall clock. Ids are the service's external ids
(UUID text); the in-memory index (`availability_svc.index`) works on dense integers that the
service assigns.

Every value validates itself on construction and raises `ValidationError`, which carries one
`Violation(field, reason)` per problem found. The gRPC edge maps it to
`InvalidArgument(violations=[FieldViolation(field, description)])`; messages name fields and
ids only, never free text a user typed.

Time conventions:
- template times, exception ranges and override times are *local wall-clock* values of the
  location where the granule is (naive `time` / `datetime`); materialization turns them into
  UTC instants with the location's IANA zone;
- a template covers `[start_time, end_time)` within one local day (no overnight templates);
  an `end_time` of 00:00 means the end of the day (24:00);
- `effective_to` is inclusive; `None` means open-ended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "DEFAULT_GRANULE_MINUTES",
    "ExceptionKind",
    "GranuleStatus",
    "Location",
    "Override",
    "OverrideKind",
    "PatientKind",
    "Provider",
    "Resource",
    "ResourceNeed",
    "ScheduleException",
    "Template",
    "ValidationError",
    "Violation",
    "VisitType",
    "end_minute_of_day",
    "minute_of_day",
    "validate_granule_minutes",
    "validate_templates",
]

DEFAULT_GRANULE_MINUTES = 15
_MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True, slots=True)
class Violation:
    """One invalid field: its path (e.g. `templates[2].start_time`) and why it is invalid."""

    field: str
    reason: str


class ValidationError(ValueError):
    """A value or a set of values breaks a domain rule.

    `violations` lists every problem found, so a caller can fix them all at once. Reasons name
    fields, ids and limits only (no PHI, no user-supplied free text).
    """

    def __init__(self, violations: list[Violation] | tuple[Violation, ...]) -> None:
        if not violations:
            raise ValueError("ValidationError needs at least one violation")
        self.violations: tuple[Violation, ...] = tuple(violations)
        super().__init__("; ".join(f"{v.field}: {v.reason}" for v in self.violations))

    @classmethod
    def of(cls, field_path: str, reason: str) -> ValidationError:
        """A validation error with a single violation."""
        return cls([Violation(field_path, reason)])


class _Checker:
    """Collects violations so one error reports every invalid field of a value."""

    def __init__(self, prefix: str = "") -> None:
        self._prefix = prefix
        self.violations: list[Violation] = []

    def require(self, ok: bool, field_name: str, reason: str) -> None:
        if not ok:
            self.violations.append(Violation(self._prefix + field_name, reason))

    def require_id(self, value: str, field_name: str) -> None:
        self.require(bool(value.strip()), field_name, "must not be empty")

    def raise_if_any(self) -> None:
        if self.violations:
            raise ValidationError(self.violations)


class GranuleStatus(StrEnum):
    """State of one granule of a provider's time.

    Materialization owns OPEN <-> BLOCKED (and inserts OPEN); only booking moves a granule to
    HELD or BOOKED and back to OPEN. Search offers OPEN granules only.
    """

    OPEN = "OPEN"
    BLOCKED = "BLOCKED"
    HELD = "HELD"
    BOOKED = "BOOKED"


class PatientKind(StrEnum):
    """Which patients a visit type is for (and which kind a search is made for)."""

    NEW = "NEW"
    RETURNING = "RETURNING"
    ANY = "ANY"


class ExceptionKind(StrEnum):
    """Why a provider is away; every kind removes the covered granules from the schedule."""

    PTO = "PTO"
    CONFERENCE = "CONFERENCE"
    ADMIN_BLOCK = "ADMIN_BLOCK"


class OverrideKind(StrEnum):
    """A same-day change to one provider's schedule."""

    LEAVE_EARLY = "LEAVE_EARLY"
    ADD_SLOTS = "ADD_SLOTS"


def minute_of_day(value: time) -> int:
    """Minutes since local midnight of a start time."""
    return value.hour * 60 + value.minute


def end_minute_of_day(value: time) -> int:
    """Minutes since local midnight of an end time; 00:00 as an end means 24:00."""
    minutes = minute_of_day(value)
    return minutes if minutes or value.second or value.microsecond else _MINUTES_PER_DAY


def validate_granule_minutes(granule_minutes: int) -> None:
    """Granules must tile a day exactly, so every local day starts on a granule boundary."""
    if granule_minutes <= 0 or _MINUTES_PER_DAY % granule_minutes != 0:
        raise ValidationError.of(
            "granule_minutes", f"must be a positive divisor of 1440, got {granule_minutes}"
        )


def _is_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Location:
    """A clinic site: coordinates in decimal degrees (WGS 84) and its IANA time zone."""

    id: str
    organization_id: str
    name: str
    latitude: float
    longitude: float
    timezone: str

    def __post_init__(self) -> None:
        check = _Checker()
        check.require_id(self.id, "id")
        check.require_id(self.organization_id, "organization_id")
        check.require(bool(self.name.strip()), "name", "must not be empty")
        check.require(
            math.isfinite(self.latitude) and -90.0 <= self.latitude <= 90.0,
            "latitude",
            "must be between -90 and 90 degrees",
        )
        check.require(
            math.isfinite(self.longitude) and -180.0 <= self.longitude <= 180.0,
            "longitude",
            "must be between -180 and 180 degrees",
        )
        check.require(_is_zone(self.timezone), "timezone", "must be an IANA time zone name")
        check.raise_if_any()

    @property
    def zone(self) -> ZoneInfo:
        """The location's time zone (ZoneInfo caches instances per name)."""
        return ZoneInfo(self.timezone)


@dataclass(frozen=True, slots=True)
class Provider:
    """A clinician who can be booked, with what the search filters on."""

    id: str
    organization_id: str
    name: str
    specialties: frozenset[str]
    languages: frozenset[str]
    accepted_plan_ids: frozenset[str]
    location_ids: frozenset[str]
    accepts_new_patients: bool = True

    def __post_init__(self) -> None:
        check = _Checker()
        check.require_id(self.id, "id")
        check.require_id(self.organization_id, "organization_id")
        check.require(bool(self.name.strip()), "name", "must not be empty")
        check.require(bool(self.specialties), "specialties", "must name at least one specialty")
        check.require(
            all(s.strip() for s in self.specialties), "specialties", "must not contain empty codes"
        )
        check.require(
            all(s.strip() for s in self.languages), "languages", "must not contain empty codes"
        )
        check.require(
            all(p.strip() for p in self.accepted_plan_ids),
            "accepted_plan_ids",
            "must not contain empty ids",
        )
        check.require(
            all(loc.strip() for loc in self.location_ids),
            "location_ids",
            "must not contain empty ids",
        )
        check.raise_if_any()


@dataclass(frozen=True, slots=True)
class Resource:
    """A room or piece of equipment at one location; `kind` is e.g. "exam_room", "ultrasound"."""

    id: str
    location_id: str
    kind: str

    def __post_init__(self) -> None:
        check = _Checker()
        check.require_id(self.id, "id")
        check.require_id(self.location_id, "location_id")
        check.require(bool(self.kind.strip()), "kind", "must not be empty")
        check.raise_if_any()


@dataclass(frozen=True, slots=True)
class ResourceNeed:
    """A visit needs `count` resources of `kind` at its location for the whole visit."""

    kind: str
    count: int = 1

    def __post_init__(self) -> None:
        check = _Checker()
        check.require(bool(self.kind.strip()), "kind", "must not be empty")
        check.require(self.count >= 1, "count", "must be at least 1")
        check.raise_if_any()


@dataclass(frozen=True, slots=True)
class VisitType:
    """A kind of appointment: how many granules it takes and what it needs.

    `location_ids` restricts where it can take place; empty means any location.
    """

    id: str
    organization_id: str
    name: str
    specialty: str
    duration_granules: int
    resource_needs: tuple[ResourceNeed, ...] = ()
    patient_kind: PatientKind = PatientKind.ANY
    location_ids: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        check = _Checker()
        check.require_id(self.id, "id")
        check.require_id(self.organization_id, "organization_id")
        check.require(bool(self.name.strip()), "name", "must not be empty")
        check.require(bool(self.specialty.strip()), "specialty", "must not be empty")
        check.require(
            1 <= self.duration_granules <= 96,
            "duration_granules",
            "must be between 1 and 96 granules",
        )
        kinds = [need.kind for need in self.resource_needs]
        check.require(
            len(kinds) == len(set(kinds)),
            "resource_needs",
            "must name each resource kind once (use count for several)",
        )
        check.raise_if_any()


@dataclass(frozen=True, slots=True)
class Template:
    """A recurring weekly pattern: a provider works at a location on a weekday, local times.

    `weekday` follows `date.weekday()` (0 = Monday ... 6 = Sunday). The template covers local
    wall-clock `[start_time, end_time)` on each matching date from `effective_from` to
    `effective_to` inclusive (`None`: no end).
    """

    id: str
    provider_id: str
    location_id: str
    weekday: int
    start_time: time
    end_time: time
    effective_from: date
    effective_to: date | None
    visit_type_ids: frozenset[str]

    def __post_init__(self) -> None:
        check = _Checker()
        check.require_id(self.id, "id")
        check.require_id(self.provider_id, "provider_id")
        check.require_id(self.location_id, "location_id")
        check.require(0 <= self.weekday <= 6, "weekday", "must be 0 (Monday) to 6 (Sunday)")
        check.require(self.start_time.tzinfo is None, "start_time", "must be a local time")
        check.require(self.end_time.tzinfo is None, "end_time", "must be a local time")
        check.require(
            minute_of_day(self.start_time) < end_minute_of_day(self.end_time),
            "end_time",
            "must be after start_time on the same day (00:00 means midnight at the end)",
        )
        check.require(
            self.effective_to is None or self.effective_to >= self.effective_from,
            "effective_to",
            "must not be before effective_from",
        )
        check.require(bool(self.visit_type_ids), "visit_type_ids", "must offer a visit type")
        check.raise_if_any()

    def active_on(self, day: date) -> bool:
        """Whether this template applies to the local date `day`."""
        return (
            day.weekday() == self.weekday
            and self.effective_from <= day
            and (self.effective_to is None or day <= self.effective_to)
        )


@dataclass(frozen=True, slots=True)
class ScheduleException:
    """Time a provider is away: local wall-clock `[start_local, end_local)`.

    Interpreted in the local time of each granule's location. `location_id` limits it to one
    location; `None` means everywhere. Use `whole_days` for full days (PTO, conferences).
    """

    id: str
    provider_id: str
    kind: ExceptionKind
    start_local: datetime
    end_local: datetime
    location_id: str | None = None

    def __post_init__(self) -> None:
        check = _Checker()
        check.require_id(self.id, "id")
        check.require_id(self.provider_id, "provider_id")
        check.require(
            self.start_local.tzinfo is None,
            "start_local",
            "must be a local wall-clock time without a zone",
        )
        check.require(
            self.end_local.tzinfo is None,
            "end_local",
            "must be a local wall-clock time without a zone",
        )
        if self.start_local.tzinfo is None and self.end_local.tzinfo is None:
            check.require(
                self.start_local < self.end_local, "end_local", "must be after start_local"
            )
        if self.location_id is not None:
            check.require_id(self.location_id, "location_id")
        check.raise_if_any()

    @classmethod
    def whole_days(
        cls,
        exception_id: str,
        provider_id: str,
        kind: ExceptionKind,
        first_day: date,
        last_day: date,
        location_id: str | None = None,
    ) -> ScheduleException:
        """An exception covering local dates `first_day` to `last_day` inclusive."""
        if last_day < first_day:
            raise ValidationError.of("last_day", "must not be before first_day")
        return cls(
            id=exception_id,
            provider_id=provider_id,
            kind=kind,
            start_local=datetime.combine(first_day, time()),
            end_local=datetime.combine(last_day + timedelta(days=1), time()),
            location_id=location_id,
        )


@dataclass(frozen=True, slots=True)
class Override:
    """A same-day change for one provider on one local date.

    - LEAVE_EARLY: no granule starting at or after local `start_time` that day, at any location.
    - ADD_SLOTS: extra granules `[start_time, end_time)` at `location_id`, offering
      `visit_type_ids`.
    Removals (exceptions, LEAVE_EARLY) win over ADD_SLOTS: time a provider marked as away is
    never offered.
    """

    id: str
    provider_id: str
    day: date
    kind: OverrideKind
    start_time: time
    end_time: time | None = None
    location_id: str | None = None
    visit_type_ids: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        check = _Checker()
        check.require_id(self.id, "id")
        check.require_id(self.provider_id, "provider_id")
        check.require(self.start_time.tzinfo is None, "start_time", "must be a local time")
        if self.kind is OverrideKind.ADD_SLOTS:
            check.require(self.end_time is not None, "end_time", "is required for ADD_SLOTS")
            check.require(
                self.end_time is None
                or minute_of_day(self.start_time) < end_minute_of_day(self.end_time),
                "end_time",
                "must be after start_time on the same day (00:00 means midnight at the end)",
            )
            check.require(
                self.location_id is not None and bool(self.location_id.strip()),
                "location_id",
                "is required for ADD_SLOTS",
            )
            check.require(bool(self.visit_type_ids), "visit_type_ids", "must offer a visit type")
        else:
            check.require(self.end_time is None, "end_time", "must be empty for LEAVE_EARLY")
            check.require(self.location_id is None, "location_id", "must be empty for LEAVE_EARLY")
        check.raise_if_any()


def _dates_overlap(a: Template, b: Template) -> bool:
    a_end = a.effective_to or date.max
    b_end = b.effective_to or date.max
    return a.effective_from <= b_end and b.effective_from <= a_end


def validate_templates(templates: list[Template] | tuple[Template, ...]) -> None:
    """Reject a provider being scheduled at two locations at the same time.

    Compares local wall-clock times, which is exact when a provider's locations share a time
    zone (the usual case); materialization re-checks the real UTC instants and rejects
    collisions across zones too. Overlaps at the *same* location are allowed (their union is
    scheduled), e.g. separate templates offering different visit types.
    """
    violations: list[Violation] = []
    for i, a in enumerate(templates):
        for j in range(i + 1, len(templates)):
            b = templates[j]
            if (
                a.provider_id == b.provider_id
                and a.location_id != b.location_id
                and a.weekday == b.weekday
                and minute_of_day(a.start_time) < end_minute_of_day(b.end_time)
                and minute_of_day(b.start_time) < end_minute_of_day(a.end_time)
                and _dates_overlap(a, b)
            ):
                violations.append(
                    Violation(
                        f"templates[{j}]",
                        f"overlaps template {a.id} at another location on the same weekday",
                    )
                )
    if violations:
        raise ValidationError(violations)
