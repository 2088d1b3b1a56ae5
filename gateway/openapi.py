"""OpenAPI 3.1 document of the REST surface, generated from the same descriptors.

Every `HttpBinding` becomes an operation: path parameters from the template, query
parameters for every field a query string can set (dotted JSON names for nested fields),
the request body (`body: "*"` or one field), the response (or its `response_body` field)
and problem+json error responses. Message, enum and well-known types become JSON Schemas
(2020-12, as OpenAPI 3.1 uses) under `components/schemas`, keyed by their full protobuf
name, following the canonical JSON mapping the gateway speaks (see `gateway.transcode`):
64-bit integers are strings, `Timestamp` is a `date-time` string, `Duration` a string like
`1.5s`, maps are objects, enums their value names. Leading comments become descriptions;
`google.api.field_behavior` OUTPUT_ONLY/INPUT_ONLY become `readOnly`/`writeOnly`, and fields
marked with medsched's `phi` option carry `x-medsched-phi: true`.

Limits of OpenAPI's path templating: a variable spanning several segments
(`{name=clinics/*/visits/*}`) is described as one parameter with a `pattern`, and the
segments of its value are sent unencoded; templates with unnamed wildcards and custom HTTP
methods outside OpenAPI's fixed set are served but not documented.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

import google.api.field_behavior_pb2 as field_behavior_pb2  # type: ignore[import-untyped, unused-ignore]
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from gateway.descriptors import Api, HttpBinding, bool_option, extension_number
from gateway.problems import PROBLEM_CONTENT_TYPE
from gateway.templates import PathTemplate, SegmentKind

logger = logging.getLogger(__name__)

OPENAPI_VERSION = "3.1.0"
NDJSON_CONTENT_TYPE = "application/x-ndjson"
PHI_OPTION = "medsched.common.v1.phi"
_OPENAPI_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options", "trace"})
_PROBLEM_REF = "#/components/responses/Problem"
_DOCUMENTED_ERRORS = {
    "400": "The request is malformed; `errors` names each bad field or parameter.",
    "401": "No valid bearer token.",
    "403": "The caller may not do this.",
    "404": "No such resource, or not one the caller may see.",
    "409": "The request conflicts with the current state (see `reasons`).",
    "429": "Too many requests; retry after `Retry-After` seconds.",
}
_SPECIAL_FLOATS = ["NaN", "Infinity", "-Infinity"]
_INT32 = {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32 = {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 2**32 - 1}
_INT64 = {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
_UINT64 = {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"}
_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
    FieldDescriptor.TYPE_INT32: _INT32,
    FieldDescriptor.TYPE_SINT32: _INT32,
    FieldDescriptor.TYPE_SFIXED32: _INT32,
    FieldDescriptor.TYPE_UINT32: _UINT32,
    FieldDescriptor.TYPE_FIXED32: _UINT32,
    FieldDescriptor.TYPE_INT64: _INT64,
    FieldDescriptor.TYPE_SINT64: _INT64,
    FieldDescriptor.TYPE_SFIXED64: _INT64,
    FieldDescriptor.TYPE_UINT64: _UINT64,
    FieldDescriptor.TYPE_FIXED64: _UINT64,
    FieldDescriptor.TYPE_DOUBLE: {
        "anyOf": [{"type": "number"}, {"type": "string", "enum": _SPECIAL_FLOATS}],
        "format": "double",
    },
    FieldDescriptor.TYPE_FLOAT: {
        "anyOf": [{"type": "number"}, {"type": "string", "enum": _SPECIAL_FLOATS}],
        "format": "float",
    },
}
_WRAPPED = {
    "google.protobuf.DoubleValue": FieldDescriptor.TYPE_DOUBLE,
    "google.protobuf.FloatValue": FieldDescriptor.TYPE_FLOAT,
    "google.protobuf.Int64Value": FieldDescriptor.TYPE_INT64,
    "google.protobuf.UInt64Value": FieldDescriptor.TYPE_UINT64,
    "google.protobuf.Int32Value": FieldDescriptor.TYPE_INT32,
    "google.protobuf.UInt32Value": FieldDescriptor.TYPE_UINT32,
    "google.protobuf.BoolValue": FieldDescriptor.TYPE_BOOL,
    "google.protobuf.StringValue": FieldDescriptor.TYPE_STRING,
    "google.protobuf.BytesValue": FieldDescriptor.TYPE_BYTES,
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated field paths (JSON names).",
    },
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
    },
}
# Field types a query parameter can carry (see gateway.transcode).
_QUERY_MESSAGE_TYPES = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
) | frozenset(_WRAPPED)


def build_openapi(
    api: Api, *, title: str = "medsched API", version: str = "v1", description: str = ""
) -> dict[str, Any]:
    """The OpenAPI 3.1 document for every binding of `api`."""
    builder = _Builder(api)
    paths: dict[str, dict[str, Any]] = {}
    for binding in api.bindings:
        builder.add_operation(paths, binding)
    paths.update(_public_paths())
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": description
            or "REST/JSON gateway over the medsched gRPC services, generated from their "
            "protobuf contracts. Errors are RFC 9457 problem+json documents.",
        },
        "security": [{"bearerAuth": []}],
        "tags": [
            {"name": _tag(name), "description": api.comments.get(name, "")}
            for name in api.services()
        ],
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": {**dict(sorted(builder.schemas.items())), **_problem_schemas()},
            "responses": {
                "Problem": {
                    "description": "An error (RFC 9457 problem details).",
                    "content": {
                        PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}
                    },
                }
            },
        },
    }


class _Builder:
    """Collects component schemas while operations are described."""

    def __init__(self, api: Api) -> None:
        self._api = api
        self.schemas: dict[str, dict[str, Any]] = {}
        self._phi_number = extension_number(api.pool, PHI_OPTION)

    def add_operation(self, paths: dict[str, dict[str, Any]], binding: HttpBinding) -> None:
        method = binding.http_method.lower()
        path = _openapi_path(binding.template)
        if method not in _OPENAPI_METHODS or path is None:
            logger.info(
                "binding not representable in OpenAPI; served but not documented",
                extra={"method": binding.http_method, "route": binding.template.source},
            )
            return
        operation: dict[str, Any] = {
            "operationId": binding.operation_id,
            "tags": [_tag(binding.service_name)],
            "parameters": [*self._path_parameters(binding), *self._query_parameters(binding)],
            "responses": self._responses(binding),
        }
        summary, details = _split_comment(self._api.comments.get(binding.method.full_name, ""))
        if summary:
            operation["summary"] = summary
        if details:
            operation["description"] = details
        if binding.body:
            operation["requestBody"] = self._request_body(binding)
        if binding.public:
            # Anyone may call; a bearer token, when sent, must be valid and identifies the caller.
            operation["security"] = [{}, {"bearerAuth": []}]
        if not operation["parameters"]:
            del operation["parameters"]
        paths.setdefault(path, {})[method] = operation

    # --- parameters ----------------------------------------------------------------------

    def _path_parameters(self, binding: HttpBinding) -> list[dict[str, Any]]:
        parameters = []
        for variable in binding.template.variables:
            field = _field_at(binding.method.input_type, variable.field_path)
            schema = self._field_schema(field)
            if not variable.is_single_segment:
                schema = {**schema, "pattern": _variable_regex(variable.pattern)}
            parameter: dict[str, Any] = {
                "name": variable.field_path,
                "in": "path",
                "required": True,
                "schema": schema,
            }
            self._describe(parameter, field)
            parameters.append(parameter)
        return parameters

    def _query_parameters(self, binding: HttpBinding) -> list[dict[str, Any]]:
        if binding.body == "*":
            return []
        bound = binding.template.field_paths
        parameters: list[dict[str, Any]] = []
        for name, field in self._query_fields(binding.method.input_type, "", "", set()):
            proto_path, json_path = name
            if any(proto_path == p or proto_path.startswith(p + ".") for p in bound):
                continue
            if proto_path.split(".")[0] == binding.body:
                continue
            parameter: dict[str, Any] = {
                "name": json_path,
                "in": "query",
                "schema": self._field_schema(field),
            }
            if field.is_repeated:
                parameter["explode"] = True
            self._describe(parameter, field)
            parameters.append(parameter)
        return parameters

    def _query_fields(
        self, message: Descriptor, proto_prefix: str, json_prefix: str, seen: set[str]
    ) -> Iterable[tuple[tuple[str, str], FieldDescriptor]]:
        # `seen` stops recursion through self-referencing message types.
        seen = seen | {message.full_name}
        for field in message.fields:
            proto_path = proto_prefix + field.name
            json_path = json_prefix + field.json_name
            if _is_map(field):
                continue
            nested = field.message_type
            if nested is None or nested.full_name in _QUERY_MESSAGE_TYPES:
                yield (proto_path, json_path), field
            elif not field.is_repeated and nested.full_name not in seen:
                if nested.full_name in _WELL_KNOWN:
                    continue
                yield from self._query_fields(nested, proto_path + ".", json_path + ".", seen)

    def _describe(self, target: dict[str, Any], field: FieldDescriptor) -> None:
        comment = self._api.comments.get(field.full_name, "")
        if comment:
            target["description"] = comment

    # --- bodies and responses --------------------------------------------------------------

    def _request_body(self, binding: HttpBinding) -> dict[str, Any]:
        if binding.body == "*":
            schema = self._message_ref(binding.method.input_type)
        else:
            field = binding.method.input_type.fields_by_name[binding.body]
            schema = self._field_schema(field)
        return {"required": False, "content": {"application/json": {"schema": schema}}}

    def _responses(self, binding: HttpBinding) -> dict[str, Any]:
        output = binding.method.output_type
        if binding.response_body:
            schema = self._field_schema(output.fields_by_name[binding.response_body])
        else:
            schema = self._message_ref(output)
        if binding.server_streaming:
            success = {
                "description": "A stream of messages, one JSON document per line; an error "
                'after the first message arrives as a final line `{"error": <problem>}`.',
                "content": {NDJSON_CONTENT_TYPE: {"schema": schema}},
            }
        else:
            success = {"description": "OK", "content": {"application/json": {"schema": schema}}}
        responses: dict[str, Any] = {"200": success}
        for status, text in _DOCUMENTED_ERRORS.items():
            responses[status] = {"$ref": _PROBLEM_REF, "description": text}
        responses["default"] = {"$ref": _PROBLEM_REF}
        return responses

    # --- schemas --------------------------------------------------------------------------

    def _message_ref(self, message: Descriptor) -> dict[str, Any]:
        name = message.full_name
        if name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[name])
        if name in _WRAPPED:
            return dict(_SCALARS[_WRAPPED[name]])
        if name not in self.schemas:
            self.schemas[name] = {}  # placeholder first: recursive types refer to themselves
            self.schemas[name] = self._message_schema(message)
        return {"$ref": f"#/components/schemas/{name}"}

    def _message_schema(self, message: Descriptor) -> dict[str, Any]:
        properties = {}
        for field in message.fields:
            properties[field.json_name] = self._property(field)
        schema: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "additionalProperties": False,
        }
        comment = self._api.comments.get(message.full_name, "")
        if comment:
            schema["description"] = comment
        return schema

    def _property(self, field: FieldDescriptor) -> dict[str, Any]:
        schema = self._field_schema(field)
        annotations: dict[str, Any] = {}
        comment = self._api.comments.get(field.full_name, "")
        behaviors = _field_behaviors(field)
        if "REQUIRED" in behaviors:
            comment = f"{comment}\n\nRequired." if comment else "Required."
        if comment:
            annotations["description"] = comment
        if "OUTPUT_ONLY" in behaviors:
            annotations["readOnly"] = True
        if "INPUT_ONLY" in behaviors:
            annotations["writeOnly"] = True
        if self._is_phi(field):
            annotations["x-medsched-phi"] = True
        # Keywords beside a $ref are allowed in JSON Schema 2020-12 (OpenAPI 3.1).
        return {**schema, **annotations}

    def _field_schema(self, field: FieldDescriptor) -> dict[str, Any]:
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            value = self._single_schema(entry.fields_by_name["value"])
            return {"type": "object", "additionalProperties": value}
        single = self._single_schema(field)
        if field.is_repeated:
            return {"type": "array", "items": single}
        return single

    def _single_schema(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None:
            return self._message_ref(field.message_type)
        if field.enum_type is not None:
            return self._enum_schema(field.enum_type)
        return dict(_SCALARS[field.type])

    def _enum_schema(self, enum: EnumDescriptor) -> dict[str, Any]:
        name = enum.full_name
        if name not in self.schemas:
            lines = [self._api.comments.get(name, "")]
            for value in enum.values:
                text = self._api.comments.get(f"{name}.{value.name}", "")
                lines.append(f"- `{value.name}`" + (f": {text}" if text else ""))
            self.schemas[name] = {
                "type": "string",
                "enum": [value.name for value in enum.values],
                "description": "\n".join(line for line in lines if line),
            }
        return {"$ref": f"#/components/schemas/{name}"}

    def _is_phi(self, field: FieldDescriptor) -> bool:
        if self._phi_number is None:
            return False
        return bool_option(field.GetOptions(), PHI_OPTION, self._phi_number)


def _field_behaviors(field: FieldDescriptor) -> frozenset[str]:
    # The generated stubs type the extension as a plain FieldDescriptor.
    extension: Any = field_behavior_pb2.field_behavior
    values = field.GetOptions().Extensions[extension]
    return frozenset(field_behavior_pb2.FieldBehavior.Name(value) for value in values)


def _field_at(message: Descriptor, dotted: str) -> FieldDescriptor:
    field: FieldDescriptor | None = None
    current: Descriptor | None = message
    for name in dotted.split("."):
        if current is None:
            raise KeyError(dotted)
        field = current.fields_by_name[name]
        current = field.message_type
    if field is None:
        raise KeyError(dotted)
    return field


def _is_map(field: FieldDescriptor) -> bool:
    entry = field.message_type
    return entry is not None and bool(entry.GetOptions().map_entry)


def _openapi_path(template: PathTemplate) -> str | None:
    """`/v1/visits/{visit_id}:archive` style, or None if OpenAPI cannot express it."""
    parts: list[str] = []
    by_start = {variable.start: variable for variable in template.variables}
    index = 0
    while index < len(template.segments):
        variable = by_start.get(index)
        if variable is not None:
            parts.append("{" + variable.field_path + "}")
            index = variable.end
            continue
        segment = template.segments[index]
        if segment.kind is not SegmentKind.LITERAL:
            return None
        parts.append(segment.literal)
        index += 1
    return "/" + "/".join(parts) + (f":{template.verb}" if template.verb else "")


def _variable_regex(pattern: str) -> str:
    pieces = []
    for segment in pattern.split("/"):
        if segment == "**":
            pieces.append(".*")
        elif segment == "*":
            pieces.append("[^/]+")
        else:
            pieces.append(re.escape(segment))
    return "^" + "/".join(pieces) + "$"


def _tag(service_full_name: str) -> str:
    return service_full_name.rsplit(".", 1)[-1]


def _split_comment(comment: str) -> tuple[str, str]:
    if not comment:
        return "", ""
    first, _, rest = comment.partition("\n\n")
    return " ".join(first.split()), rest.strip()


def _public_paths() -> Mapping[str, dict[str, Any]]:
    def plain(summary: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "get": {
                "summary": summary,
                "security": [],
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"application/json": {"schema": schema}},
                    },
                    "default": {"$ref": _PROBLEM_REF},
                },
            }
        }

    status = {
        "type": "object",
        "properties": {"status": {"type": "string"}},
        "required": ["status"],
    }
    return {
        "/healthz": plain("Liveness: the gateway process answers.", status),
        "/readyz": plain("Readiness: every backend service reports SERVING.", status),
    }


def _problem_schemas() -> dict[str, dict[str, Any]]:
    return {
        "Problem": {
            "type": "object",
            "description": "RFC 9457 problem details.",
            "properties": {
                "type": {"type": "string", "format": "uri"},
                "title": {"type": "string"},
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "detail": {"type": "string"},
                "request_id": {"type": "string"},
                "errors": {"type": "array", "items": {"$ref": "#/components/schemas/FieldError"}},
                "reasons": {"type": "array", "items": {"$ref": "#/components/schemas/Reason"}},
                "details": {"type": "array", "items": {"$ref": "#/components/schemas/Detail"}},
            },
            "required": ["type", "title", "status", "detail", "request_id"],
        },
        "FieldError": {
            "type": "object",
            "properties": {
                "field": {"type": "string", "description": "JSON path or parameter name."},
                "in": {"type": "string", "enum": ["path", "query", "body"]},
                "description": {"type": "string"},
            },
            "required": ["field", "in", "description"],
        },
        "Detail": {
            "type": "object",
            "description": "A status detail the contracts define, as the canonical JSON of a "
            "`google.protobuf.Any`: `@type` is `type.googleapis.com/<message full name>` and "
            "the other members are that message's fields in the canonical JSON mapping, e.g. "
            "`medsched.booking.v1.BookingRefusal` with every reason a time cannot be booked.",
            "properties": {"@type": {"type": "string"}},
            "required": ["@type"],
        },
        "Reason": {
            "type": "object",
            "properties": {
                "code": {"type": "string"},
                "subject": {"type": "string"},
                "description": {"type": "string"},
                "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "required": ["code"],
        },
    }
