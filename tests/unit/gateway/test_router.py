"""Unit tests for choosing the binding of a request."""

from __future__ import annotations

import pytest

from gateway.descriptors import Api, ApiError, HttpBinding
from gateway.router import Router


def method_of(router: Router, http_method: str, path: str) -> str | None:
    found = router.match(http_method, path)
    return None if found is None else f"{found.binding.method.name}#{found.binding.index}"


def test_most_specific_binding_wins(gwtest_api: Api) -> None:
    router = Router(gwtest_api.bindings)

    assert method_of(router, "GET", "/v1/visits:watch") == "WatchVisits#0"
    assert method_of(router, "GET", "/v1/visits/v1") == "GetVisit#0"
    assert method_of(router, "GET", "/v1/visits/v1/notes") == "GetVisitNotes#0"
    assert method_of(router, "GET", "/v1/clinics/c/visits/v") == "GetVisit#1"
    assert method_of(router, "POST", "/v1/visits/v1:archive") == "ArchiveVisit#0"
    assert method_of(router, "POST", "/v1/visits/v1/cancel") == "CancelVisit#0"
    assert method_of(router, "GET", "/v1/files/a/b/c") == "GetFile#0"


def test_path_variables_come_with_the_match(gwtest_api: Api) -> None:
    found = Router(gwtest_api.bindings).match("POST", "/v1/visits/v%2F1/cancel")

    assert found is not None
    assert found.params == {"visit_id": "v/1"}


def test_no_match_and_allowed_methods(gwtest_api: Api) -> None:
    router = Router(gwtest_api.bindings)

    assert router.match("PUT", "/v1/visits/v1") is None
    assert router.allowed_methods("/v1/visits/v1") == ["DELETE", "GET", "PATCH"]
    assert router.allowed_methods("/v2/anything") == []


def test_unannotated_methods_are_not_routed(gwtest_api: Api) -> None:
    assert all(b.method.name != "Internal" for b in gwtest_api.bindings)


def test_two_rpcs_on_the_same_method_and_path_are_refused(gwtest_api: Api) -> None:
    get_visit = next(b for b in gwtest_api.bindings if b.method.name == "GetVisit")
    notes = next(b for b in gwtest_api.bindings if b.method.name == "GetVisitNotes")
    clash = HttpBinding(notes.method, "GET", get_visit.template, "", "", 0)

    with pytest.raises(ApiError, match="bound to both"):
        Router([get_visit, clash])
