"""gRPC servicer of `ScheduleAdminService`: protobuf <-> admin records, then the use cases.

Each method parses its request into `admin_model` records (dates `YYYY-MM-DD`, times `HH:MM`,
enums), reporting every malformed field with its request path at once, calls
`admin_service.ScheduleAdmin` with the caller from `current_principal()`, and renders the
result. Domain errors travel as raised; the server bootstrap maps them to status codes with
`google.rpc` details once.

Update masks name proto fields (`display_name`, `booking_window`) or parts of them
(`coordinates.latitude`); `_MaskSpec` maps them to record attributes and refuses unknown,
output-only and immutable paths. Only the masked fields of the body are parsed, so the rest of
the body may be empty. A message field named whole is replaced whole (`address`).

On create, `active` is ignored and the new record is active (proto3 cannot tell "false" from
"unset", and a client that forgot the field would otherwise create something invisible);
deactivate with an update naming `active`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import grpc
from google.protobuf import empty_pb2, field_mask_pb2

from availability_svc import admin_model as m
from availability_svc.admin_service import ScheduleAdmin
from availability_svc.domain import PatientKind
from common.errors import InvalidArgument, ViolationCollector
from common.grpc_server import Registration, current_principal
from common.runtime import Runtime
from medsched.availability.v1 import (
    schedule_admin_service_pb2 as api,
)
from medsched.availability.v1 import (
    schedule_admin_service_pb2_grpc as api_grpc,
)
from medsched.availability.v1 import (
    schedule_resources_pb2 as res,
)
from medsched.common.v1 import types_pb2

__all__ = ["ScheduleAdminServicer", "admin_registration"]

SERVICE_NAME = api.DESCRIPTOR.services_by_name["ScheduleAdminService"].full_name

Context = grpc.aio.ServicerContext[Any, Any]
Values = dict[str, Any]


def admin_registration(runtime: Runtime) -> Registration:
    """The `ScheduleAdminService` registration for `common.runtime.run_service`.

    The use cases reach the pool at call time (`Runtime.pool` raises UNAVAILABLE until the
    database is connected).
    """
    return Registration.of(
        api_grpc.add_ScheduleAdminServiceServicer_to_server,
        ScheduleAdminServicer(lambda: ScheduleAdmin(runtime.pool)),
        SERVICE_NAME,
    )


# ---------------------------------------------------------------- parsing helpers


def _date(check: ViolationCollector, text: str, path: str, *, required: bool) -> date | None:
    if not text:
        if required:
            check.add(path, "is required (YYYY-MM-DD)")
        return None
    try:
        return date.fromisoformat(text) if len(text) == 10 else _bad_date()
    except ValueError:
        check.add(path, "must be a date YYYY-MM-DD")
        return None


def _bad_date() -> date:
    raise ValueError("not YYYY-MM-DD")


def _minute(check: ViolationCollector, text: str, path: str, *, end: bool) -> int:
    try:
        return m.parse_minute(text, allow_end_of_day=end)
    except ValueError as e:
        check.add(path, str(e))
        return 0


def _timestamp_into(target: Any, value: datetime | None) -> None:
    if value is not None:
        target.FromDatetime(value)


_CATEGORIES = {
    types_pb2.ROOM: m.ResourceCategory.ROOM,
    types_pb2.EQUIPMENT: m.ResourceCategory.EQUIPMENT,
}
_CATEGORY_NUMBERS = {v: k for k, v in _CATEGORIES.items()}
_PATIENT_KINDS = {
    types_pb2.PATIENT_KIND_UNSPECIFIED: PatientKind.ANY,
    types_pb2.NEW_PATIENT: PatientKind.NEW,
    types_pb2.RETURNING_PATIENT: PatientKind.RETURNING,
}
_PATIENT_KIND_NUMBERS = {v: k for k, v in _PATIENT_KINDS.items()}
_EXCEPTION_KINDS = {
    res.ScheduleException.PTO: m.ExceptionKind.PTO,
    res.ScheduleException.CONFERENCE: m.ExceptionKind.CONFERENCE,
    res.ScheduleException.ADMIN_BLOCK: m.ExceptionKind.ADMIN_BLOCK,
    res.ScheduleException.OTHER: m.ExceptionKind.OTHER,
}
_EXCEPTION_KIND_NUMBERS = {v: k for k, v in _EXCEPTION_KINDS.items()}
_OVERRIDE_KINDS = {
    res.ScheduleOverride.LEAVE_EARLY: m.OverrideKind.LEAVE_EARLY,
    res.ScheduleOverride.ARRIVE_LATE: m.OverrideKind.ARRIVE_LATE,
    res.ScheduleOverride.ADD_HOURS: m.OverrideKind.ADD_HOURS,
}
_OVERRIDE_KIND_NUMBERS = {v: k for k, v in _OVERRIDE_KINDS.items()}
_CONFLICT_CAUSES = {
    m.ConflictCause.EXCEPTION: res.ScheduleConflict.EXCEPTION,
    m.ConflictCause.OVERRIDE: res.ScheduleConflict.OVERRIDE,
    m.ConflictCause.TEMPLATE_CHANGE: res.ScheduleConflict.TEMPLATE_CHANGE,
}
_CONFLICT_STATES = {
    m.ConflictState.OPEN: res.ScheduleConflict.OPEN,
    m.ConflictState.RESOLVED: res.ScheduleConflict.RESOLVED,
}


# ---------------------------------------------------------------- field codecs per resource

Codec = Callable[[Any, str, ViolationCollector], Values]


@dataclass(frozen=True)
class _MaskSpec:
    """How a resource's proto fields map to record attributes, for parsing and masks."""

    codecs: Mapping[str, Codec]
    """Top-level proto field -> parser giving record attribute values."""
    partial: Mapping[str, Codec] = field(default_factory=dict)
    """Mask paths naming part of a message field (`coordinates.latitude`) -> parser of just
    that part, so the other parts keep their stored values."""
    immutable: frozenset[str] = frozenset()
    output_only: frozenset[str] = frozenset()

    def parse(self, message: Any, prefix: str, fields: Iterable[str] | None = None) -> Values:
        check = ViolationCollector()
        values: Values = {}
        for name in self.codecs if fields is None else fields:
            codec = self.codecs.get(name) or self.partial[name]
            values.update(codec(message, prefix, check))
        check.raise_if_any()
        return values

    def masked(self, mask: field_mask_pb2.FieldMask, prefix: str) -> list[str]:
        """The fields and parts an update mask names; every bad path reported at once."""
        check = ViolationCollector()
        check.check(bool(mask.paths), "update_mask", "must name the fields to change")
        fields: list[str] = []
        for i, path in enumerate(mask.paths):
            where = f"update_mask.paths[{i}]"
            if path in self.output_only:
                check.add(where, f"{prefix}{path} is output only")
            elif path in self.immutable:
                check.add(where, f"{prefix}{path} cannot be changed")
            elif path not in self.codecs and path not in self.partial:
                check.add(where, f"{prefix}{path} is not a field that can be updated")
            elif path not in fields:
                fields.append(path)
        check.raise_if_any()
        return fields


def _text(name: str, attribute: str | None = None) -> Codec:
    return lambda msg, _prefix, _check: {attribute or name: getattr(msg, name).strip()}


def _plain(name: str, attribute: str | None = None) -> Codec:
    return lambda msg, _prefix, _check: {attribute or name: getattr(msg, name)}


def _strings(name: str, attribute: str | None = None) -> Codec:
    return lambda msg, _prefix, _check: {attribute or name: tuple(getattr(msg, name))}


_OUTPUT = frozenset({"create_time", "update_time", "organization_id"})

_ORGANIZATION = _MaskSpec(
    codecs={
        "display_name": _text("display_name"),
        "horizon_days": _plain("horizon_days"),
        "time_zone": _text("time_zone"),
        "active": _plain("active"),
        "granule_minutes": _plain("granule_minutes"),
    },
    immutable=frozenset({"granule_minutes"}),
    output_only=_OUTPUT,
)


def _address(msg: res.Location, _prefix: str, _check: ViolationCollector) -> Values:
    a = msg.address
    return {
        "address": m.Address(
            tuple(line.strip() for line in a.address_lines),
            a.locality.strip(),
            a.administrative_area.strip(),
            a.postal_code.strip(),
            a.region_code.strip(),
        )
    }


def _coordinates(msg: res.Location, prefix: str, check: ViolationCollector) -> Values:
    check.check(msg.HasField("coordinates"), f"{prefix}coordinates", "is required")
    return {"latitude": msg.coordinates.latitude, "longitude": msg.coordinates.longitude}


_LOCATION = _MaskSpec(
    codecs={
        "display_name": _text("display_name"),
        "address": _address,
        "coordinates": _coordinates,
        "time_zone": _text("time_zone"),
        "active": _plain("active"),
    },
    partial={
        "coordinates.latitude": lambda msg, _p, _c: {"latitude": msg.coordinates.latitude},
        "coordinates.longitude": lambda msg, _p, _c: {"longitude": msg.coordinates.longitude},
    },
    output_only=_OUTPUT | {"location_id"},
)

_PROVIDER = _MaskSpec(
    codecs={
        "display_name": _text("display_name"),
        "npi": _text("npi"),
        "specialties": _strings("specialties"),
        "languages": _strings("languages"),
        "accepted_plan_ids": _strings("accepted_plan_ids"),
        "location_ids": _strings("location_ids"),
        "accepting_new_patients": _plain("accepting_new_patients"),
        "active": _plain("active"),
    },
    output_only=_OUTPUT | {"provider_id"},
)

_PLAN = _MaskSpec(
    codecs={
        "plan_id": _text("plan_id"),
        "display_name": _text("display_name"),
        "payer_id": _text("payer_id"),
        "active": _plain("active"),
    },
    immutable=frozenset({"plan_id"}),
    output_only=_OUTPUT,
)


def _category(msg: Any, prefix: str, check: ViolationCollector) -> Values:
    category = _CATEGORIES.get(msg.category)
    check.check(category is not None, f"{prefix}category", "must be ROOM or EQUIPMENT")
    return {"category": category or m.ResourceCategory.ROOM}


_RESOURCE = _MaskSpec(
    codecs={
        "location_id": _text("location_id"),
        "display_name": _text("display_name"),
        "category": _category,
        "kind": _text("kind"),
        "active": _plain("active"),
    },
    immutable=frozenset({"location_id"}),
    output_only=_OUTPUT | {"resource_id"},
)


def _resource_needs(msg: res.VisitType, prefix: str, check: ViolationCollector) -> Values:
    needs = []
    for i, need in enumerate(msg.resource_needs):
        category = _CATEGORIES.get(need.category)
        check.check(
            category is not None,
            f"{prefix}resource_needs[{i}].category",
            "must be ROOM or EQUIPMENT",
        )
        needs.append(
            m.ResourceNeedSpec(
                category or m.ResourceCategory.ROOM, need.kind.strip(), need.count or 1
            )
        )
    return {"resource_needs": tuple(needs)}


def _patient_kind(msg: res.VisitType, prefix: str, check: ViolationCollector) -> Values:
    kind = _PATIENT_KINDS.get(msg.patient_kind)
    check.check(kind is not None, f"{prefix}patient_kind", "is not a known patient kind")
    return {"patient_kind": kind or PatientKind.ANY}


def _booking_window(msg: res.VisitType, prefix: str, check: ViolationCollector) -> Values:
    window = msg.booking_window
    notice = window.minimum_notice.seconds
    check.check(
        window.minimum_notice.nanos == 0 and notice >= 0,
        f"{prefix}booking_window.minimum_notice",
        "must be a whole, non-negative number of seconds",
    )
    return {"minimum_notice_seconds": notice, "maximum_days_ahead": window.maximum_days_ahead}


_VISIT_TYPE = _MaskSpec(
    codecs={
        "display_name": _text("display_name"),
        "specialty": _text("specialty"),
        "duration_granules": _plain("duration_granules"),
        "resource_needs": _resource_needs,
        "patient_kind": _patient_kind,
        "location_ids": _strings("location_ids"),
        "booking_window": _booking_window,
        "service_type_code": _text("service_type_code"),
        "active": _plain("active"),
    },
    partial={
        "booking_window.minimum_notice": lambda msg, prefix, check: {
            "minimum_notice_seconds": _booking_window(msg, prefix, check)["minimum_notice_seconds"]
        },
        "booking_window.maximum_days_ahead": lambda msg, _p, _c: {
            "maximum_days_ahead": msg.booking_window.maximum_days_ahead
        },
    },
    output_only=_OUTPUT | {"visit_type_id"},
)


def _effective_start(msg: res.ScheduleTemplate, prefix: str, check: ViolationCollector) -> Values:
    start = _date(check, msg.effective_start_date, f"{prefix}effective_start_date", required=True)
    return {"effective_start_date": start or date.min}


def _effective_end(msg: res.ScheduleTemplate, prefix: str, check: ViolationCollector) -> Values:
    end = _date(check, msg.effective_end_date, f"{prefix}effective_end_date", required=False)
    return {"effective_end_date": end}


def _windows(msg: res.ScheduleTemplate, prefix: str, check: ViolationCollector) -> Values:
    windows = []
    for i, window in enumerate(msg.windows):
        path = f"{prefix}windows[{i}]"
        check.check(
            window.day_of_week != types_pb2.DAY_OF_WEEK_UNSPECIFIED,
            f"{path}.day_of_week",
            "is required",
        )
        windows.append(
            m.TemplateWindow(
                day_of_week=int(window.day_of_week),
                start_minute=_minute(check, window.start_time, f"{path}.start_time", end=False),
                end_minute=_minute(check, window.end_time, f"{path}.end_time", end=True),
                visit_type_ids=tuple(window.visit_type_ids),
            )
        )
    return {"windows": tuple(windows)}


_TEMPLATE = _MaskSpec(
    codecs={
        "provider_id": _text("provider_id"),
        "location_id": _text("location_id"),
        "effective_start_date": _effective_start,
        "effective_end_date": _effective_end,
        "week_interval": lambda msg, _p, _c: {"week_interval": msg.week_interval or 1},
        "windows": _windows,
        "visit_type_ids": _strings("visit_type_ids"),
    },
    immutable=frozenset({"provider_id", "location_id"}),
    output_only=_OUTPUT | {"template_id"},
)


def _exception_values(msg: res.ScheduleException, check: ViolationCollector) -> Values:
    prefix = "exception."
    kind = _EXCEPTION_KINDS.get(msg.kind)
    check.check(kind is not None, f"{prefix}kind", "must be PTO, CONFERENCE, ADMIN_BLOCK or OTHER")
    start = _date(check, msg.start_date, f"{prefix}start_date", required=True)
    end = _date(check, msg.end_date, f"{prefix}end_date", required=False) or start
    start_minute = end_minute = None
    if msg.HasField("time_window"):
        window = msg.time_window
        start_minute = _minute(
            check, window.start_time, f"{prefix}time_window.start_time", end=False
        )
        end_minute = _minute(check, window.end_time, f"{prefix}time_window.end_time", end=True)
    return {
        "provider_id": msg.provider_id.strip(),
        "location_id": msg.location_id.strip() or None,
        "kind": kind or m.ExceptionKind.OTHER,
        "start_date": start or date.min,
        "end_date": end or date.min,
        "start_minute": start_minute,
        "end_minute": end_minute,
        "description": msg.description,
    }


def _override_values(msg: res.ScheduleOverride, check: ViolationCollector) -> Values:
    prefix = "override."
    kind = _OVERRIDE_KINDS.get(msg.kind)
    check.check(kind is not None, f"{prefix}kind", "must be LEAVE_EARLY, ARRIVE_LATE or ADD_HOURS")
    day = _date(check, msg.date, f"{prefix}date", required=True)
    check.check(msg.HasField("time_window"), f"{prefix}time_window", "is required")
    window = msg.time_window
    start, end = 0, m.MINUTES_PER_DAY
    if kind in (m.OverrideKind.LEAVE_EARLY, m.OverrideKind.ADD_HOURS):
        start = _minute(check, window.start_time, f"{prefix}time_window.start_time", end=False)
    if kind in (m.OverrideKind.ARRIVE_LATE, m.OverrideKind.ADD_HOURS):
        end = _minute(check, window.end_time, f"{prefix}time_window.end_time", end=True)
    return {
        "provider_id": msg.provider_id.strip(),
        "location_id": msg.location_id.strip(),
        "day": day or date.min,
        "kind": kind or m.OverrideKind.ADD_HOURS,
        "start_minute": start,
        "end_minute": end,
        "visit_type_ids": tuple(msg.visit_type_ids),
        "description": msg.description,
    }


# ---------------------------------------------------------------- rendering


def _organization_pb(org: m.OrganizationRecord) -> res.Organization:
    out = res.Organization(
        organization_id=org.id,
        display_name=org.display_name,
        granule_minutes=org.granule_minutes,
        horizon_days=org.horizon_days,
        time_zone=org.time_zone,
        active=org.active,
    )
    _timestamp_into(out.create_time, org.create_time)
    _timestamp_into(out.update_time, org.update_time)
    return out


def _location_pb(loc: m.LocationRecord) -> res.Location:
    out = res.Location(
        location_id=loc.id,
        organization_id=loc.organization_id,
        display_name=loc.display_name,
        address=res.FacilityAddress(
            address_lines=loc.address.address_lines,
            locality=loc.address.locality,
            administrative_area=loc.address.administrative_area,
            postal_code=loc.address.postal_code,
            region_code=loc.address.region_code,
        ),
        coordinates=types_pb2.GeoPoint(latitude=loc.latitude, longitude=loc.longitude),
        time_zone=loc.time_zone,
        active=loc.active,
    )
    _timestamp_into(out.create_time, loc.create_time)
    _timestamp_into(out.update_time, loc.update_time)
    return out


def _provider_pb(p: m.ProviderRecord) -> res.Provider:
    out = res.Provider(
        provider_id=p.id,
        organization_id=p.organization_id,
        display_name=p.display_name,
        npi=p.npi,
        specialties=p.specialties,
        languages=p.languages,
        accepted_plan_ids=p.accepted_plan_ids,
        location_ids=p.location_ids,
        accepting_new_patients=p.accepting_new_patients,
        active=p.active,
    )
    _timestamp_into(out.create_time, p.create_time)
    _timestamp_into(out.update_time, p.update_time)
    return out


def _plan_pb(plan: m.InsurancePlanRecord) -> res.InsurancePlan:
    out = res.InsurancePlan(
        plan_id=plan.plan_id,
        organization_id=plan.organization_id,
        display_name=plan.display_name,
        payer_id=plan.payer_id,
        active=plan.active,
    )
    _timestamp_into(out.create_time, plan.create_time)
    _timestamp_into(out.update_time, plan.update_time)
    return out


def _resource_pb(r: m.ResourceRecord) -> res.Resource:
    out = res.Resource(
        resource_id=r.id,
        organization_id=r.organization_id,
        location_id=r.location_id,
        display_name=r.display_name,
        category=_CATEGORY_NUMBERS[r.category],
        kind=r.kind,
        active=r.active,
    )
    _timestamp_into(out.create_time, r.create_time)
    _timestamp_into(out.update_time, r.update_time)
    return out


def _visit_type_pb(v: m.VisitTypeRecord) -> res.VisitType:
    out = res.VisitType(
        visit_type_id=v.id,
        organization_id=v.organization_id,
        display_name=v.display_name,
        specialty=v.specialty,
        duration_granules=v.duration_granules,
        resource_needs=[
            res.ResourceNeed(category=_CATEGORY_NUMBERS[n.category], kind=n.kind, count=n.count)
            for n in v.resource_needs
        ],
        patient_kind=_PATIENT_KIND_NUMBERS[v.patient_kind],
        location_ids=v.location_ids,
        service_type_code=v.service_type_code,
        active=v.active,
    )
    out.booking_window.minimum_notice.seconds = v.minimum_notice_seconds
    out.booking_window.maximum_days_ahead = v.maximum_days_ahead
    _timestamp_into(out.create_time, v.create_time)
    _timestamp_into(out.update_time, v.update_time)
    return out


def _template_pb(t: m.TemplateRecord) -> res.ScheduleTemplate:
    out = res.ScheduleTemplate(
        template_id=t.id,
        organization_id=t.organization_id,
        provider_id=t.provider_id,
        location_id=t.location_id,
        effective_start_date=t.effective_start_date.isoformat(),
        effective_end_date=t.effective_end_date.isoformat() if t.effective_end_date else "",
        week_interval=t.week_interval,
        windows=[
            res.TemplateWindow(
                day_of_week=w.day_of_week,  # type: ignore[arg-type]
                start_time=m.format_minute(w.start_minute),
                end_time=m.format_minute(w.end_minute),
                visit_type_ids=w.visit_type_ids,
            )
            for w in t.windows
        ],
        visit_type_ids=t.visit_type_ids,
    )
    _timestamp_into(out.create_time, t.create_time)
    _timestamp_into(out.update_time, t.update_time)
    return out


def _exception_pb(e: m.ExceptionRecord, conflict_ids: Iterable[str]) -> res.ScheduleException:
    out = res.ScheduleException(
        exception_id=e.id,
        organization_id=e.organization_id,
        provider_id=e.provider_id,
        location_id=e.location_id or "",
        kind=_EXCEPTION_KIND_NUMBERS[e.kind],
        start_date=e.start_date.isoformat(),
        end_date=e.end_date.isoformat(),
        description=e.description,
        conflict_ids=list(conflict_ids),
    )
    if e.start_minute is not None and e.end_minute is not None:
        out.time_window.start_time = m.format_minute(e.start_minute)
        out.time_window.end_time = m.format_minute(e.end_minute)
    _timestamp_into(out.create_time, e.create_time)
    return out


def _override_pb(o: m.OverrideRecord, conflict_ids: Iterable[str]) -> res.ScheduleOverride:
    out = res.ScheduleOverride(
        override_id=o.id,
        organization_id=o.organization_id,
        provider_id=o.provider_id,
        location_id=o.location_id,
        date=o.day.isoformat(),
        kind=_OVERRIDE_KIND_NUMBERS[o.kind],
        time_window=types_pb2.LocalTimeWindow(
            start_time=m.format_minute(o.start_minute), end_time=m.format_minute(o.end_minute)
        ),
        visit_type_ids=o.visit_type_ids,
        description=o.description,
        conflict_ids=list(conflict_ids),
    )
    _timestamp_into(out.create_time, o.create_time)
    return out


def _conflict_pb(c: m.ConflictRecord) -> res.ScheduleConflict:
    out = res.ScheduleConflict(
        conflict_id=c.id,
        organization_id=c.organization_id,
        provider_id=c.provider_id,
        location_id=c.location_id,
        appointment_id=c.appointment_id or "",
        cause=_CONFLICT_CAUSES[c.cause],
        cause_id=c.cause_id or "",
        state=_CONFLICT_STATES[c.state],
    )
    out.start_time.FromDatetime(c.start_time)
    out.end_time.FromDatetime(c.end_time)
    out.detect_time.FromDatetime(c.detect_time)
    _timestamp_into(out.resolve_time, c.resolve_time)
    return out


def _optional_date(text: str, path: str) -> date | None:
    check = ViolationCollector()
    value = _date(check, text, path, required=False)
    check.raise_if_any()
    return value


# ---------------------------------------------------------------- the servicer


class ScheduleAdminServicer(api_grpc.ScheduleAdminServiceServicer):
    """`ScheduleAdminService` over `ScheduleAdmin` (built lazily: the pool opens after start)."""

    def __init__(self, admin: Callable[[], ScheduleAdmin]) -> None:
        self._make_admin = admin
        self._admin: ScheduleAdmin | None = None

    @property
    def admin(self) -> ScheduleAdmin:
        if self._admin is None:
            self._admin = self._make_admin()
        return self._admin

    # -- organizations

    async def CreateOrganization(  # noqa: N802 (generated servicer method name)
        self, request: api.CreateOrganizationRequest, context: Context
    ) -> res.Organization:
        values = _ORGANIZATION.parse(request.organization, "organization.")
        values["active"] = True
        org = m.OrganizationRecord(id="", **values)
        return _organization_pb(await self.admin.create_organization(current_principal(), org))

    async def GetOrganization(  # noqa: N802 (generated servicer method name)
        self, request: api.GetOrganizationRequest, context: Context
    ) -> res.Organization:
        org = await self.admin.get_organization(current_principal(), request.organization_id)
        return _organization_pb(org)

    async def ListOrganizations(  # noqa: N802 (generated servicer method name)
        self, request: api.ListOrganizationsRequest, context: Context
    ) -> api.ListOrganizationsResponse:
        page = await self.admin.list_organizations(
            current_principal(), request.page_size, request.page_token
        )
        return api.ListOrganizationsResponse(
            organizations=[_organization_pb(o) for o in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateOrganization(  # noqa: N802 (generated servicer method name)
        self, request: api.UpdateOrganizationRequest, context: Context
    ) -> res.Organization:
        fields = _ORGANIZATION.masked(request.update_mask, "organization.")
        values = _ORGANIZATION.parse(request.organization, "organization.", fields)
        org = await self.admin.update_organization(
            current_principal(), request.organization_id, values
        )
        return _organization_pb(org)

    # -- locations

    async def CreateLocation(  # noqa: N802 (generated servicer method name)
        self, request: api.CreateLocationRequest, context: Context
    ) -> res.Location:
        self.admin.check_organization_access(current_principal(), request.organization_id)
        values = _LOCATION.parse(request.location, "location.")
        values["active"] = True
        loc = m.LocationRecord(id="", organization_id="", **values)
        created = await self.admin.create_location(
            current_principal(), request.organization_id, loc
        )
        return _location_pb(created)

    async def GetLocation(  # noqa: N802 (generated servicer method name)
        self, request: api.GetLocationRequest, context: Context
    ) -> res.Location:
        loc = await self.admin.get_location(
            current_principal(), request.organization_id, request.location_id
        )
        return _location_pb(loc)

    async def ListLocations(  # noqa: N802 (generated servicer method name)
        self, request: api.ListLocationsRequest, context: Context
    ) -> api.ListLocationsResponse:
        page = await self.admin.list_locations(
            current_principal(),
            request.organization_id,
            include_inactive=request.include_inactive,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return api.ListLocationsResponse(
            locations=[_location_pb(x) for x in page.items], next_page_token=page.next_page_token
        )

    async def UpdateLocation(  # noqa: N802 (generated servicer method name)
        self, request: api.UpdateLocationRequest, context: Context
    ) -> res.Location:
        fields = _LOCATION.masked(request.update_mask, "location.")
        values = _LOCATION.parse(request.location, "location.", fields)
        loc = await self.admin.update_location(
            current_principal(), request.organization_id, request.location_id, values
        )
        return _location_pb(loc)

    # -- providers

    async def CreateProvider(  # noqa: N802 (generated servicer method name)
        self, request: api.CreateProviderRequest, context: Context
    ) -> res.Provider:
        values = _PROVIDER.parse(request.provider, "provider.")
        values["active"] = True
        provider = m.ProviderRecord(id="", organization_id="", **values)
        created = await self.admin.create_provider(
            current_principal(), request.organization_id, provider
        )
        return _provider_pb(created)

    async def GetProvider(  # noqa: N802 (generated servicer method name)
        self, request: api.GetProviderRequest, context: Context
    ) -> res.Provider:
        provider = await self.admin.get_provider(
            current_principal(), request.organization_id, request.provider_id
        )
        return _provider_pb(provider)

    async def ListProviders(  # noqa: N802 (generated servicer method name)
        self, request: api.ListProvidersRequest, context: Context
    ) -> api.ListProvidersResponse:
        page = await self.admin.list_providers(
            current_principal(),
            request.organization_id,
            specialty=request.specialty,
            location_id=request.location_id,
            include_inactive=request.include_inactive,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return api.ListProvidersResponse(
            providers=[_provider_pb(p) for p in page.items], next_page_token=page.next_page_token
        )

    async def UpdateProvider(  # noqa: N802 (generated servicer method name)
        self, request: api.UpdateProviderRequest, context: Context
    ) -> res.Provider:
        fields = _PROVIDER.masked(request.update_mask, "provider.")
        values = _PROVIDER.parse(request.provider, "provider.", fields)
        provider = await self.admin.update_provider(
            current_principal(), request.organization_id, request.provider_id, values
        )
        return _provider_pb(provider)

    # -- insurance plans

    async def CreateInsurancePlan(  # noqa: N802 (generated servicer method name)
        self, request: api.CreateInsurancePlanRequest, context: Context
    ) -> res.InsurancePlan:
        values = _PLAN.parse(request.plan, "plan.")
        values["active"] = True
        plan = m.InsurancePlanRecord(organization_id="", **values)
        created = await self.admin.create_plan(current_principal(), request.organization_id, plan)
        return _plan_pb(created)

    async def GetInsurancePlan(  # noqa: N802 (generated servicer method name)
        self, request: api.GetInsurancePlanRequest, context: Context
    ) -> res.InsurancePlan:
        plan = await self.admin.get_plan(
            current_principal(), request.organization_id, request.plan_id
        )
        return _plan_pb(plan)

    async def ListInsurancePlans(  # noqa: N802 (generated servicer method name)
        self, request: api.ListInsurancePlansRequest, context: Context
    ) -> api.ListInsurancePlansResponse:
        page = await self.admin.list_plans(
            current_principal(),
            request.organization_id,
            include_inactive=request.include_inactive,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return api.ListInsurancePlansResponse(
            plans=[_plan_pb(p) for p in page.items], next_page_token=page.next_page_token
        )

    async def UpdateInsurancePlan(  # noqa: N802 (generated servicer method name)
        self, request: api.UpdateInsurancePlanRequest, context: Context
    ) -> res.InsurancePlan:
        fields = _PLAN.masked(request.update_mask, "plan.")
        values = _PLAN.parse(request.plan, "plan.", fields)
        plan = await self.admin.update_plan(
            current_principal(), request.organization_id, request.plan_id, values
        )
        return _plan_pb(plan)

    # -- resources

    async def CreateResource(  # noqa: N802 (generated servicer method name)
        self, request: api.CreateResourceRequest, context: Context
    ) -> res.Resource:
        self.admin.check_organization_access(current_principal(), request.organization_id)
        values = _RESOURCE.parse(request.resource, "resource.")
        values["active"] = True
        resource = m.ResourceRecord(id="", organization_id="", **values)
        created = await self.admin.create_resource(
            current_principal(), request.organization_id, resource
        )
        return _resource_pb(created)

    async def GetResource(  # noqa: N802 (generated servicer method name)
        self, request: api.GetResourceRequest, context: Context
    ) -> res.Resource:
        resource = await self.admin.get_resource(
            current_principal(), request.organization_id, request.resource_id
        )
        return _resource_pb(resource)

    async def ListResources(  # noqa: N802 (generated servicer method name)
        self, request: api.ListResourcesRequest, context: Context
    ) -> api.ListResourcesResponse:
        page = await self.admin.list_resources(
            current_principal(),
            request.organization_id,
            location_id=request.location_id,
            kind=request.kind,
            include_inactive=request.include_inactive,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return api.ListResourcesResponse(
            resources=[_resource_pb(r) for r in page.items], next_page_token=page.next_page_token
        )

    async def UpdateResource(  # noqa: N802 (generated servicer method name)
        self, request: api.UpdateResourceRequest, context: Context
    ) -> res.Resource:
        fields = _RESOURCE.masked(request.update_mask, "resource.")
        values = _RESOURCE.parse(request.resource, "resource.", fields)
        resource = await self.admin.update_resource(
            current_principal(), request.organization_id, request.resource_id, values
        )
        return _resource_pb(resource)

    # -- visit types

    async def CreateVisitType(  # noqa: N802 (generated servicer method name)
        self, request: api.CreateVisitTypeRequest, context: Context
    ) -> res.VisitType:
        values = _VISIT_TYPE.parse(request.visit_type, "visit_type.")
        values["active"] = True
        visit_type = m.VisitTypeRecord(id="", organization_id="", **values)
        created = await self.admin.create_visit_type(
            current_principal(), request.organization_id, visit_type
        )
        return _visit_type_pb(created)

    async def GetVisitType(  # noqa: N802 (generated servicer method name)
        self, request: api.GetVisitTypeRequest, context: Context
    ) -> res.VisitType:
        visit_type = await self.admin.get_visit_type(
            current_principal(), request.organization_id, request.visit_type_id
        )
        return _visit_type_pb(visit_type)

    async def ListVisitTypes(  # noqa: N802 (generated servicer method name)
        self, request: api.ListVisitTypesRequest, context: Context
    ) -> api.ListVisitTypesResponse:
        page = await self.admin.list_visit_types(
            current_principal(),
            request.organization_id,
            specialty=request.specialty,
            include_inactive=request.include_inactive,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return api.ListVisitTypesResponse(
            visit_types=[_visit_type_pb(v) for v in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateVisitType(  # noqa: N802 (generated servicer method name)
        self, request: api.UpdateVisitTypeRequest, context: Context
    ) -> res.VisitType:
        fields = _VISIT_TYPE.masked(request.update_mask, "visit_type.")
        values = _VISIT_TYPE.parse(request.visit_type, "visit_type.", fields)
        visit_type = await self.admin.update_visit_type(
            current_principal(), request.organization_id, request.visit_type_id, values
        )
        return _visit_type_pb(visit_type)

    # -- templates

    async def CreateScheduleTemplate(  # noqa: N802 (generated servicer method name)
        self, request: api.CreateScheduleTemplateRequest, context: Context
    ) -> res.ScheduleTemplate:
        self.admin.check_organization_access(current_principal(), request.organization_id)
        values = _TEMPLATE.parse(request.template, "template.")
        template = m.TemplateRecord(id="", organization_id="", **values)
        created = await self.admin.create_template(
            current_principal(), request.organization_id, template
        )
        return _template_pb(created)

    async def GetScheduleTemplate(  # noqa: N802 (generated servicer method name)
        self, request: api.GetScheduleTemplateRequest, context: Context
    ) -> res.ScheduleTemplate:
        template = await self.admin.get_template(
            current_principal(), request.organization_id, request.template_id
        )
        return _template_pb(template)

    async def ListScheduleTemplates(  # noqa: N802 (generated servicer method name)
        self, request: api.ListScheduleTemplatesRequest, context: Context
    ) -> api.ListScheduleTemplatesResponse:
        page = await self.admin.list_templates(
            current_principal(),
            request.organization_id,
            provider_id=request.provider_id,
            location_id=request.location_id,
            effective_on=_optional_date(request.effective_on_date, "effective_on_date"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return api.ListScheduleTemplatesResponse(
            templates=[_template_pb(t) for t in page.items], next_page_token=page.next_page_token
        )

    async def UpdateScheduleTemplate(  # noqa: N802 (generated servicer method name)
        self, request: api.UpdateScheduleTemplateRequest, context: Context
    ) -> res.ScheduleTemplate:
        self.admin.check_organization_access(current_principal(), request.organization_id)
        fields = _TEMPLATE.masked(request.update_mask, "template.")
        values = _TEMPLATE.parse(request.template, "template.", fields)
        template = await self.admin.update_template(
            current_principal(), request.organization_id, request.template_id, values
        )
        return _template_pb(template)

    # -- exceptions

    async def CreateScheduleException(  # noqa: N802 (generated servicer method name)
        self, request: api.CreateScheduleExceptionRequest, context: Context
    ) -> res.ScheduleException:
        self.admin.check_organization_access(current_principal(), request.organization_id)
        check = ViolationCollector()
        values = _exception_values(request.exception, check)
        check.raise_if_any()
        exception = m.ExceptionRecord(id="", organization_id="", **values)
        created, conflicts = await self.admin.create_exception(
            current_principal(), request.organization_id, exception
        )
        return _exception_pb(created, conflicts)

    async def GetScheduleException(  # noqa: N802 (generated servicer method name)
        self, request: api.GetScheduleExceptionRequest, context: Context
    ) -> res.ScheduleException:
        exception, conflicts = await self.admin.get_exception(
            current_principal(), request.organization_id, request.exception_id
        )
        return _exception_pb(exception, conflicts)

    async def ListScheduleExceptions(  # noqa: N802 (generated servicer method name)
        self, request: api.ListScheduleExceptionsRequest, context: Context
    ) -> api.ListScheduleExceptionsResponse:
        principal = current_principal()
        page = await self.admin.list_exceptions(
            principal,
            request.organization_id,
            provider_id=request.provider_id,
            start_date=_optional_date(request.start_date, "start_date"),
            end_date=_optional_date(request.end_date, "end_date"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        conflicts = await self.admin.conflicts_of(
            principal, request.organization_id, [e.id for e in page.items]
        )
        return api.ListScheduleExceptionsResponse(
            exceptions=[_exception_pb(e, conflicts[e.id]) for e in page.items],
            next_page_token=page.next_page_token,
        )

    async def DeleteScheduleException(  # noqa: N802 (generated servicer method name)
        self, request: api.DeleteScheduleExceptionRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.admin.delete_exception(
            current_principal(), request.organization_id, request.exception_id
        )
        return empty_pb2.Empty()

    # -- overrides

    async def CreateScheduleOverride(  # noqa: N802 (generated servicer method name)
        self, request: api.CreateScheduleOverrideRequest, context: Context
    ) -> res.ScheduleOverride:
        self.admin.check_organization_access(current_principal(), request.organization_id)
        check = ViolationCollector()
        values = _override_values(request.override, check)
        check.raise_if_any()
        override = m.OverrideRecord(id="", organization_id="", **values)
        created, conflicts = await self.admin.create_override(
            current_principal(), request.organization_id, override
        )
        return _override_pb(created, conflicts)

    async def GetScheduleOverride(  # noqa: N802 (generated servicer method name)
        self, request: api.GetScheduleOverrideRequest, context: Context
    ) -> res.ScheduleOverride:
        override, conflicts = await self.admin.get_override(
            current_principal(), request.organization_id, request.override_id
        )
        return _override_pb(override, conflicts)

    async def ListScheduleOverrides(  # noqa: N802 (generated servicer method name)
        self, request: api.ListScheduleOverridesRequest, context: Context
    ) -> api.ListScheduleOverridesResponse:
        principal = current_principal()
        page = await self.admin.list_overrides(
            principal,
            request.organization_id,
            provider_id=request.provider_id,
            start_date=_optional_date(request.start_date, "start_date"),
            end_date=_optional_date(request.end_date, "end_date"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        conflicts = await self.admin.conflicts_of(
            principal, request.organization_id, [o.id for o in page.items]
        )
        return api.ListScheduleOverridesResponse(
            overrides=[_override_pb(o, conflicts[o.id]) for o in page.items],
            next_page_token=page.next_page_token,
        )

    async def DeleteScheduleOverride(  # noqa: N802 (generated servicer method name)
        self, request: api.DeleteScheduleOverrideRequest, context: Context
    ) -> empty_pb2.Empty:
        await self.admin.delete_override(
            current_principal(), request.organization_id, request.override_id
        )
        return empty_pb2.Empty()

    # -- conflicts and materialization

    async def GetScheduleConflict(  # noqa: N802 (generated servicer method name)
        self, request: api.GetScheduleConflictRequest, context: Context
    ) -> res.ScheduleConflict:
        conflict = await self.admin.get_conflict(
            current_principal(), request.organization_id, request.conflict_id
        )
        return _conflict_pb(conflict)

    async def ListScheduleConflicts(  # noqa: N802 (generated servicer method name)
        self, request: api.ListScheduleConflictsRequest, context: Context
    ) -> api.ListScheduleConflictsResponse:
        states = {v: k for k, v in _CONFLICT_STATES.items()}
        state = states.get(request.state, m.ConflictState.OPEN)
        if request.state not in states and request.state != res.ScheduleConflict.STATE_UNSPECIFIED:
            raise InvalidArgument.single("state", "must be OPEN or RESOLVED")
        page = await self.admin.list_conflicts(
            current_principal(),
            request.organization_id,
            provider_id=request.provider_id,
            state=state,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return api.ListScheduleConflictsResponse(
            conflicts=[_conflict_pb(c) for c in page.items], next_page_token=page.next_page_token
        )

    async def MaterializeSchedule(  # noqa: N802 (generated servicer method name)
        self, request: api.MaterializeScheduleRequest, context: Context
    ) -> api.MaterializeScheduleResponse:
        check = ViolationCollector()
        start = _date(check, request.start_date, "start_date", required=False)
        end = _date(check, request.end_date, "end_date", required=False)
        check.raise_if_any()
        stats = await self.admin.materialize(
            current_principal(),
            request.organization_id,
            provider_ids=list(request.provider_ids),
            start_date=start,
            end_date=end,
        )
        return api.MaterializeScheduleResponse(
            provider_count=stats.provider_count,
            opened_granule_count=stats.opened,
            blocked_granule_count=stats.blocked,
            unchanged_granule_count=stats.unchanged,
            conflict_ids=stats.conflict_ids,
        )
