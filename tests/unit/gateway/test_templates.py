"""Unit tests for `google.api.http` path templates: parsing, matching and specificity."""

from __future__ import annotations

import re

import pytest

from gateway.templates import SegmentKind, TemplateError, parse_template


def test_simple_variable_binds_one_segment() -> None:
    template = parse_template("/v1/appointments/{appointment_id}/cancel")

    assert template.match("/v1/appointments/a-17/cancel") == {"appointment_id": "a-17"}
    assert template.match("/v1/appointments/a-17") is None
    assert template.match("/v1/appointments/a/b/cancel") is None
    assert template.match("/v1/appointments//cancel") is None


def test_literal_only_template_matches_exactly() -> None:
    template = parse_template("/v1/availability")

    assert template.match("/v1/availability") == {}
    assert template.match("/v1/availability/") is None
    assert template.match("/v1/availabilityx") is None
    assert template.match("v1/availability") is None


def test_single_segment_value_is_fully_percent_decoded() -> None:
    template = parse_template("/v1/visits/{visit_id}")

    assert template.match("/v1/visits/a%20b%2Fc") == {"visit_id": "a b/c"}


def test_variable_with_segments_binds_the_resource_name() -> None:
    template = parse_template("/v1/{name=organizations/*/locations/*}")

    assert template.match("/v1/organizations/o1/locations/l2") == {
        "name": "organizations/o1/locations/l2"
    }
    assert template.match("/v1/organizations/o1/providers/l2") is None
    assert template.match("/v1/organizations/o1/locations") is None


def test_multi_segment_value_keeps_encoded_slashes_encoded() -> None:
    template = parse_template("/v1/files/{path=**}")

    assert template.match("/v1/files/a/b%2Fc/d%20e") == {"path": "a/b%2Fc/d e"}
    assert template.match("/v1/files/") == {"path": ""}
    assert template.match("/v1/files") == {"path": ""}
    assert template.match("/v1/files/a//b") is None


def test_verb_must_be_present_and_is_not_part_of_the_value() -> None:
    template = parse_template("/v1/visits/{visit_id}:archive")

    assert template.match("/v1/visits/v1:archive") == {"visit_id": "v1"}
    assert template.match("/v1/visits/v1") is None
    assert template.match("/v1/visits/v1:cancel") is None


def test_nested_field_paths_are_bound() -> None:
    template = parse_template("/v1/visits/{visit.visit_id}")

    assert template.match("/v1/visits/9") == {"visit.visit_id": "9"}
    assert template.field_paths == frozenset({"visit.visit_id"})


def test_wildcards_without_variables_match_but_bind_nothing() -> None:
    template = parse_template("/v1/*/things/**")

    assert template.match("/v1/x/things/a/b") == {}
    assert template.match("/v1/x/other/a") is None


def test_segments_record_their_kind() -> None:
    template = parse_template("/v1/{name=clinics/*}/visits/**")

    assert [s.kind for s in template.segments] == [
        SegmentKind.LITERAL,
        SegmentKind.LITERAL,
        SegmentKind.SINGLE,
        SegmentKind.LITERAL,
        SegmentKind.MULTI,
    ]
    assert template.variables[0].pattern == "clinics/*"


def test_literal_templates_sort_before_variables_at_the_same_position() -> None:
    by_variable = parse_template("/v1/visits/{visit_id}")
    by_literal = parse_template("/v1/visits:watch")
    with_verb = parse_template("/v1/visits/{visit_id}:archive")
    deep = parse_template("/v1/visits/{path=**}")

    ordered = sorted([deep, by_variable, with_verb, by_literal], key=lambda t: t.specificity)

    assert ordered == [by_literal, with_verb, by_variable, deep]


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("v1/visits", "expected '/'"),
        ("/v1/{visit_id", "expected '}'"),
        ("/v1/{}", "expected a field name"),
        ("/v1/{a={b}}", "variables cannot be nested"),
        ("/v1/**/x", "'**' must be the last segment"),
        ("/v1/{a}/{a}", "bound twice"),
        ("/v1/visits?x=1", "unexpected character"),
        ("/v1//visits", "expected a literal segment"),
    ],
)
def test_malformed_templates_are_refused_with_the_reason(source: str, reason: str) -> None:
    with pytest.raises(TemplateError, match=re.escape(reason)):
        parse_template(source)
