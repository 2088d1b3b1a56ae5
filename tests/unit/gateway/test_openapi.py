"""Unit tests for the OpenAPI 3.1 document generated from the descriptors."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from gateway.config import packaged_descriptor_set
from gateway.descriptors import Api, load_api_file
from gateway.openapi import build_openapi
from gateway.transcode import Transcoder

VISIT = "#/components/schemas/medsched.gwtest.v1.Visit"


@pytest.fixture(scope="module")
def document(gwtest_api: Api) -> dict[str, Any]:
    return build_openapi(gwtest_api)


@pytest.fixture(scope="module")
def medsched_document() -> dict[str, Any]:
    return build_openapi(load_api_file(packaged_descriptor_set()))


def parameters(document: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    return {p["name"]: p for p in document["paths"][path][method].get("parameters", [])}


def schema_validator(document: dict[str, Any], ref: str) -> Any:
    return OAS31Validator({"$ref": ref, "components": document["components"]})


def test_test_contract_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"] == "3.1.0"


def test_medsched_document_is_valid_openapi_3_1(medsched_document: dict[str, Any]) -> None:
    validate(medsched_document)


def test_brief_paths_are_documented(medsched_document: dict[str, Any]) -> None:
    paths = medsched_document["paths"]

    assert "get" in paths["/v1/availability"]
    assert "post" in paths["/v1/appointments"]
    assert "post" in paths["/v1/appointments/{appointment_id}/cancel"]
    assert "post" in paths["/v1/waitlist"]
    search = parameters(medsched_document, "/v1/availability", "get")
    assert {"specialty", "location", "radius", "insurance", "from", "to", "limit"} <= set(search)
    assert "pageToken" in search


def test_every_path_template_style_is_expressed(document: dict[str, Any]) -> None:
    paths = document["paths"]

    assert "post" in paths["/v1/visits/{visit_id}:archive"]
    assert "post" in paths["/v1/visits/{visit_id}/cancel"]
    assert "patch" in paths["/v1/visits/{visit.visit_id}"]
    name = parameters(document, "/v1/{name}", "get")["name"]
    assert name["schema"]["pattern"] == "^clinics/[^/]+/visits/[^/]+$"
    assert parameters(document, "/v1/files/{path}", "get")["path"]["schema"]["pattern"] == "^.*$"


def test_operation_ids_are_unique_and_additional_bindings_numbered(
    document: dict[str, Any],
) -> None:
    ids = [
        operation["operationId"]
        for item in document["paths"].values()
        for operation in item.values()
        if "operationId" in operation
    ]

    assert len(ids) == len(set(ids))
    assert {"VisitService_GetVisit", "VisitService_GetVisit_1"} <= set(ids)


def test_query_parameters_cover_settable_fields_only(document: dict[str, Any]) -> None:
    found = parameters(document, "/v1/visits", "get")

    assert {"from", "limit", "clinicIds", "state", "after", "room.roomId", "room.floor"} <= set(
        found
    )
    assert "rooms" not in found  # repeated message
    assert "room" not in found  # set through its fields
    assert found["clinicIds"]["schema"] == {"type": "array", "items": {"type": "string"}}
    assert found["after"]["schema"] == {"type": "string", "format": "date-time"}
    assert found["bigNumber"]["schema"]["pattern"] == "^-?[0-9]+$"
    assert found["from"]["description"] == "First date, named `from` in JSON."


def test_path_bound_and_body_fields_are_not_query_parameters(document: dict[str, Any]) -> None:
    update = parameters(document, "/v1/visits/{visit.visit_id}", "patch")
    assert set(update) == {"visit.visit_id", "updateMask"}
    assert update["visit.visit_id"]["in"] == "path"
    assert set(parameters(document, "/v1/visits/{visit_id}/cancel", "post")) == {"visit_id"}


def test_request_bodies_follow_the_body_rule(document: dict[str, Any]) -> None:
    create = document["paths"]["/v1/clinics/{clinic_id}/visits"]["post"]
    cancel = document["paths"]["/v1/visits/{visit_id}/cancel"]["post"]

    assert create["requestBody"]["content"]["application/json"]["schema"] == {"$ref": VISIT}
    assert cancel["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/medsched.gwtest.v1.CancelVisitRequest"
    }
    assert "requestBody" not in document["paths"]["/v1/visits/{visit_id}"]["get"]


def test_responses_follow_response_body_and_streaming(document: dict[str, Any]) -> None:
    notes = document["paths"]["/v1/visits/{visit_id}/notes"]["get"]["responses"]["200"]
    watch = document["paths"]["/v1/visits:watch"]["get"]["responses"]["200"]

    assert notes["content"]["application/json"]["schema"] == {
        "type": "array",
        "items": {"type": "string"},
    }
    assert watch["content"]["application/x-ndjson"]["schema"] == {"$ref": VISIT}


def test_errors_are_problem_json(document: dict[str, Any]) -> None:
    responses = document["paths"]["/v1/visits"]["get"]["responses"]

    for status in ("400", "401", "403", "404", "409", "429", "default"):
        assert responses[status]["$ref"] == "#/components/responses/Problem"
    problem = document["components"]["responses"]["Problem"]["content"]
    assert "application/problem+json" in problem
    assert document["components"]["schemas"]["Problem"]["required"] == [
        "type",
        "title",
        "status",
        "detail",
        "request_id",
    ]


def test_message_schema_follows_the_canonical_json_mapping(document: dict[str, Any]) -> None:
    visit = document["components"]["schemas"]["medsched.gwtest.v1.Visit"]
    props = visit["properties"]

    assert visit["description"] == "A visit."
    assert visit["additionalProperties"] is False
    assert props["visitId"]["readOnly"] is True
    assert props["secret"]["writeOnly"] is True
    assert props["clinicId"]["description"] == "The clinic.\n\nRequired."
    assert props["bigNumber"]["type"] == "string"
    assert props["startTime"]["format"] == "date-time"
    assert props["length"]["pattern"] == "^-?[0-9]+(\\.[0-9]{1,9})?s$"
    assert props["counters"]["additionalProperties"]["format"] == "int32"
    assert props["roomsByKind"]["additionalProperties"] == {
        "$ref": "#/components/schemas/medsched.gwtest.v1.Room"
    }
    assert props["capacity"]["format"] == "int32"
    assert props["extra"]["type"] == "object"
    assert props["blob"]["contentEncoding"] == "base64"
    assert props["state"]["$ref"] == "#/components/schemas/medsched.gwtest.v1.VisitState"
    state = document["components"]["schemas"]["medsched.gwtest.v1.VisitState"]
    assert state["enum"] == ["VISIT_STATE_UNSPECIFIED", "SCHEDULED", "CANCELLED"]
    assert "- `SCHEDULED`: Booked and upcoming." in state["description"]


def test_rendered_responses_validate_against_their_schema(
    gwtest_api: Api, document: dict[str, Any]
) -> None:
    binding = next(b for b in gwtest_api.bindings if b.method.name == "GetVisit")
    visit = gwtest_api.message_class(binding.method.output_type)()
    json_format.ParseDict(
        {
            "visitId": "v1",
            "clinicId": "c1",
            "state": "SCHEDULED",
            "startTime": "2025-03-01T10:00:00.250Z",
            "length": "1.5s",
            "tags": ["a"],
            "counters": {"x": 3},
            "bigNumber": "-12",
            "blob": "AAEC",
            "room": {"roomId": "r", "floor": 2},
            "priority": 0,
            "capacity": 7,
            "extra": {"k": [1, None]},
            "phone": "0",
            "rooms": [{"floor": 1}],
            "score": "NaN",
            "roomsByKind": {"exam": {"roomId": "e"}},
        },
        visit,
    )
    rendered = Transcoder(gwtest_api.pool).response_json(binding, visit)

    errors = list(schema_validator(document, VISIT).iter_errors(rendered))

    assert errors == []
    assert not schema_validator(document, VISIT).is_valid({**rendered, "unknownField": 1})


def test_phi_fields_are_marked(medsched_document: dict[str, Any]) -> None:
    schemas = medsched_document["components"]["schemas"]

    assert schemas["medsched.common.v1.PersonName"]["properties"]["givenName"]["x-medsched-phi"]
    book = schemas["medsched.booking.v1.BookAppointmentRequest"]["properties"]
    assert book["visitReason"]["x-medsched-phi"] is True
    assert "x-medsched-phi" not in book["patientId"]


def test_public_endpoints_need_no_token(document: dict[str, Any]) -> None:
    assert document["paths"]["/healthz"]["get"]["security"] == []
    assert document["paths"]["/readyz"]["get"]["security"] == []
    assert document["security"] == [{"bearerAuth": []}]
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_phi_marks_survive_the_generated_modules_being_imported() -> None:
    # Importing them registers the option in the default pool, which changes how the
    # options of the private pool's fields are parsed (extension instead of unknown field).
    import medsched.common.v1.types_pb2  # noqa: F401

    document = build_openapi(load_api_file(packaged_descriptor_set()))

    name = document["components"]["schemas"]["medsched.common.v1.PersonName"]["properties"]
    assert name["givenName"]["x-medsched-phi"] is True
