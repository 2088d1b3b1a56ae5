"""HTTP request -> protobuf request message, and protobuf response -> JSON, per binding.

The JSON mapping is protobuf's canonical one (`google.protobuf.json_format`):

- Requests accept both the lowerCamelCase `json_name` and the original proto field name of
  every field (in bodies and in query parameters alike).
- Responses use the `json_name` (lowerCamelCase unless the contract sets another), enums as
  their value names, 64-bit integers as decimal strings, `Timestamp` as RFC 3339 and
  `Duration` as `"1.5s"`, and they include fields holding their default value (`0`, `""`,
  `false`, `[]`, `{}`), so every response of one type has the same shape; message fields
  that are unset and fields with explicit presence (`optional`, oneofs) are left out.

How a request is built, following `google.api.http`:

1. Variables of the path template fill the fields they name.
2. `body: "*"`: the JSON body is the whole request message (path variables override it);
   no query parameters are accepted. `body: "<field>"`: the JSON body is that field.
   No body in the rule: a non-empty request body is refused.
3. Every other field may be given as a query parameter named by its field path
   (`room.floor`, with each segment the proto or the JSON name). Repeated scalar fields
   repeat the parameter (`clinic_ids=a&clinic_ids=b`); enums take value names (or numbers);
   `Timestamp`, `Duration`, `FieldMask` and the wrapper types take their JSON string forms.
   An unknown parameter, one given twice for a singular field, or one that names a message,
   map or repeated message field is refused naming the parameter.
4. Strings (in the path, the query or the body) must not contain NUL (U+0000).

Before the canonical parser runs, the merged JSON is checked field by field against the
message descriptor, so every problem is reported with its path (`visit.startTime`) and a
fixed description; the client's values are never echoed (they may be PHI).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from google.protobuf import (
    any_pb2,
    descriptor_pool,
    duration_pb2,
    field_mask_pb2,
    json_format,
    message_factory,
    timestamp_pb2,
)
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from gateway.descriptors import HttpBinding, bool_option, extension_number

Location = Literal["path", "query", "body"]
JsonValue = Any

_INT_RANGES: dict[int, tuple[int, int]] = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_FLOAT_TYPES = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)
_FLOAT32_MAX = 3.4028234663852886e38
_SPECIAL_FLOATS = ("NaN", "Infinity", "-Infinity")
_INTEGER_TEXT = re.compile(r"-?[0-9]+")
_FLOAT_TEXT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")
_BOOL_TEXT = {"true": True, "false": False, "1": True, "0": False}

_TOO_DEEP = "the body is nested too deeply"
# Refused in every string: no medsched field has a use for it, and PostgreSQL text cannot
# hold it (a service would fail storing or searching for it).
_NUL = "\x00"
_NUL_PROBLEM = "must not contain NUL (U+0000) characters"

_TIMESTAMP = "google.protobuf.Timestamp"
_DURATION = "google.protobuf.Duration"
_FIELD_MASK = "google.protobuf.FieldMask"
_STRUCT = "google.protobuf.Struct"
_VALUE = "google.protobuf.Value"
_LIST_VALUE = "google.protobuf.ListValue"
_EMPTY = "google.protobuf.Empty"
_ANY = "google.protobuf.Any"
_WRAPPERS = frozenset(
    f"google.protobuf.{name}"
    for name in (
        "DoubleValue",
        "FloatValue",
        "Int64Value",
        "UInt64Value",
        "Int32Value",
        "UInt32Value",
        "BoolValue",
        "StringValue",
        "BytesValue",
    )
)
# Well-known message types whose JSON form is a string, so a query parameter can carry them.
_STRING_FORM_TYPES = frozenset({_TIMESTAMP, _DURATION, _FIELD_MASK})
# Error details of these packages are the contracts' own, written for callers.
_DETAIL_PACKAGE_PREFIX = "medsched."
_PHI_OPTION = "medsched.common.v1.phi"


@dataclass(frozen=True)
class RequestViolation:
    """One problem with the request: where (JSON path or parameter name), and why."""

    field: str
    description: str
    location: Location


class RequestError(Exception):
    """The HTTP request cannot become the RPC's request message; lists every problem."""

    def __init__(self, violations: Sequence[RequestViolation]) -> None:
        self.violations = tuple(violations)
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(summary or "invalid request")


class _Invalid:
    """Marks a value that produced a violation and must not be merged."""


_INVALID = _Invalid()


class Transcoder:
    """Builds request messages and renders responses for the bindings of one `Api`.

    Holds per-message lookup tables (field by proto or JSON name) built on first use, so
    the per-request work is dictionary lookups.
    """

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool
        self._fields: dict[str, dict[str, FieldDescriptor]] = {}
        self._phi_number = extension_number(pool, _PHI_OPTION)

    # --- requests ------------------------------------------------------------------------

    def build_request(
        self,
        binding: HttpBinding,
        path_params: Mapping[str, str],
        query: Sequence[tuple[str, str]],
        body: bytes,
    ) -> Message:
        """The request message for `binding`; `RequestError` lists everything wrong."""
        violations: list[RequestViolation] = []
        request = self._body_json(binding, body, violations)
        for name, chain, values in self._group_query(binding, query, violations):
            self._apply_query(request, name, chain, values, violations)
        for field_path, text in path_params.items():
            self._apply_path(binding, request, field_path, text, violations)
        if violations:
            raise RequestError(violations)
        problems: list[tuple[str, str]] = []
        try:
            normalized = self._normalize_message(binding.method.input_type, request, "", problems)
        except RecursionError as e:
            # Only a recursive message type nested absurdly deep gets here.
            raise RequestError([RequestViolation("", _TOO_DEEP, "body")]) from e
        if problems or normalized is None:
            raise RequestError([self._located(binding, path, text) for path, text in problems])
        message = message_factory.GetMessageClass(binding.method.input_type)()
        try:
            json_format.ParseDict(normalized, message, descriptor_pool=self._pool)
        except json_format.ParseError as e:
            # The checks above mirror the parser; reaching here means an unusual value
            # (e.g. an `Any` of an unknown type). Its text may quote the value: not echoed.
            raise RequestError(
                [RequestViolation("", "the request does not match its message type", "body")]
            ) from e
        return message

    def _body_json(
        self, binding: HttpBinding, body: bytes, violations: list[RequestViolation]
    ) -> dict[str, JsonValue]:
        if not binding.body:
            if body.strip():
                violations.append(RequestViolation("", "this method takes no request body", "body"))
            return {}
        if not body.strip():
            parsed: JsonValue = {}
        else:
            try:
                parsed = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                violations.append(RequestViolation("", "the body is not valid JSON", "body"))
                return {}
            except RecursionError:
                violations.append(RequestViolation("", _TOO_DEEP, "body"))
                return {}
        if binding.body == "*":
            if not isinstance(parsed, dict):
                violations.append(RequestViolation("", "the body must be a JSON object", "body"))
                return {}
            return parsed
        field = binding.method.input_type.fields_by_name[binding.body]
        return {field.name: parsed}

    def _group_query(
        self,
        binding: HttpBinding,
        query: Sequence[tuple[str, str]],
        violations: list[RequestViolation],
    ) -> list[tuple[str, list[FieldDescriptor], list[str]]]:
        """Parameters resolved to their fields and grouped by field, so `clinic_ids=a` and
        `clinicIds=b` fill one list; each group keeps the first spelling for errors."""
        groups: dict[str, tuple[str, list[FieldDescriptor], list[str]]] = {}
        refused: set[str] = set()
        for name, value in query:
            if name in refused:
                continue
            problem, chain = self._query_target(binding, name)
            if problem or chain is None:
                refused.add(name)
                violations.append(RequestViolation(name, problem, "query"))
                continue
            proto_path = ".".join(field.name for field in chain)
            groups.setdefault(proto_path, (name, chain, []))[2].append(value)
        return list(groups.values())

    def _query_target(
        self, binding: HttpBinding, name: str
    ) -> tuple[str, list[FieldDescriptor] | None]:
        """(problem, field chain) for a query parameter name; problem "" when usable."""
        if binding.body == "*":
            return "unknown query parameter: this method takes its input in the request body", None
        chain = self._resolve(binding.method.input_type, name)
        if chain is None:
            return "unknown query parameter", None
        if chain[0].name == binding.body:
            return "is part of the request body, not a query parameter", None
        proto_path = ".".join(field.name for field in chain)
        if any(proto_path == p or proto_path.startswith(p + ".") for p in _path_fields(binding)):
            return "is set by the URL path", None
        return _query_field_problem(chain), chain

    def _apply_query(
        self,
        request: dict[str, JsonValue],
        name: str,
        chain: list[FieldDescriptor],
        values: list[str],
        violations: list[RequestViolation],
    ) -> None:
        leaf = chain[-1]
        if not leaf.is_repeated and len(values) > 1:
            violations.append(RequestViolation(name, "is given more than once", "query"))
            return
        converted = [_from_text(leaf, value) for value in values]
        bad = [value for value, item in zip(values, converted, strict=True) if item is _INVALID]
        if bad:
            violations.append(RequestViolation(name, _invalid_because(leaf, bad[0]), "query"))
            return
        _set_path(request, chain, converted if leaf.is_repeated else converted[0])

    def _apply_path(
        self,
        binding: HttpBinding,
        request: dict[str, JsonValue],
        field_path: str,
        text: str,
        violations: list[RequestViolation],
    ) -> None:
        chain = self._resolve(binding.method.input_type, field_path)
        if chain is None:  # load_api checked every path variable; kept for safety
            raise RuntimeError(f"{binding.grpc_path}: path field {field_path!r} vanished")
        value = _from_text(chain[-1], text)
        if value is _INVALID:
            json_path = ".".join(field.json_name for field in chain)
            problem = _invalid_because(chain[-1], text)
            violations.append(RequestViolation(json_path, problem, "path"))
            return
        _set_path(request, chain, value)

    def _located(self, binding: HttpBinding, json_path: str, description: str) -> RequestViolation:
        if not json_path:
            return RequestViolation("", description, "body" if binding.body else "query")
        client_path, location = self.client_field_path(binding, json_path)
        return RequestViolation(client_path, description, location)

    def _resolve(self, message: Descriptor, dotted: str) -> list[FieldDescriptor] | None:
        chain: list[FieldDescriptor] = []
        current: Descriptor | None = message
        for segment in dotted.split("."):
            if current is None:
                return None
            field = self._lookup(current).get(segment)
            if field is None:
                return None
            chain.append(field)
            current = field.message_type
        return chain

    def _lookup(self, message: Descriptor) -> dict[str, FieldDescriptor]:
        table = self._fields.get(message.full_name)
        if table is None:
            table = {}
            for field in message.fields:
                table[field.name] = field
                table[field.json_name] = field
            self._fields[message.full_name] = table
        return table

    # --- checking and normalizing JSON against descriptors --------------------------------

    def _normalize_message(
        self,
        message: Descriptor,
        value: JsonValue,
        path: str,
        problems: list[tuple[str, str]],
    ) -> dict[str, JsonValue] | None:
        if not isinstance(value, dict):
            problems.append((path, "must be a JSON object"))
            return None
        table = self._lookup(message)
        result: dict[str, JsonValue] = {}
        oneofs: dict[str, str] = {}
        for key, item in value.items():
            field = table.get(key) if isinstance(key, str) else None
            field_path = _join(path, key if field is None else field.json_name)
            if field is None:
                problems.append((field_path, "unknown field"))
                continue
            if field.name in result:
                problems.append((field_path, "is given twice"))
                continue
            if item is None and not _is_type(field, _VALUE):
                continue  # JSON null means "not set" in the canonical mapping
            oneof = field.containing_oneof
            if oneof is not None and not _is_synthetic(field):
                if oneof.name in oneofs:
                    problems.append(
                        (
                            field_path,
                            f"only one of the '{oneof.name}' fields may be set "
                            f"({oneofs[oneof.name]} is already)",
                        )
                    )
                    continue
                oneofs[oneof.name] = field.json_name
            normalized = self._normalize_field(field, item, field_path, problems)
            if normalized is not _INVALID:
                result[field.name] = normalized
        return result

    def _normalize_field(
        self,
        field: FieldDescriptor,
        value: JsonValue,
        path: str,
        problems: list[tuple[str, str]],
    ) -> JsonValue:
        if _is_map(field):
            return self._normalize_map(field, value, path, problems)
        if field.is_repeated:
            if not isinstance(value, list):
                problems.append((path, "must be a JSON array"))
                return _INVALID
            items = [
                self._normalize_single(field, item, f"{path}[{index}]", problems)
                for index, item in enumerate(value)
            ]
            return _INVALID if any(item is _INVALID for item in items) else items
        return self._normalize_single(field, value, path, problems)

    def _normalize_map(
        self,
        field: FieldDescriptor,
        value: JsonValue,
        path: str,
        problems: list[tuple[str, str]],
    ) -> JsonValue:
        if not isinstance(value, dict):
            problems.append((path, "must be a JSON object"))
            return _INVALID
        key_field = _message_of(field).fields_by_name["key"]
        value_field = _message_of(field).fields_by_name["value"]
        result: dict[str, JsonValue] = {}
        for key, item in value.items():
            item_path = f"{path}.{key}"
            if _from_text(key_field, key) is _INVALID:
                problems.append((item_path, f"map key {_invalid_because(key_field, key)}"))
                continue
            normalized = self._normalize_single(value_field, item, item_path, problems)
            if normalized is not _INVALID:
                result[key] = normalized
        return result

    def _normalize_single(
        self,
        field: FieldDescriptor,
        value: JsonValue,
        path: str,
        problems: list[tuple[str, str]],
    ) -> JsonValue:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            return self._normalize_embedded(_message_of(field), value, path, problems)
        if _scalar_ok(field, value):
            return value
        problems.append((path, _invalid_because(field, value)))
        return _INVALID

    def _normalize_embedded(
        self,
        message: Descriptor,
        value: JsonValue,
        path: str,
        problems: list[tuple[str, str]],
    ) -> JsonValue:
        full_name = message.full_name
        check = _WELL_KNOWN_CHECKS.get(full_name)
        if check is not None:
            problem = check(value)
            if problem:
                problems.append((path, problem))
                return _INVALID
            return value
        if full_name in _WRAPPERS:
            inner = message.fields_by_name["value"]
            return self._normalize_single(inner, value, path, problems)
        normalized = self._normalize_message(message, value, path, problems)
        return _INVALID if normalized is None else normalized

    # --- responses -----------------------------------------------------------------------

    def response_json(self, binding: HttpBinding, message: Message) -> JsonValue:
        """The JSON value of a response (or of its `response_body` field)."""
        rendered = json_format.MessageToDict(
            message,
            always_print_fields_with_no_presence=True,
            descriptor_pool=self._pool,
        )
        if not binding.response_body:
            return rendered
        field = binding.method.output_type.fields_by_name[binding.response_body]
        return rendered.get(field.json_name)

    def detail_json(self, packed: any_pb2.Any) -> dict[str, JsonValue] | None:
        """An error detail of a contract type (`medsched.*`) as the canonical JSON of an
        `Any` (`@type` and the message's fields, PHI-marked fields left out); None for any
        other type (those may describe internals)."""
        type_name = packed.TypeName()
        if not type_name.startswith(_DETAIL_PACKAGE_PREFIX):
            return None
        try:
            descriptor = self._pool.FindMessageTypeByName(type_name)
        except KeyError:
            return None
        message = message_factory.GetMessageClass(descriptor)()
        try:
            message.ParseFromString(packed.value)
        except DecodeError:
            return None
        rendered = json_format.MessageToDict(
            message, always_print_fields_with_no_presence=True, descriptor_pool=self._pool
        )
        self._drop_phi(descriptor, rendered)
        return {"@type": packed.type_url, **rendered}

    def _drop_phi(self, message: Descriptor, rendered: dict[str, JsonValue]) -> None:
        """Remove the members of PHI-marked fields from a rendered message, at any depth."""
        number = self._phi_number
        if number is None:
            return
        for field in message.fields:
            value = rendered.get(field.json_name)
            if value is None:
                continue
            if bool_option(field.GetOptions(), _PHI_OPTION, number):
                del rendered[field.json_name]
            elif field.message_type is not None and not _is_map(field):
                for item in value if isinstance(value, list) else [value]:
                    if isinstance(item, dict):
                        self._drop_phi(field.message_type, item)

    # --- error paths -----------------------------------------------------------------------

    def client_field_path(self, binding: HttpBinding, proto_path: str) -> tuple[str, Location]:
        """A service's field path (`visit.start_time`, `slots[2].start_time`) as the client
        sees it: JSON names, relative to the JSON body when the body is one field."""
        segments = _split_path(proto_path)
        message: Descriptor | None = binding.method.input_type
        out: list[str] = []
        names: list[str] = []
        for name, suffix in segments:
            field = self._lookup(message).get(name) if message is not None else None
            if field is None:
                message = None
                out.append(name + suffix)
                names.append(name)
                continue
            out.append(field.json_name + suffix)
            names.append(field.name)
            message = field.message_type
        dotted = ".".join(names)
        if any(dotted == p or dotted.startswith(p + ".") for p in _path_fields(binding)):
            return ".".join(out), "path"
        if binding.body == "*":
            return ".".join(out), "body"
        if binding.body and names and names[0] == binding.body:
            return ".".join(out[1:]), "body"
        return ".".join(out), "query"


# --- helpers ---------------------------------------------------------------------------------


def _path_fields(binding: HttpBinding) -> frozenset[str]:
    return binding.template.field_paths


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _message_of(field: FieldDescriptor) -> Descriptor:
    if field.message_type is None:
        raise TypeError(f"{field.full_name} is not a message field")
    return field.message_type


def _enum_of(field: FieldDescriptor) -> EnumDescriptor:
    if field.enum_type is None:
        raise TypeError(f"{field.full_name} is not an enum field")
    return field.enum_type


def _is_map(field: FieldDescriptor) -> bool:
    return bool(
        field.type == FieldDescriptor.TYPE_MESSAGE and _message_of(field).GetOptions().map_entry
    )


def _is_type(field: FieldDescriptor, full_name: str) -> bool:
    return bool(
        field.type == FieldDescriptor.TYPE_MESSAGE and _message_of(field).full_name == full_name
    )


def _is_synthetic(field: FieldDescriptor) -> bool:
    """proto3 `optional` fields live in a synthetic one-field oneof; that is no choice."""
    oneof = field.containing_oneof
    return oneof is not None and len(oneof.fields) == 1 and oneof.name.startswith("_")


def _query_field_problem(chain: list[FieldDescriptor]) -> str:
    for field in chain[:-1]:
        if field.is_repeated:
            return "goes through a repeated field, which a query parameter cannot address"
        if _message_of(field).full_name in _WRAPPERS | _STRING_FORM_TYPES:
            return "unknown query parameter"
    leaf = chain[-1]
    if _is_map(leaf):
        return "is a map, which a query parameter cannot set"
    if leaf.type == FieldDescriptor.TYPE_MESSAGE:
        name = _message_of(leaf).full_name
        if name not in _STRING_FORM_TYPES and name not in _WRAPPERS:
            if leaf.is_repeated:
                return "is a list of objects, which a query parameter cannot set"
            return "is an object: set its fields as separate parameters (name.field=...)"
    return ""


def _set_path(
    request: dict[str, JsonValue], chain: list[FieldDescriptor], value: JsonValue
) -> None:
    node = request
    for field in chain[:-1]:
        child = node.get(field.name)
        if child is None:
            # Accept a body that spelled the parent with its JSON name.
            child = node.pop(field.json_name, None)
        if not isinstance(child, dict):
            child = {}
        node[field.name] = child
        node = child
    leaf = chain[-1]
    if leaf.json_name != leaf.name:
        node.pop(leaf.json_name, None)
    node[leaf.name] = value


def _from_text(field: FieldDescriptor, text: str) -> JsonValue:
    """A path or query text as the JSON value of `field`'s (element) type, or `_INVALID`."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        name = _message_of(field).full_name
        if name in _STRING_FORM_TYPES:
            return _INVALID if _WELL_KNOWN_CHECKS[name](text) else text
        if name in _WRAPPERS:
            return _from_text(_message_of(field).fields_by_name["value"], text)
        return _INVALID
    if kind == FieldDescriptor.TYPE_BOOL:
        return _BOOL_TEXT.get(text.lower(), _INVALID)
    if kind == FieldDescriptor.TYPE_ENUM:
        if _INTEGER_TEXT.fullmatch(text):
            number = int(text)
            return number if _enum_of(field).values_by_number.get(number) else _INVALID
        return text if text in _enum_of(field).values_by_name else _INVALID
    if kind in _INT_RANGES:
        return text if _int_in_range(kind, text) else _INVALID
    if kind in _FLOAT_TYPES:
        return text if _float_ok(kind, text) else _INVALID
    if kind == FieldDescriptor.TYPE_BYTES:
        return text if _base64_ok(text) else _INVALID
    return text if _NUL not in text else _INVALID


def _scalar_ok(field: FieldDescriptor, value: JsonValue) -> bool:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return isinstance(value, str) and _NUL not in value
    if kind == FieldDescriptor.TYPE_BOOL:
        return isinstance(value, bool)
    if kind == FieldDescriptor.TYPE_ENUM:
        if isinstance(value, str):
            return value in _enum_of(field).values_by_name
        return _is_int(value) and value in _enum_of(field).values_by_number
    if kind in _INT_RANGES:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if _is_int(value):
            low, high = _INT_RANGES[kind]
            return bool(low <= value <= high)
        return isinstance(value, str) and _int_in_range(kind, value)
    if kind in _FLOAT_TYPES:
        if _is_int(value) or isinstance(value, float):
            return kind == FieldDescriptor.TYPE_DOUBLE or abs(value) <= _FLOAT32_MAX
        return isinstance(value, str) and _float_ok(kind, value)
    if kind == FieldDescriptor.TYPE_BYTES:
        return isinstance(value, str) and _base64_ok(value)
    return False


def _is_int(value: JsonValue) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in_range(kind: int, text: str) -> bool:
    if not _INTEGER_TEXT.fullmatch(text):
        return False
    low, high = _INT_RANGES[kind]
    return low <= int(text) <= high


def _float_ok(kind: int, text: str) -> bool:
    if text in _SPECIAL_FLOATS:
        return True
    if not _FLOAT_TEXT.fullmatch(text):
        return False
    number = float(text)
    if math.isinf(number):
        return False
    return kind == FieldDescriptor.TYPE_DOUBLE or abs(number) <= _FLOAT32_MAX


def _base64_ok(text: str) -> bool:
    if not _BASE64_TEXT.fullmatch(text):
        return False
    standard = text.replace("-", "+").replace("_", "/")
    try:
        base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _expected(field: FieldDescriptor) -> str:
    """What a field's value must look like, without repeating the value given."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_MESSAGE:
        name = _message_of(field).full_name
        if name in _WRAPPERS:
            return _expected(_message_of(field).fields_by_name["value"])
        return _WELL_KNOWN_EXPECTATIONS.get(name, "must be a JSON object")
    if kind == FieldDescriptor.TYPE_ENUM:
        names = [v.name for v in _enum_of(field).values if v.number != 0]
        return "must be one of " + ", ".join(names)
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        return f"must be an integer from {low} to {high}"
    if kind in _FLOAT_TYPES:
        return "must be a number"
    if kind == FieldDescriptor.TYPE_BOOL:
        return "must be true or false"
    if kind == FieldDescriptor.TYPE_BYTES:
        return "must be base64-encoded bytes"
    return "must be a string"


def _invalid_because(field: FieldDescriptor, value: JsonValue) -> str:
    """Why `value` (JSON or text) does not fit `field`, without repeating the value."""
    if isinstance(value, str) and _NUL in value and _is_text(field):
        return _NUL_PROBLEM
    return _expected(field)


def _is_text(field: FieldDescriptor) -> bool:
    if field.type == FieldDescriptor.TYPE_MESSAGE and _message_of(field).full_name in _WRAPPERS:
        return _is_text(_message_of(field).fields_by_name["value"])
    return bool(field.type == FieldDescriptor.TYPE_STRING)


def _check_timestamp(value: JsonValue) -> str:
    if isinstance(value, str):
        try:
            timestamp_pb2.Timestamp().FromJsonString(value)
        except ValueError:
            pass
        else:
            return ""
    return _WELL_KNOWN_EXPECTATIONS[_TIMESTAMP]


def _check_duration(value: JsonValue) -> str:
    if isinstance(value, str):
        try:
            duration_pb2.Duration().FromJsonString(value)
        except ValueError:
            pass
        else:
            return ""
    return _WELL_KNOWN_EXPECTATIONS[_DURATION]


def _check_field_mask(value: JsonValue) -> str:
    if isinstance(value, str):
        try:
            field_mask_pb2.FieldMask().FromJsonString(value)
        except ValueError:
            pass
        else:
            return ""
    return _WELL_KNOWN_EXPECTATIONS[_FIELD_MASK]


def _check_type(expected: type, description: str) -> Callable[[JsonValue], str]:
    def check(value: JsonValue) -> str:
        return "" if isinstance(value, expected) else description

    return check


def _check_empty(value: JsonValue) -> str:
    return "" if value == {} else "must be an empty JSON object"


def _check_any_value(value: JsonValue) -> str:
    del value
    return ""


def _check_any(value: JsonValue) -> str:
    if isinstance(value, dict) and isinstance(value.get("@type"), str):
        return ""
    return "must be a JSON object with an @type"


_WELL_KNOWN_EXPECTATIONS: dict[str, str] = {
    _TIMESTAMP: "must be an RFC 3339 timestamp such as 2025-02-01T09:30:00Z",
    _DURATION: "must be a duration in seconds such as 90s or 1.5s",
    _FIELD_MASK: "must be a comma-separated list of field paths",
    _STRUCT: "must be a JSON object",
    _LIST_VALUE: "must be a JSON array",
    _EMPTY: "must be an empty JSON object",
    _ANY: "must be a JSON object with an @type",
}

_WELL_KNOWN_CHECKS: dict[str, Callable[[JsonValue], str]] = {
    _TIMESTAMP: _check_timestamp,
    _DURATION: _check_duration,
    _FIELD_MASK: _check_field_mask,
    _STRUCT: _check_type(dict, _WELL_KNOWN_EXPECTATIONS[_STRUCT]),
    _LIST_VALUE: _check_type(list, _WELL_KNOWN_EXPECTATIONS[_LIST_VALUE]),
    _VALUE: _check_any_value,
    _EMPTY: _check_empty,
    _ANY: _check_any,
}

_PATH_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[[^\]]*\])*)")


def _split_path(proto_path: str) -> list[tuple[str, str]]:
    """`slots[2].start_time` -> [("slots", "[2]"), ("start_time", "")]."""
    segments: list[tuple[str, str]] = []
    for part in proto_path.split("."):
        found = _PATH_SEGMENT.fullmatch(part)
        segments.append((found.group(1), found.group(2)) if found else (part, ""))
    return segments
