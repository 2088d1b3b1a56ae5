"""Slot materialization: templates, exceptions and overrides -> granules, and the diff to apply.

Both steps are pure: the service loads the inputs and the existing granules, calls
`materialize_provider` and `diff_granules`, and writes the `GranuleDiff` in one transaction.

Daylight-saving rule (documented behaviour, tested):
- Templates are local wall-clock times. Each *local* granule start `d + hh:mm` is turned into an
  instant with the location's zone, so 08:00-17:00 stays 08:00-17:00 local all year.
- Spring forward: local starts that do not exist (e.g. 02:00-02:45 on 2026-03-08 in
  America/New_York) are skipped; no granule is moved or stretched to make up for them.
- Fall back: a local start that occurs twice (01:00-01:45 on 2026-11-01 in New York) is
  materialized once, at its *first* occurrence (`fold=0`, still on daylight time). The second
  pass through that hour has no granules. Every granule is exactly `granule_minutes` of
  elapsed time long.

Diff rule:
- An existing OPEN granule that is no longer desired becomes BLOCKED (not deleted): its id and
  history stay, a later template change reopens it with an update, and the index sees one
  `blocked` event. BLOCKED is owned by materialization; a manual block is a
  `ScheduleException`.
- HELD and BOOKED granules are never changed; if they are no longer desired (or desired at
  another location) they are reported as conflicts for staff to resolve.
- A granule's identity is (provider_id, start_utc): a provider is in one place at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from availability_svc.domain import (
    DEFAULT_GRANULE_MINUTES,
    GranuleStatus,
    Location,
    Override,
    OverrideKind,
    ScheduleException,
    Template,
    ValidationError,
    Violation,
    end_minute_of_day,
    minute_of_day,
    validate_granule_minutes,
)

__all__ = [
    "Conflict",
    "DateScope",
    "DayGrids",
    "ExistingGranule",
    "Granule",
    "GranuleDiff",
    "Relocation",
    "apply_diff",
    "diff_granules",
    "materialize_provider",
    "offered_visit_types",
]


_DAY = timedelta(days=1)


class Granule(NamedTuple):
    """A desired granule: the provider is bookable at the location over [start_utc, end_utc)."""

    provider_id: str
    location_id: str
    start_utc: datetime
    end_utc: datetime


class ExistingGranule(NamedTuple):
    """A granule as stored, with its current status."""

    provider_id: str
    location_id: str
    start_utc: datetime
    status: GranuleStatus


class Relocation(NamedTuple):
    """An OPEN or BLOCKED granule now desired at another location: move it and open it."""

    existing: ExistingGranule
    location_id: str


class Conflict(NamedTuple):
    """A HELD or BOOKED granule the schedule no longer wants where it is.

    `desired_location_id` is None when the time is no longer scheduled at all, otherwise the
    location the schedule now wants the provider at.
    """

    existing: ExistingGranule
    desired_location_id: str | None


@dataclass(frozen=True, slots=True)
class GranuleDiff:
    """What to change so the stored granules match the desired ones.

    - `insert`: new OPEN granules;
    - `block`: OPEN granules no longer desired -> BLOCKED;
    - `reopen`: BLOCKED granules desired again at the same location -> OPEN;
    - `relocate`: OPEN/BLOCKED granules desired at another location -> that location, OPEN;
    - `conflicts`: HELD/BOOKED granules no longer desired there; reported, never changed.
    """

    insert: tuple[Granule, ...]
    block: tuple[ExistingGranule, ...]
    reopen: tuple[ExistingGranule, ...]
    relocate: tuple[Relocation, ...]
    conflicts: tuple[Conflict, ...]

    @property
    def has_changes(self) -> bool:
        """Whether applying the diff would change anything (conflicts are reports, not changes)."""
        return bool(self.insert or self.block or self.reopen or self.relocate)


@dataclass(frozen=True, slots=True)
class DateScope:
    """Which existing granules a run is responsible for.

    A granule is in scope when its start, in its own location's local time, falls on a date in
    `[start_date, end_date]`. This matches the dates materialized even when a provider works
    in several time zones; granules at a location missing from `timezones` are in scope (so a
    removed location's OPEN granules get blocked).
    """

    start_date: date
    end_date: date
    timezones: Mapping[str, str]

    def contains(self, granule: ExistingGranule) -> bool:
        """Whether `granule` lies inside this scope."""
        tz_name = self.timezones.get(granule.location_id)
        if tz_name is None:
            return True
        local_day = granule.start_utc.astimezone(ZoneInfo(tz_name)).date()
        return self.start_date <= local_day <= self.end_date


class DayGrids:
    """Cache of local-granule -> UTC-instant tables per (zone, local date, granule size).

    The zone arithmetic is the expensive part of materialization and is the same for every
    provider at the same zone; reuse one `DayGrids` across providers in a whole-horizon run.
    Not thread-safe.
    """

    def __init__(self) -> None:
        self._grids: dict[tuple[str, date, int], tuple[datetime | None, ...]] = {}

    def starts(self, tz_name: str, day: date, granule_minutes: int) -> tuple[datetime | None, ...]:
        """UTC start of each local granule of `day` (index = minute of day // granule size).

        `None` marks a local start that does not exist (skipped by a spring-forward change).
        Ambiguous local starts resolve to their first occurrence (fold=0).
        """
        key = (tz_name, day, granule_minutes)
        grid = self._grids.get(key)
        if grid is None:
            grid = _day_grid(ZoneInfo(tz_name), day, granule_minutes)
            self._grids[key] = grid
        return grid


def _day_grid(zone: ZoneInfo, day: date, granule_minutes: int) -> tuple[datetime | None, ...]:
    midnight = datetime.combine(day, time(), tzinfo=zone)
    next_midnight = datetime.combine(day + timedelta(days=1), time(), tzinfo=zone)
    count = 24 * 60 // granule_minutes
    step = timedelta(minutes=granule_minutes)
    if midnight.utcoffset() == next_midnight.utcoffset():
        # An ordinary day: one offset throughout, so instants are evenly spaced.
        first = midnight.astimezone(UTC)
        return tuple(first + i * step for i in range(count))
    return tuple(
        _local_to_utc(zone, midnight.replace(tzinfo=None) + i * step) for i in range(count)
    )


def _local_to_utc(zone: ZoneInfo, local: datetime) -> datetime | None:
    """UTC instant of a naive local time: None if it does not exist, first occurrence if twice."""
    first = local.replace(tzinfo=zone, fold=0)
    instant = first.astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) != local:
        return None
    return instant


def _dates(start_date: date, end_date: date) -> Iterable[date]:
    day = start_date
    while day <= end_date:
        yield day
        day += timedelta(days=1)


def _check_inputs(
    provider_id: str,
    templates: Sequence[Template],
    exceptions: Sequence[ScheduleException],
    overrides: Sequence[Override],
    locations: Mapping[str, Location],
    granule_minutes: int,
) -> None:
    violations: list[Violation] = []

    def aligned(value: time | None) -> bool:
        if value is None:
            return True
        minutes = value.hour * 60 + value.minute
        return value.second == 0 and value.microsecond == 0 and minutes % granule_minutes == 0

    for i, tpl in enumerate(templates):
        prefix = f"templates[{i}]"
        if tpl.provider_id != provider_id:
            violations.append(Violation(f"{prefix}.provider_id", "belongs to another provider"))
        if tpl.location_id not in locations:
            violations.append(Violation(f"{prefix}.location_id", "unknown location"))
        for name, value in (("start_time", tpl.start_time), ("end_time", tpl.end_time)):
            if not aligned(value):
                violations.append(
                    Violation(f"{prefix}.{name}", f"must be on a {granule_minutes}-minute boundary")
                )
    for i, exc in enumerate(exceptions):
        if exc.provider_id != provider_id:
            violations.append(
                Violation(f"exceptions[{i}].provider_id", "belongs to another provider")
            )
    for i, ovr in enumerate(overrides):
        prefix = f"overrides[{i}]"
        if ovr.provider_id != provider_id:
            violations.append(Violation(f"{prefix}.provider_id", "belongs to another provider"))
        if ovr.location_id is not None and ovr.location_id not in locations:
            violations.append(Violation(f"{prefix}.location_id", "unknown location"))
        times: tuple[tuple[str, time | None], ...] = (
            ("start_time", ovr.start_time),
            ("end_time", ovr.end_time),
        )
        for name, maybe in times:
            if not aligned(maybe):
                violations.append(
                    Violation(f"{prefix}.{name}", f"must be on a {granule_minutes}-minute boundary")
                )
    if violations:
        raise ValidationError(violations)


class _Source(NamedTuple):
    """Where a candidate granule comes from, for collision messages."""

    location_id: str
    origin: str


def materialize_provider(
    provider_id: str,
    templates: Sequence[Template],
    exceptions: Sequence[ScheduleException],
    overrides: Sequence[Override],
    locations: Mapping[str, Location],
    start_date: date,
    end_date: date,
    granule_minutes: int = DEFAULT_GRANULE_MINUTES,
    grids: DayGrids | None = None,
) -> list[Granule]:
    """The granules one provider should have on local dates `start_date..end_date` inclusive.

    Dates are local to each granule's location. Templates and ADD_SLOTS overrides add time;
    exceptions and LEAVE_EARLY overrides remove it (removals win). Returns granules sorted by
    start. Raises `ValidationError` if inputs belong to another provider, name an unknown
    location, are off the granule grid, or would put the provider at two locations at once.
    """
    validate_granule_minutes(granule_minutes)
    _check_inputs(provider_id, templates, exceptions, overrides, locations, granule_minutes)
    grids = grids if grids is not None else DayGrids()
    granule = timedelta(minutes=granule_minutes)
    chosen: dict[datetime, _Source] = {}

    adds_by_day: dict[date, list[Override]] = {}
    leave_by_day: dict[date, int] = {}
    for ovr in overrides:
        if ovr.kind is OverrideKind.ADD_SLOTS:
            adds_by_day.setdefault(ovr.day, []).append(ovr)
        else:
            at = minute_of_day(ovr.start_time)
            leave_by_day[ovr.day] = min(at, leave_by_day.get(ovr.day, at))

    for day in _dates(start_date, end_date):
        spans: list[tuple[str, int, int, str]] = [
            (
                tpl.location_id,
                minute_of_day(tpl.start_time),
                end_minute_of_day(tpl.end_time),
                f"template {tpl.id}",
            )
            for tpl in templates
            if tpl.active_on(day)
        ]
        for ovr in adds_by_day.get(day, ()):
            # ADD_SLOTS overrides always carry both (Override validates it).
            assert ovr.location_id is not None
            assert ovr.end_time is not None
            spans.append(
                (
                    ovr.location_id,
                    minute_of_day(ovr.start_time),
                    end_minute_of_day(ovr.end_time),
                    f"override {ovr.id}",
                )
            )
        leave_at = leave_by_day.get(day, 24 * 60)
        day_start = datetime.combine(day, time())
        day_exceptions = [
            exc
            for exc in exceptions
            if exc.start_local < day_start + _DAY and day_start < exc.end_local
        ]
        for location_id, first_minute, end_minute, origin in spans:
            location = locations[location_id]
            starts = grids.starts(location.timezone, day, granule_minutes)
            source = _Source(location_id, origin)
            last_slot = min(end_minute, leave_at) // granule_minutes
            for slot in range(first_minute // granule_minutes, last_slot):
                start_utc = starts[slot]
                if start_utc is None:
                    continue
                if day_exceptions:
                    local_start = day_start + timedelta(minutes=slot * granule_minutes)
                    if _excepted(day_exceptions, location_id, local_start, local_start + granule):
                        continue
                current = chosen.setdefault(start_utc, source)
                if current.location_id != location_id:
                    raise ValidationError.of(
                        "templates",
                        f"{current.origin} and {origin} put the provider at two locations at "
                        f"{start_utc.isoformat()}",
                    )

    return [
        Granule(provider_id, source.location_id, start, start + granule)
        for start, source in sorted(chosen.items())
    ]


def _excepted(
    exceptions: Sequence[ScheduleException],
    location_id: str,
    local_start: datetime,
    local_end: datetime,
) -> bool:
    """Whether any exception overlaps the local granule [local_start, local_end) there."""
    for exc in exceptions:
        if exc.location_id is not None and exc.location_id != location_id:
            continue
        if exc.start_local < local_end and local_start < exc.end_local:
            return True
    return False


def offered_visit_types(
    templates: Iterable[Template], overrides: Iterable[Override] = ()
) -> dict[tuple[str, str], frozenset[str]]:
    """Visit types each (provider_id, location_id) offers: the union over its templates and
    ADD_SLOTS overrides. The search index filters visit types at this granularity."""
    offered: dict[tuple[str, str], set[str]] = {}
    for tpl in templates:
        offered.setdefault((tpl.provider_id, tpl.location_id), set()).update(tpl.visit_type_ids)
    for ovr in overrides:
        if ovr.kind is OverrideKind.ADD_SLOTS and ovr.location_id is not None:
            offered.setdefault((ovr.provider_id, ovr.location_id), set()).update(ovr.visit_type_ids)
    return {key: frozenset(ids) for key, ids in offered.items()}


def diff_granules(
    desired: Iterable[Granule],
    existing: Iterable[ExistingGranule],
    scope: DateScope | None = None,
) -> GranuleDiff:
    """Changes that make `existing` match `desired` (see the module docstring for the rule).

    Existing granules that are not desired and lie outside `scope` are ignored (pass the run's
    dates, so granules on other dates are left alone); with `scope=None` every existing
    granule is considered.
    Applying the result with `apply_diff` and diffing again yields no changes.
    """
    wanted: dict[tuple[str, datetime], Granule] = {(g.provider_id, g.start_utc): g for g in desired}
    seen: set[tuple[str, datetime]] = set()
    block: list[ExistingGranule] = []
    reopen: list[ExistingGranule] = []
    relocate: list[Relocation] = []
    conflicts: list[Conflict] = []

    for current in existing:
        key = (current.provider_id, current.start_utc)
        target = wanted.get(key)
        if target is None and scope is not None and not scope.contains(current):
            continue
        seen.add(key)
        target_location = None if target is None else target.location_id
        if target_location == current.location_id:
            if current.status is GranuleStatus.BLOCKED:
                reopen.append(current)
            continue
        if current.status in (GranuleStatus.HELD, GranuleStatus.BOOKED):
            conflicts.append(Conflict(current, target_location))
        elif target_location is not None:
            relocate.append(Relocation(current, target_location))
        elif current.status is GranuleStatus.OPEN:
            block.append(current)

    insert = [g for key, g in wanted.items() if key not in seen]
    return GranuleDiff(
        insert=tuple(sorted(insert, key=_granule_order)),
        block=tuple(block),
        reopen=tuple(reopen),
        relocate=tuple(relocate),
        conflicts=tuple(conflicts),
    )


def _granule_order(granule: Granule) -> tuple[datetime, str]:
    return granule.start_utc, granule.provider_id


def apply_diff(existing: Iterable[ExistingGranule], diff: GranuleDiff) -> list[ExistingGranule]:
    """The stored granules after applying `diff`: the same rules the database layer follows.

    Returned sorted by (start_utc, provider_id). Conflicting granules are left as they were.
    """
    rows: dict[tuple[str, datetime], ExistingGranule] = {
        (g.provider_id, g.start_utc): g for g in existing
    }
    for g in diff.block:
        rows[(g.provider_id, g.start_utc)] = g._replace(status=GranuleStatus.BLOCKED)
    for g in diff.reopen:
        rows[(g.provider_id, g.start_utc)] = g._replace(status=GranuleStatus.OPEN)
    for moved in diff.relocate:
        g = moved.existing
        rows[(g.provider_id, g.start_utc)] = g._replace(
            location_id=moved.location_id, status=GranuleStatus.OPEN
        )
    for new in diff.insert:
        rows[(new.provider_id, new.start_utc)] = ExistingGranule(
            new.provider_id, new.location_id, new.start_utc, GranuleStatus.OPEN
        )
    return sorted(rows.values(), key=lambda g: (g.start_utc, g.provider_id))
