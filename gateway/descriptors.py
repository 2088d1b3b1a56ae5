"""The REST surface read from a FileDescriptorSet: every `google.api.http` binding and comment.

The gateway knows no service by name: it loads the descriptor set the code generator writes
(`medsched/descriptor_set.binpb`, with imports and source info) into a private descriptor
pool, and every RPC annotated with an `HttpRule` (its primary pattern and each of its
`additional_bindings`) becomes one `HttpBinding`. Leading comments from the source info
become descriptions in the OpenAPI document. Methods the contract marks with medsched's
`public` method option (`medsched.common.v1.public`) are served to anonymous callers too.

Client-streaming and bidirectional methods have no REST form here (a JSON request is one
message); annotating one is a contract error reported at start.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import google.api.annotations_pb2 as annotations_pb2  # type: ignore[import-untyped, unused-ignore]
import google.api.http_pb2 as http_pb2  # type: ignore[import-untyped, unused-ignore]
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, unknown_fields
from google.protobuf.descriptor import (
    Descriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)
from google.protobuf.message import DecodeError, Message

from gateway.templates import PathTemplate, TemplateError, parse_template

PUBLIC_OPTION = "medsched.common.v1.public"

_PATTERN_KINDS = ("get", "put", "post", "delete", "patch")
# Field numbers inside descriptor.proto, for locating comments in `SourceCodeInfo`.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM = 2, 3, 4
_ENUM_VALUE, _SERVICE_METHOD = 2, 2


class ApiError(ValueError):
    """The descriptors describe a REST binding the gateway cannot serve; names the method."""


@dataclass(frozen=True)
class HttpBinding:
    """One HTTP method + path template mapped onto one RPC."""

    method: MethodDescriptor
    http_method: str
    template: PathTemplate
    # "" (no body), "*" (the whole request) or a top-level request field name.
    body: str
    # "" (the whole response) or a top-level response field name.
    response_body: str
    # 0 for the rule itself, 1.. for its additional bindings (they need distinct operation ids).
    index: int
    # The method is marked `(medsched.common.v1.public) = true`: no principal needed.
    public: bool = False

    @property
    def service_name(self) -> str:
        return str(self.method.containing_service.full_name)

    @property
    def grpc_path(self) -> str:
        return f"/{self.service_name}/{self.method.name}"

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def operation_id(self) -> str:
        base = f"{self.method.containing_service.name}_{self.method.name}"
        return base if self.index == 0 else f"{base}_{self.index}"


@dataclass(frozen=True)
class Api:
    """Everything the gateway serves, built once at start from the descriptor set."""

    pool: descriptor_pool.DescriptorPool
    bindings: tuple[HttpBinding, ...]
    # Leading comments by element full name (services, methods, messages, fields, enums, values).
    comments: Mapping[str, str]

    def message_class(self, descriptor: Descriptor) -> type[Message]:
        return message_factory.GetMessageClass(descriptor)

    def services(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(binding.service_name for binding in self.bindings))

    def restricted_to(self, service_names: Iterable[str]) -> Api:
        keep = frozenset(service_names)
        return Api(
            pool=self.pool,
            bindings=tuple(b for b in self.bindings if b.service_name in keep),
            comments=self.comments,
        )


def load_api_file(path: Path) -> Api:
    """`load_api` over the bytes of a descriptor set file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ApiError(f"descriptor set {path}: cannot read ({e.strerror})") from e
    return load_api(data)


def load_api(descriptor_set: bytes) -> Api:
    """Parse a serialized FileDescriptorSet and collect its HTTP bindings."""
    try:
        files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
    except DecodeError as e:
        raise ApiError("descriptor set: not a serialized FileDescriptorSet") from e
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        try:
            pool.Add(file)
        except (TypeError, ValueError) as e:
            raise ApiError(f"descriptor set: cannot load {file.name} ({e})") from e
    bindings: list[HttpBinding] = []
    public_number = extension_number(pool, PUBLIC_OPTION)
    for file in files.file:
        for service in file.service:
            full_name = f"{file.package}.{service.name}" if file.package else service.name
            bindings.extend(_service_bindings(pool.FindServiceByName(full_name), public_number))
    return Api(pool=pool, bindings=tuple(bindings), comments=_comments(files.file))


def _service_bindings(
    service: ServiceDescriptor, public_number: int | None
) -> Iterator[HttpBinding]:
    for method in service.methods:
        rule = _http_rule(method)
        if rule is None:
            continue
        if method.client_streaming:
            raise ApiError(f"{method.full_name}: client-streaming methods cannot be bound to HTTP")
        public = public_number is not None and bool_option(
            method.GetOptions(), PUBLIC_OPTION, public_number
        )
        yield _binding(method, rule, 0, public)
        for index, extra in enumerate(rule.additional_bindings, start=1):
            if extra.additional_bindings:
                raise ApiError(f"{method.full_name}: additional bindings cannot nest")
            yield _binding(method, extra, index, public)


def extension_number(pool: descriptor_pool.DescriptorPool, full_name: str) -> int | None:
    """The field number of the extension `full_name` in `pool`, None if it has none."""
    try:
        return int(pool.FindExtensionByName(full_name).number)
    except KeyError:
        return None


def bool_option(options: Message, full_name: str, number: int) -> bool:
    """Whether the bool extension `full_name` (field `number`) is true in `options`.

    When the generated medsched modules are imported, the default pool knows the option and
    parses it as an extension; otherwise it stays an unknown field of the options message
    (the private pool's extension is invisible there): both are checked.
    """
    for descriptor, value in options.ListFields():
        if descriptor.is_extension and descriptor.full_name == full_name:
            return bool(value)
    found = unknown_fields.UnknownFieldSet(options)
    return any(found[i].field_number == number and bool(found[i].data) for i in range(len(found)))


def _http_rule(method: MethodDescriptor) -> http_pb2.HttpRule | None:
    options = method.GetOptions()
    # The generated stubs type the extension as a plain FieldDescriptor.
    extension: Any = annotations_pb2.http
    if not options.HasExtension(extension):
        return None
    rule: http_pb2.HttpRule = options.Extensions[extension]
    return rule


def _binding(
    method: MethodDescriptor, rule: http_pb2.HttpRule, index: int, public: bool
) -> HttpBinding:
    http_method, path = _pattern(method, rule)
    try:
        template = parse_template(path)
    except TemplateError as e:
        raise ApiError(f"{method.full_name}: {e}") from e
    for field_path in template.field_paths:
        _check_path_field(method, field_path)
    body = str(rule.body)
    if body not in ("", "*"):
        _top_level_field(method, method.input_type, body, "body")
    if body and http_method in ("GET", "DELETE"):
        raise ApiError(f"{method.full_name}: {http_method} bindings cannot take a body")
    response_body = str(rule.response_body)
    if response_body:
        _top_level_field(method, method.output_type, response_body, "response_body")
    return HttpBinding(method, http_method, template, body, response_body, index, public)


def _pattern(method: MethodDescriptor, rule: http_pb2.HttpRule) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind in _PATTERN_KINDS:
        return kind.upper(), str(getattr(rule, kind))
    if kind == "custom":
        return str(rule.custom.kind).upper(), str(rule.custom.path)
    raise ApiError(f"{method.full_name}: HttpRule has no pattern")


def _top_level_field(
    method: MethodDescriptor, message: Descriptor, name: str, what: str
) -> FieldDescriptor:
    field = message.fields_by_name.get(name)
    if field is None:
        raise ApiError(f"{method.full_name}: {what} names unknown field {name!r}")
    return field


def _check_path_field(method: MethodDescriptor, field_path: str) -> None:
    """Path variables must name a singular scalar field (possibly inside nested messages)."""
    message = method.input_type
    names = field_path.split(".")
    for depth, name in enumerate(names):
        field = message.fields_by_name.get(name)
        if field is None:
            raise ApiError(f"{method.full_name}: path variable names unknown field {field_path!r}")
        if field.is_repeated:
            raise ApiError(f"{method.full_name}: path variable {field_path!r} is repeated")
        last = depth == len(names) - 1
        if last and field.type == FieldDescriptor.TYPE_MESSAGE:
            raise ApiError(f"{method.full_name}: path variable {field_path!r} is a message")
        if not last:
            if field.message_type is None:
                raise ApiError(f"{method.full_name}: {field_path!r} goes through a scalar")
            message = field.message_type


def _comments(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> Mapping[str, str]:
    found: dict[str, str] = {}
    for file in files:
        by_path = {
            tuple(location.path): location.leading_comments
            for location in file.source_code_info.location
            if location.leading_comments.strip()
        }
        if by_path:
            for full_name, path in _element_paths(file):
                comment = by_path.get(path)
                if comment is not None:
                    found[full_name] = _clean_comment(comment)
    return MappingProxyType(found)


def _element_paths(
    file: descriptor_pb2.FileDescriptorProto,
) -> Iterator[tuple[str, tuple[int, ...]]]:
    prefix = f"{file.package}." if file.package else ""
    for index, message in enumerate(file.message_type):
        yield from _message_paths(message, prefix + message.name, (_FILE_MESSAGE, index))
    for index, enum in enumerate(file.enum_type):
        yield from _enum_paths(enum, prefix + enum.name, (_FILE_ENUM, index))
    for index, service in enumerate(file.service):
        name = prefix + service.name
        yield name, (_FILE_SERVICE, index)
        for method_index, method in enumerate(service.method):
            yield f"{name}.{method.name}", (_FILE_SERVICE, index, _SERVICE_METHOD, method_index)


def _message_paths(
    message: descriptor_pb2.DescriptorProto, name: str, path: tuple[int, ...]
) -> Iterator[tuple[str, tuple[int, ...]]]:
    yield name, path
    for index, field in enumerate(message.field):
        yield f"{name}.{field.name}", (*path, _MESSAGE_FIELD, index)
    for index, nested in enumerate(message.nested_type):
        yield from _message_paths(nested, f"{name}.{nested.name}", (*path, _MESSAGE_NESTED, index))
    for index, enum in enumerate(message.enum_type):
        yield from _enum_paths(enum, f"{name}.{enum.name}", (*path, _MESSAGE_ENUM, index))


def _enum_paths(
    enum: descriptor_pb2.EnumDescriptorProto, name: str, path: tuple[int, ...]
) -> Iterator[tuple[str, tuple[int, ...]]]:
    yield name, path
    for index, value in enumerate(enum.value):
        # Enum values are scoped like siblings of their enum in protobuf naming.
        yield f"{name}.{value.name}", (*path, _ENUM_VALUE, index)


def _clean_comment(comment: str) -> str:
    """Strip the one leading space protoc keeps after `//` on every line."""
    lines = [line[1:] if line.startswith(" ") else line for line in comment.strip("\n").split("\n")]
    return "\n".join(lines).strip()
