"""Unit tests for building request messages from HTTP parts and rendering responses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.message import Message

from gateway.descriptors import Api, HttpBinding
from gateway.transcode import RequestError, RequestViolation, Transcoder


def binding(api: Api, method: str, index: int = 0) -> HttpBinding:
    for candidate in api.bindings:
        if candidate.method.name == method and candidate.index == index:
            return candidate
    raise AssertionError(f"no binding {method}#{index}")


def build(
    api: Api,
    method: str,
    *,
    path: dict[str, str] | None = None,
    query: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    index: int = 0,
) -> dict[str, Any]:
    message = Transcoder(api.pool).build_request(
        binding(api, method, index), path or {}, query or [], body
    )
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def violations(
    api: Api,
    method: str,
    *,
    path: dict[str, str] | None = None,
    query: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> list[RequestViolation]:
    with pytest.raises(RequestError) as caught:
        Transcoder(api.pool).build_request(binding(api, method), path or {}, query or [], body)
    return list(caught.value.violations)


def test_query_parameters_fill_scalar_fields_by_proto_or_json_name(gwtest_api: Api) -> None:
    request = build(
        gwtest_api,
        "SearchVisits",
        query=[
            ("specialty", "cardiology"),
            ("from", "2025-02-01"),
            ("limit", "20"),
            ("urgent", "true"),
            ("bigNumber", "9007199254740993"),
            ("score", "2.5"),
        ],
    )

    assert request == {
        "specialty": "cardiology",
        "from_date": "2025-02-01",
        "limit": 20,
        "urgent": True,
        "big_number": "9007199254740993",
        "score": 2.5,
    }


def test_repeated_parameters_and_enums_by_name_or_number(gwtest_api: Api) -> None:
    request = build(
        gwtest_api,
        "SearchVisits",
        query=[
            ("clinic_ids", "c1"),
            ("clinicIds", "c2"),
            ("state", "CANCELLED"),
            ("states", "SCHEDULED"),
            ("states", "2"),
        ],
    )

    assert request == {
        "clinic_ids": ["c1", "c2"],
        "state": "CANCELLED",
        "states": ["SCHEDULED", "CANCELLED"],
    }


def test_nested_and_well_known_parameters(gwtest_api: Api) -> None:
    request = build(
        gwtest_api,
        "SearchVisits",
        query=[
            ("room.floor", "3"),
            ("room.roomId", "r-9"),
            ("after", "2025-02-01T09:30:00-05:00"),
            ("min_length", "1.5s"),
            ("capacity", "4"),
            ("fields", "specialty,room.floor"),
            ("priority", "0"),
            ("blob", "AAEC"),
        ],
    )

    assert request == {
        "room": {"floor": 3, "room_id": "r-9"},
        "after": "2025-02-01T14:30:00Z",
        "min_length": "1.500s",
        "capacity": 4,
        "fields": "specialty,room.floor",
        "priority": 0,
        "blob": "AAEC",
    }


def test_unknown_query_parameter_is_named(gwtest_api: Api) -> None:
    found = violations(gwtest_api, "SearchVisits", query=[("speciality", "x")])

    assert found == [RequestViolation("speciality", "unknown query parameter", "query")]


@pytest.mark.parametrize(
    ("name", "value", "description"),
    [
        ("limit", "twenty", "must be an integer from -2147483648 to 2147483647"),
        ("limit", "99999999999", "must be an integer from -2147483648 to 2147483647"),
        ("urgent", "yes", "must be true or false"),
        ("state", "DONE", "must be one of SCHEDULED, CANCELLED"),
        ("state", "7", "must be one of SCHEDULED, CANCELLED"),
        ("after", "2025-13-45", "must be an RFC 3339 timestamp such as 2025-02-01T09:30:00Z"),
        ("min_length", "5 minutes", "must be a duration in seconds such as 90s or 1.5s"),
        ("score", "1e999", "must be a number"),
        ("blob", "not base64!", "must be base64-encoded bytes"),
        ("room", "r1", "is an object: set its fields as separate parameters (name.field=...)"),
        ("rooms", "r1", "is a list of objects, which a query parameter cannot set"),
        ("room.nothing", "1", "unknown query parameter"),
    ],
)
def test_bad_query_values_are_refused_without_echoing_them(
    gwtest_api: Api, name: str, value: str, description: str
) -> None:
    found = violations(gwtest_api, "SearchVisits", query=[(name, value)])

    assert found == [RequestViolation(name, description, "query")]
    assert value not in found[0].description


def test_singular_parameter_given_twice_is_refused(gwtest_api: Api) -> None:
    found = violations(gwtest_api, "SearchVisits", query=[("limit", "1"), ("limit", "2")])

    assert found == [RequestViolation("limit", "is given more than once", "query")]


def test_every_bad_parameter_is_reported_at_once(gwtest_api: Api) -> None:
    found = violations(
        gwtest_api, "SearchVisits", query=[("limit", "x"), ("nope", "1"), ("urgent", "2")]
    )

    assert sorted(v.field for v in found) == ["limit", "nope", "urgent"]


def test_path_variables_fill_fields_and_cannot_be_overridden_by_query(gwtest_api: Api) -> None:
    assert build(gwtest_api, "GetVisit", path={"visit_id": "v-1"}) == {"visit_id": "v-1"}

    found = violations(gwtest_api, "GetVisit", path={"visit_id": "v-1"}, query=[("visitId", "v-2")])

    assert found == [RequestViolation("visitId", "is set by the URL path", "query")]


def test_whole_body_binding_merges_path_over_body(gwtest_api: Api) -> None:
    request = build(
        gwtest_api,
        "CancelVisit",
        path={"visit_id": "v-1"},
        body=b'{"visitId": "v-other", "reason": "sick"}',
    )

    assert request == {"visit_id": "v-1", "reason": "sick"}


def test_whole_body_binding_takes_no_query_parameters(gwtest_api: Api) -> None:
    found = violations(gwtest_api, "CancelVisit", path={"visit_id": "v-1"}, query=[("reason", "x")])

    assert found[0].field == "reason"
    assert found[0].location == "query"


def test_empty_body_counts_as_an_empty_object(gwtest_api: Api) -> None:
    assert build(gwtest_api, "CancelVisit", path={"visit_id": "v-1"}) == {"visit_id": "v-1"}


def test_field_body_binding_puts_the_body_in_that_field(gwtest_api: Api) -> None:
    request = build(
        gwtest_api,
        "CreateVisit",
        path={"clinic_id": "c-1"},
        query=[("request_id", "idem-1")],
        body=json.dumps(
            {
                "clinicId": "c-1",
                "startTime": "2025-03-01T10:00:00Z",
                "length": "900s",
                "tags": ["a", "b"],
                "counters": {"x": 1},
                "room": {"roomId": "r1", "floor": 2},
                "roomsByKind": {"exam": {"floor": 1}},
                "extra": {"any": [1, "two", None]},
                "email": "nobody@example.invalid",
                "priority": 0,
                "state": "SCHEDULED",
            }
        ).encode(),
    )

    assert request["clinic_id"] == "c-1"
    assert request["request_id"] == "idem-1"
    assert request["visit"]["start_time"] == "2025-03-01T10:00:00Z"
    assert request["visit"]["length"] == "900s"
    assert request["visit"]["rooms_by_kind"] == {"exam": {"floor": 1}}
    assert request["visit"]["extra"] == {"any": [1, "two", None]}
    assert request["visit"]["priority"] == 0


def test_query_parameter_cannot_set_a_body_field(gwtest_api: Api) -> None:
    found = violations(
        gwtest_api,
        "CreateVisit",
        path={"clinic_id": "c-1"},
        query=[("visit.tags", "a")],
        body=b"{}",
    )

    description = "is part of the request body, not a query parameter"
    assert found == [RequestViolation("visit.tags", description, "query")]


def test_nested_path_variable_lands_inside_the_body_field(gwtest_api: Api) -> None:
    request = build(
        gwtest_api,
        "UpdateVisit",
        path={"visit.visit_id": "v-7"},
        query=[("updateMask", "tags,room.floor")],
        body=b'{"tags": ["x"], "visitId": "ignored"}',
    )

    assert request == {
        "visit": {"visit_id": "v-7", "tags": ["x"]},
        "update_mask": "tags,room.floor",
    }


def test_malformed_json_is_refused(gwtest_api: Api) -> None:
    found = violations(gwtest_api, "CancelVisit", path={"visit_id": "v"}, body=b'{"reason": ')

    assert found == [RequestViolation("", "the body is not valid JSON", "body")]


def test_body_that_is_not_an_object_is_refused(gwtest_api: Api) -> None:
    found = violations(gwtest_api, "CancelVisit", path={"visit_id": "v"}, body=b"[1, 2]")

    assert found == [RequestViolation("", "the body must be a JSON object", "body")]


def test_body_on_a_method_without_one_is_refused(gwtest_api: Api) -> None:
    found = violations(gwtest_api, "GetVisit", path={"visit_id": "v"}, body=b'{"a": 1}')

    assert found == [RequestViolation("", "this method takes no request body", "body")]


def test_body_errors_name_the_json_path_relative_to_the_body(gwtest_api: Api) -> None:
    found = violations(
        gwtest_api,
        "CreateVisit",
        path={"clinic_id": "c-1"},
        body=json.dumps(
            {
                "startTime": "yesterday",
                "tags": ["ok", 3],
                "room": {"floor": "high"},
                "bogus": 1,
                "email": "a@b.invalid",
                "phone": "555",
                "counters": {"k": "many"},
                "state": "LATE",
            }
        ).encode(),
    )

    assert sorted((v.field, v.description, v.location) for v in found) == sorted(
        [
            ("startTime", "must be an RFC 3339 timestamp such as 2025-02-01T09:30:00Z", "body"),
            ("tags[1]", "must be a string", "body"),
            ("room.floor", "must be an integer from -2147483648 to 2147483647", "body"),
            ("bogus", "unknown field", "body"),
            ("phone", "only one of the 'contact' fields may be set (email is already)", "body"),
            ("counters.k", "must be an integer from -2147483648 to 2147483647", "body"),
            ("state", "must be one of SCHEDULED, CANCELLED", "body"),
        ]
    )


def test_same_field_under_both_names_is_refused(gwtest_api: Api) -> None:
    found = violations(
        gwtest_api,
        "CreateVisit",
        path={"clinic_id": "c"},
        body=b'{"clinicId": "a", "clinic_id": "b"}',
    )
    assert found == [RequestViolation("clinicId", "is given twice", "body")]


def test_multi_segment_path_variable_binds_resource_name(gwtest_api: Api) -> None:
    request = build(gwtest_api, "GetVisit", index=1, path={"name": "clinics/c1/visits/v2"})

    assert request == {"name": "clinics/c1/visits/v2"}


def render(api: Api, method: str, message: Message) -> Any:
    return Transcoder(api.pool).response_json(binding(api, method), message)


def test_response_uses_json_names_and_prints_default_values(gwtest_api: Api) -> None:
    b = binding(gwtest_api, "GetVisit")
    visit = api_message(gwtest_api, b.method.output_type.full_name)
    json_format.ParseDict(
        {"visitId": "v1", "startTime": "2025-03-01T10:00:00Z", "bigNumber": "12"}, visit
    )

    rendered = render(gwtest_api, "GetVisit", visit)

    assert rendered["visitId"] == "v1"
    assert rendered["startTime"] == "2025-03-01T10:00:00Z"
    assert rendered["bigNumber"] == "12"
    assert rendered["state"] == "VISIT_STATE_UNSPECIFIED"
    assert rendered["tags"] == []
    assert rendered["urgent"] is False
    assert "priority" not in rendered  # explicit presence, unset
    assert "room" not in rendered  # unset message


def test_response_body_renders_only_that_field(gwtest_api: Api) -> None:
    b = binding(gwtest_api, "GetVisitNotes")
    notes = api_message(gwtest_api, b.method.output_type.full_name)
    json_format.ParseDict({"visitId": "v1", "lines": ["a", "b"]}, notes)

    assert render(gwtest_api, "GetVisitNotes", notes) == ["a", "b"]


def api_message(api: Api, full_name: str) -> Message:
    return api.message_class(api.pool.FindMessageTypeByName(full_name))()


@pytest.mark.parametrize(
    ("method", "proto_path", "expected"),
    [
        ("CreateVisit", "visit.start_time", ("startTime", "body")),
        ("CreateVisit", "visit.rooms[2].room_id", ("rooms[2].roomId", "body")),
        ("CreateVisit", "request_id", ("requestId", "query")),
        ("CreateVisit", "clinic_id", ("clinicId", "path")),
        ("SearchVisits", "from_date", ("from", "query")),
        ("SearchVisits", "from", ("from", "query")),
        ("SearchVisits", "room.unknown_thing", ("room.unknown_thing", "query")),
        ("CancelVisit", "reason", ("reason", "body")),
    ],
)
def test_service_field_paths_become_client_paths(
    gwtest_api: Api, method: str, proto_path: str, expected: tuple[str, str]
) -> None:
    transcoder = Transcoder(gwtest_api.pool)

    assert transcoder.client_field_path(binding(gwtest_api, method), proto_path) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"extra": ' + b'{"a": ' * 5_000 + b"1" + b"}" * 5_000 + b"}",
    ],
)
def test_absurdly_nested_bodies_are_refused(gwtest_api: Api, body: bytes) -> None:
    found = violations(gwtest_api, "CreateVisit", path={"clinic_id": "c"}, body=body)

    assert found == [RequestViolation("", "the body is nested too deeply", "body")]
