"""Checks over the protobuf contracts: REST surface, PHI marking, events, docs, generated code."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import google.api.annotations_pb2 as annotations_pb2  # type: ignore[import-untyped, unused-ignore]
import google.api.http_pb2 as http_pb2  # type: ignore[import-untyped, unused-ignore]
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    FileDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)

from deploy import protogen
from medsched.common.v1 import options_pb2
from medsched.events.v1 import envelope_pb2

ROOT = protogen.repository_root()
DESCRIPTOR_SET = ROOT / "medsched" / protogen.DESCRIPTOR_SET_NAME

# The service packages of ARCHITECTURE.md ("Services" table) and the gRPC services each serves.
SERVICES_BY_PACKAGE = {
    "availability_svc": (
        "medsched.availability.v1.AvailabilityService",
        "medsched.availability.v1.ScheduleAdminService",
    ),
    "booking_svc": ("medsched.booking.v1.BookingService",),
    "eligibility_svc": ("medsched.eligibility.v1.EligibilityService",),
    "waitlist_svc": ("medsched.waitlist.v1.WaitlistService",),
    "notify_svc": ("medsched.notify.v1.NotifyService",),
}

# Field names that, on a string, bytes or message field, suggest a patient's identity or
# story. Enum fields are exempt: a value from a fixed list (a cancellation reason code, a
# refusal reason) identifies no one and may travel in events.
PHI_NAME = re.compile(
    r"(^|_)(name|names|birth|phone|email|member|reason|address|addresses|note|notes"
    r"|demographics|x12)(_|$)"
)

# Fields whose names look like PHI but are not about a patient, each with the reason.
NOT_PHI = {
    "medsched.availability.v1.Organization.display_name": "a health system's public name",
    "medsched.availability.v1.Location.display_name": "a facility's public name",
    "medsched.availability.v1.Location.address": "a facility's street address",
    "medsched.availability.v1.FacilityAddress.address_lines": "a facility's street address",
    "medsched.availability.v1.Provider.display_name": "a clinician's directory name",
    "medsched.availability.v1.InsurancePlan.display_name": "a plan's marketing name",
    "medsched.availability.v1.Resource.display_name": "a room or machine label",
    "medsched.availability.v1.VisitType.display_name": "a visit type's name",
    "medsched.availability.v1.ProviderSummary.display_name": "a clinician's directory name",
    "medsched.availability.v1.LocationSummary.display_name": "a facility's public name",
    "medsched.availability.v1.VisitTypeSummary.display_name": "a visit type's name",
}

# The design brief's public REST paths and the RPCs that serve them.
BRIEF_PATHS = {
    ("GET", "/v1/availability"): "medsched.availability.v1.AvailabilityService.SearchAvailability",
    ("POST", "/v1/appointments"): "medsched.booking.v1.BookingService.BookAppointment",
    (
        "POST",
        "/v1/appointments/{appointment_id}/cancel",
    ): "medsched.booking.v1.BookingService.CancelAppointment",
    ("POST", "/v1/waitlist"): "medsched.waitlist.v1.WaitlistService.JoinWaitlist",
}

EVENT_SUBJECT = re.compile(r"medsched\.([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)")
PATH_VARIABLE = re.compile(r"\{([a-z0-9_.]+)(?:=[^}]*)?\}")
HTTP_VERBS = ("get", "put", "post", "delete", "patch")

# Indexes of descriptor.proto fields, used to find comments in SourceCodeInfo paths.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM = 2, 3, 4
ENUM_VALUE, SERVICE_METHOD = 2, 2


@cache
def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())


@cache
def our_files() -> tuple[FileDescriptor, ...]:
    """The runtime descriptors of every medsched .proto, through the generated modules."""
    names = [f.name for f in descriptor_set().file if f.name.startswith("medsched/")]
    modules = [
        importlib.import_module(name.removesuffix(".proto").replace("/", ".") + "_pb2")
        for name in names
    ]
    return tuple(module.DESCRIPTOR for module in modules)


def all_messages() -> Iterator[Descriptor]:
    def walk(message: Descriptor) -> Iterator[Descriptor]:
        yield message
        for nested in message.nested_types:
            yield from walk(nested)

    for file in our_files():
        for message in file.message_types_by_name.values():
            yield from walk(message)


def all_services() -> Iterator[ServiceDescriptor]:
    for file in our_files():
        yield from file.services_by_name.values()


def all_methods() -> Iterator[MethodDescriptor]:
    for service in all_services():
        yield from service.methods


def http_rule(method: MethodDescriptor) -> tuple[str, str, str]:
    """(HTTP verb, path template, body) of a method's `google.api.http` option."""
    # The googleapis stubs type `http` as a plain field descriptor, not as an extension.
    rule: http_pb2.HttpRule = method.GetOptions().Extensions[annotations_pb2.http]  # type: ignore[index]
    verb = str(rule.WhichOneof("pattern") or "")
    path = str(getattr(rule, verb)) if verb in HTTP_VERBS else ""
    return verb.upper(), path, str(rule.body)


def is_phi(field: FieldDescriptor) -> bool:
    return bool(field.GetOptions().Extensions[options_pb2.phi])


def is_enum(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_ENUM


def is_message(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE


def message_type(field: FieldDescriptor) -> Descriptor:
    assert field.message_type is not None, field.full_name
    return field.message_type


def reachable_messages(root: Descriptor) -> dict[str, Descriptor]:
    """Every message type reachable from root through its fields (root included)."""
    seen: dict[str, Descriptor] = {}
    pending = [root]
    while pending:
        message = pending.pop()
        if message.full_name in seen:
            continue
        seen[message.full_name] = message
        pending.extend(message_type(f) for f in message.fields if is_message(f))
    return seen


def event_payloads() -> list[Descriptor]:
    payload = envelope_pb2.EventEnvelope.DESCRIPTOR.oneofs_by_name["payload"]
    return [message_type(field) for field in payload.fields]


def phi_fields_reachable_from(root: Descriptor) -> list[str]:
    return sorted(
        field.full_name
        for message in reachable_messages(root).values()
        for field in message.fields
        if is_phi(field)
    )


def test_every_rpc_has_an_http_rule() -> None:
    methods = list(all_methods())
    assert len(methods) > 50
    missing = [m.full_name for m in methods if not http_rule(m)[1]]
    assert missing == []


def test_design_brief_public_paths_exist_exactly() -> None:
    served = {http_rule(m)[:2]: m.full_name for m in all_methods()}
    for route, rpc in BRIEF_PATHS.items():
        assert served.get(route) == rpc, route


def test_rest_routes_are_unique() -> None:
    routes = [http_rule(m)[:2] for m in all_methods()]
    duplicates = sorted({route for route in routes if routes.count(route) > 1})
    assert duplicates == []


def test_path_variables_and_bodies_name_request_fields() -> None:
    problems = []
    for method in all_methods():
        verb, path, body = http_rule(method)
        fields = method.input_type.fields_by_name
        for variable in PATH_VARIABLE.findall(path):
            field = fields.get(variable)
            if field is None or field.type != FieldDescriptor.TYPE_STRING:
                problems.append(f"{method.full_name}: path variable {variable}")
        if verb in ("GET", "DELETE") and body:
            problems.append(f"{method.full_name}: {verb} with a body")
        if body not in ("", "*") and body not in fields:
            problems.append(f"{method.full_name}: body {body}")
    assert problems == []


def test_availability_query_parameters_match_the_design_brief() -> None:
    search = importlib.import_module("medsched.availability.v1.availability_service_pb2")
    request: Descriptor = search.SearchAvailabilityRequest.DESCRIPTOR
    by_query_name = {f.json_name: f for f in request.fields} | {f.name: f for f in request.fields}
    for parameter in (
        "specialty",
        "location",
        "radius",
        "insurance",
        "from",
        "to",
        "limit",
        "page_token",
    ):
        assert parameter in by_query_name, parameter
    # `from` and `to` are Python keywords, so the fields carry them as JSON names.
    assert by_query_name["from"].name == "from_date"
    assert by_query_name["to"].name == "to_date"
    for text_parameter in ("location", "radius", "from", "to"):
        assert by_query_name[text_parameter].type == FieldDescriptor.TYPE_STRING
    assert by_query_name["limit"].type == FieldDescriptor.TYPE_INT32


def test_booking_and_cancel_bodies_carry_the_design_brief_fields() -> None:
    booking = importlib.import_module("medsched.booking.v1.booking_service_pb2")
    book_fields = booking.BookAppointmentRequest.DESCRIPTOR.fields_by_name
    for name in ("slot_id", "patient_id", "visit_reason", "insurance_member_id", "idempotency_key"):
        assert name in book_fields, name
    assert "cancellation_reason" in booking.CancelAppointmentRequest.DESCRIPTOR.fields_by_name
    waitlist = importlib.import_module("medsched.waitlist.v1.waitlist_service_pb2")
    join_fields = waitlist.JoinWaitlistRequest.DESCRIPTOR.fields_by_name
    for name in (
        "patient_id",
        "specialty",
        "preferred_providers",
        "preferred_locations",
        "preferred_times",
        "urgency",
    ):
        assert name in join_fields, name


def test_fields_with_phi_names_are_marked_phi() -> None:
    unmarked = sorted(
        field.full_name
        for message in all_messages()
        for field in message.fields
        if PHI_NAME.search(field.name)
        and not is_enum(field)
        and not is_phi(field)
        and field.full_name not in NOT_PHI
    )
    assert unmarked == []


def test_not_phi_exemptions_name_existing_unmarked_fields() -> None:
    fields = {f.full_name: f for m in all_messages() for f in m.fields}
    stale = sorted(name for name in NOT_PHI if name not in fields or is_phi(fields[name]))
    assert stale == []


def test_phi_detection_sees_marked_fields() -> None:
    # Guards the checks above against an option that silently reads as false.
    booking = importlib.import_module("medsched.booking.v1.booking_service_pb2")
    fields = booking.BookAppointmentRequest.DESCRIPTOR.fields_by_name
    assert is_phi(fields["visit_reason"])
    assert is_phi(fields["insurance_member_id"])
    assert not is_phi(fields["patient_id"])
    assert phi_fields_reachable_from(booking.BookAppointmentRequest.DESCRIPTOR)


def test_events_reach_no_phi_field() -> None:
    # Events carry ids only, not even encrypted PHI: see the envelope.proto header for why.
    assert phi_fields_reachable_from(envelope_pb2.EventEnvelope.DESCRIPTOR) == []


def test_event_files_define_only_phi_free_messages() -> None:
    events = [f for f in our_files() if f.package == "medsched.events.v1"]
    assert len(events) >= 7
    leaks = [
        name
        for file in events
        for message in file.message_types_by_name.values()
        for name in phi_fields_reachable_from(message)
    ]
    assert leaks == []


def test_every_event_payload_declares_a_unique_subject() -> None:
    subjects: dict[str, str] = {}
    for payload in event_payloads():
        subject = payload.GetOptions().Extensions[options_pb2.event_subject]
        assert EVENT_SUBJECT.fullmatch(subject), payload.full_name
        assert subject not in subjects, subject
        subjects[subject] = payload.full_name
    assert "medsched.appointment.booked" in subjects
    assert "medsched.slots.freed" in subjects


def test_every_event_message_is_an_envelope_payload() -> None:
    in_envelope = {payload.full_name for payload in event_payloads()}
    declared = {
        message.full_name
        for message in all_messages()
        if message.GetOptions().Extensions[options_pb2.event_subject]
    }
    assert declared == in_envelope


def test_service_packages_are_the_ones_architecture_lists() -> None:
    packages = {p.name for p in ROOT.iterdir() if p.is_dir() and p.name.endswith("_svc")}
    assert packages == set(SERVICES_BY_PACKAGE)


def test_architecture_table_lists_the_same_service_packages() -> None:
    architecture = ROOT.parent / "shared" / "ARCHITECTURE.md"
    if not architecture.is_file():
        pytest.skip(f"{architecture} is not beside this checkout")
    listed = set(re.findall(r"^\| `([a-z]+_svc)` \|", architecture.read_text(), re.MULTILINE))
    assert listed == set(SERVICES_BY_PACKAGE)


def test_every_service_package_has_its_proto_services() -> None:
    declared = {s.full_name for s in all_services()}
    expected = {name for names in SERVICES_BY_PACKAGE.values() for name in names}
    assert expected <= declared
    assert declared - expected == set()


def test_packages_follow_directories() -> None:
    for file in our_files():
        directory = Path(file.name).parent.as_posix()
        assert file.package == directory.replace("/", "."), file.name
        assert re.fullmatch(r"medsched\.[a-z]+\.v\d+", file.package), file.name


def test_enum_zero_values_are_unspecified() -> None:
    enums = [e for f in our_files() for e in f.enum_types_by_name.values()]
    enums += [e for m in all_messages() for e in m.enum_types]
    wrong = [e.full_name for e in enums if not e.values_by_number[0].name.endswith("_UNSPECIFIED")]
    assert len(enums) > 20
    assert wrong == []


def test_no_phi_travels_in_urls() -> None:
    # GET and DELETE requests carry every field in the path or query string, which proxies
    # and access logs record; path variables of other verbs are in the URL too.
    leaks = []
    for method in all_methods():
        verb, path, _body = http_rule(method)
        if verb in ("GET", "DELETE"):
            leaks += phi_fields_reachable_from(method.input_type)
        fields = method.input_type.fields_by_name
        leaks += [v for v in PATH_VARIABLE.findall(path) if v in fields and is_phi(fields[v])]
    assert leaks == []


def uncommented_elements(file: descriptor_pb2.FileDescriptorProto) -> list[str]:
    """Names of services, methods, messages, fields, enums and values without a comment."""
    commented = {
        tuple(location.path)
        for location in file.source_code_info.location
        if location.leading_comments.strip()
    }
    missing: list[str] = []

    def need(path: tuple[int, ...], name: str) -> None:
        if path not in commented:
            missing.append(name)

    def enum(path: tuple[int, ...], proto: descriptor_pb2.EnumDescriptorProto, scope: str) -> None:
        need(path, f"{scope}.{proto.name}")
        for i, value in enumerate(proto.value):
            need((*path, ENUM_VALUE, i), f"{scope}.{proto.name}.{value.name}")

    def message(path: tuple[int, ...], proto: descriptor_pb2.DescriptorProto, scope: str) -> None:
        name = f"{scope}.{proto.name}"
        need(path, name)
        for i, field in enumerate(proto.field):
            need((*path, MESSAGE_FIELD, i), f"{name}.{field.name}")
        for i, nested in enumerate(proto.nested_type):
            message((*path, MESSAGE_NESTED, i), nested, name)
        for i, nested_enum in enumerate(proto.enum_type):
            enum((*path, MESSAGE_ENUM, i), nested_enum, name)

    for i, message_proto in enumerate(file.message_type):
        message((FILE_MESSAGE, i), message_proto, file.package)
    for i, enum_proto in enumerate(file.enum_type):
        enum((FILE_ENUM, i), enum_proto, file.package)
    for i, service in enumerate(file.service):
        need((FILE_SERVICE, i), f"{file.package}.{service.name}")
        for j, method in enumerate(service.method):
            need(
                (FILE_SERVICE, i, SERVICE_METHOD, j), f"{file.package}.{service.name}.{method.name}"
            )
    return missing


def test_every_contract_element_is_documented() -> None:
    files = [f for f in descriptor_set().file if f.name.startswith("medsched/")]
    assert len(files) == len(our_files())
    missing = [name for file in files for name in uncommented_elements(file)]
    assert missing == []


def test_descriptor_set_includes_imports_for_the_gateway() -> None:
    names = {f.name for f in descriptor_set().file}
    assert {"google/api/annotations.proto", "google/protobuf/timestamp.proto"} <= names


def test_generated_code_matches_the_protos() -> None:
    difference = protogen.check(ROOT)
    assert difference.describe() == []


def test_check_reports_edited_missing_and_stale_files(tmp_path: Path) -> None:
    committed = {"a_pb2.py": b"same", "b_pb2.py": b"old", "stale_pb2.py": b"x"}
    generated = {"a_pb2.py": b"same", "b_pb2.py": b"new", "c_pb2.py": b"added"}
    difference = protogen.compare_trees(generated, committed)
    assert difference.missing == ("c_pb2.py",)
    assert difference.changed == ("b_pb2.py",)
    assert difference.stale == ("stale_pb2.py",)

    generated_root, target_root = tmp_path / "generated", tmp_path / "target"
    for root, files in ((generated_root, generated), (target_root, committed)):
        for name, content in files.items():
            (root / "pkg").mkdir(parents=True, exist_ok=True)
            (root / "pkg" / name).write_bytes(content)
    protogen.apply_difference(
        protogen.compare_trees(protogen.read_tree(generated_root), protogen.read_tree(target_root)),
        generated_root,
        target_root,
    )
    assert protogen.read_tree(target_root) == protogen.read_tree(generated_root)
