"""The gateway over HTTPS against a real gRPC server: JSON in and out, errors, auth, limits."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from common.auth import Role
from common.grpc_server import ServerHandle
from deploy.certs import DevPki
from gateway.descriptors import Api
from gateway.dev_issuer import dev_principal
from tests.integration.gateway.harness import RunningGateway, start_gateway
from tests.integration.gateway.visit_servicer import LEAKY_TEXT, VisitServicer
from tests.unit.gateway.testproto import VISIT_SERVICE

PROBLEM = "application/problem+json"


async def call(
    gateway: RunningGateway,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: Any = None,
    raw: bytes | None = None,
    content_type: str = "application/json",
) -> tuple[int, CIMultiDict[str], Any]:
    """(status, headers, parsed JSON body) of one request with the patient's token."""
    sent = dict(gateway.auth()) if headers is None else headers
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if data is not None:
        sent.setdefault("Content-Type", content_type)
    async with gateway.session.request(
        method, gateway.url + path, headers=sent, data=data, ssl=gateway.client_context()
    ) as response:
        text = await response.text()
        parsed = json.loads(text) if text else None
        return response.status, response.headers.copy(), parsed


def assert_problem(status: int, headers: CIMultiDict[str], body: Any, expected: int) -> None:
    assert status == expected
    assert headers["Content-Type"].startswith(PROBLEM)
    assert body["status"] == expected
    assert body["request_id"] == headers["X-Request-Id"]
    assert body["type"].startswith("urn:medsched:problem:")


# --- JSON in and out ----------------------------------------------------------------------


async def test_get_returns_canonical_json_and_forwards_principal(gateway: RunningGateway) -> None:
    status, headers, body = await call(gateway, "GET", "/v1/visits/v-9")

    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert body["visitId"] == "v-9"
    assert body["startTime"] == "2025-02-03T14:15:00Z"
    assert body["bigNumber"] == str(2**40)
    assert body["state"] == "SCHEDULED"
    assert body["urgent"] is False  # default values are printed
    assert body["tags"][0] == "patient:pat-1:pat-1"
    assert body["tags"][1] == f"request:{headers['X-Request-Id']}"


async def test_client_set_medsched_headers_never_reach_the_service(
    gateway: RunningGateway,
) -> None:
    headers = {
        **gateway.auth(),
        "X-Medsched-Principal": "forged.value",
        "X-Medsched-Role": "admin",
    }

    status, _, body = await call(gateway, "GET", "/v1/visits/v-1", headers=headers)

    assert status == 200
    assert body["tags"][0] == "patient:pat-1:pat-1"
    assert body["tags"][2:] == ["x-medsched-principal"]  # only the gateway's own, signed


async def test_client_request_id_is_kept_when_well_formed(gateway: RunningGateway) -> None:
    headers = {**gateway.auth(), "X-Request-Id": "client-req-0001"}

    _, response_headers, body = await call(gateway, "GET", "/v1/visits/v-1", headers=headers)

    assert response_headers["X-Request-Id"] == "client-req-0001"
    assert body["tags"][1] == "request:client-req-0001"


async def test_query_parameters_become_request_fields(gateway: RunningGateway) -> None:
    status, _, body = await call(
        gateway,
        "GET",
        "/v1/visits?specialty=cardiology&from=2025-02-01&limit=20&clinicIds=a&clinic_ids=b"
        "&state=CANCELLED&room.floor=3&after=2025-02-01T09:00:00Z",
    )

    assert status == 200
    assert body["visits"][0]["extra"] == {
        "specialty": "cardiology",
        "from_date": "2025-02-01",
        "limit": 20,
        "clinic_ids": ["a", "b"],
        "state": "CANCELLED",
        "room": {"floor": 3},
        "after": "2025-02-01T09:00:00Z",
    }


async def test_post_with_field_body_and_path(gateway: RunningGateway) -> None:
    status, _, body = await call(
        gateway,
        "POST",
        "/v1/clinics/c-7/visits?requestId=r-1",
        body={"startTime": "2025-03-01T10:00:00Z", "tags": ["x"], "length": "900s"},
    )

    assert status == 200
    assert body["visitId"] == "v-new"
    assert body["clinicId"] == "c-7"
    assert body["length"] == "900s"


async def test_whole_body_post_with_path_variable(gateway: RunningGateway) -> None:
    status, _, body = await call(
        gateway, "POST", "/v1/visits/v-3/cancel", body={"reason": "feeling better"}
    )

    assert status == 200
    assert body["visitId"] == "v-3"
    assert body["state"] == "CANCELLED"
    assert body["tags"] == ["feeling better"]


async def test_response_body_field_is_the_whole_response(gateway: RunningGateway) -> None:
    status, _, body = await call(gateway, "GET", "/v1/visits/v-3/notes")

    assert status == 200
    assert body == ["a", "b"]


async def test_additional_binding_with_resource_name(gateway: RunningGateway) -> None:
    status, _, body = await call(gateway, "GET", "/v1/clinics/c1/visits/v2")

    assert status == 200
    assert body["visitId"] == "clinics/c1/visits/v2"


# --- errors as problem+json ---------------------------------------------------------------


async def test_unknown_query_parameter_is_a_400_naming_it(gateway: RunningGateway) -> None:
    status, headers, body = await call(gateway, "GET", "/v1/visits?speciality=cardiology")

    assert_problem(status, headers, body, 400)
    assert body["errors"] == [
        {"field": "speciality", "in": "query", "description": "unknown query parameter"}
    ]


async def test_malformed_json_is_a_400(gateway: RunningGateway) -> None:
    status, headers, body = await call(gateway, "POST", "/v1/visits/v-1/cancel", raw=b'{"reason": ')

    assert_problem(status, headers, body, 400)
    assert body["errors"] == [
        {"field": "", "in": "body", "description": "the body is not valid JSON"}
    ]


async def test_service_field_violations_are_listed_with_client_paths(
    gateway: RunningGateway,
) -> None:
    status, headers, body = await call(gateway, "POST", "/v1/clinics/c-1/visits", body={})

    assert_problem(status, headers, body, 400)
    assert body["errors"] == [
        {"field": "startTime", "in": "body", "description": "is required"},
        {"field": "requestId", "in": "query", "description": "must be a UUID"},
    ]


async def test_not_found_is_a_404_with_the_service_message(gateway: RunningGateway) -> None:
    status, headers, body = await call(gateway, "GET", "/v1/visits/missing")

    assert_problem(status, headers, body, 404)
    assert body["detail"] == "visit not found"
    assert body["title"] == "Not found"


async def test_failed_precondition_is_a_409_with_reasons(gateway: RunningGateway) -> None:
    status, headers, body = await call(gateway, "POST", "/v1/visits/cancelled/cancel", body={})

    assert_problem(status, headers, body, 409)
    assert body["detail"] == "the visit is already cancelled"
    assert body["reasons"] == [
        {
            "code": "ALREADY_CANCELLED",
            "subject": "visits/cancelled",
            "description": "cancelled earlier",
        }
    ]


async def test_internal_error_text_never_reaches_the_client(gateway: RunningGateway) -> None:
    status, headers, body = await call(gateway, "GET", "/v1/visits/boom")

    assert_problem(status, headers, body, 500)
    text = json.dumps(body)
    assert "SELECT" not in text
    assert "078-05-1120" not in text
    assert LEAKY_TEXT not in text
    assert "Traceback" not in text
    assert body["detail"].startswith("internal error (error id ")


async def test_unknown_route_is_404_and_wrong_method_is_405(gateway: RunningGateway) -> None:
    status, headers, body = await call(gateway, "GET", "/v1/nothing-here")
    assert_problem(status, headers, body, 404)

    status, headers, body = await call(gateway, "PUT", "/v1/visits/v-1", body={})
    assert_problem(status, headers, body, 405)
    assert headers["Allow"] == "DELETE, GET, PATCH"


async def test_oversized_body_is_a_413(gateway: RunningGateway) -> None:
    status, headers, body = await call(
        gateway, "POST", "/v1/visits/v-1/cancel", body={"reason": "x" * 70_000}
    )

    assert_problem(status, headers, body, 413)


async def test_non_json_body_is_a_415(gateway: RunningGateway) -> None:
    status, headers, body = await call(
        gateway, "POST", "/v1/visits/v-1/cancel", raw=b"reason=x", content_type="text/plain"
    )

    assert_problem(status, headers, body, 415)


async def test_slow_service_is_a_504(
    gwtest_api: Api,
    visit_backend: ServerHandle,
    visit_servicer: VisitServicer,
    pki: DevPki,
    redis_url: str,
    tmp_path: Path,
) -> None:
    gateway = await start_gateway(
        gwtest_api,
        {"gwtest": visit_backend.address},
        pki=pki,
        redis_url=redis_url,
        work_dir=tmp_path,
        backend_timeout_s=0.3,
    )
    try:
        status, headers, body = await call(gateway, "GET", "/v1/visits/slow")
    finally:
        await gateway.close()

    assert visit_servicer.slow_started.is_set()
    assert_problem(status, headers, body, 504)
    assert body["detail"] == "the service did not answer in time"


async def test_unreachable_service_is_a_503_without_addresses(
    gwtest_api: Api, pki: DevPki, redis_url: str, tmp_path: Path
) -> None:
    gateway = await start_gateway(
        gwtest_api, {"gwtest": "127.0.0.1:9"}, pki=pki, redis_url=redis_url, work_dir=tmp_path
    )
    try:
        status, headers, body = await call(gateway, "GET", "/v1/visits/v-1")
    finally:
        await gateway.close()

    assert_problem(status, headers, body, 503)
    assert body["detail"] == "the service is not reachable; retry later"
    assert "127.0.0.1" not in json.dumps(body)


async def test_service_refusing_the_gateways_signature_is_a_502(
    gwtest_api: Api, visit_backend: ServerHandle, pki: DevPki, redis_url: str, tmp_path: Path
) -> None:
    gateway = await start_gateway(
        gwtest_api,
        {"gwtest": visit_backend.address},
        pki=pki,
        redis_url=redis_url,
        work_dir=tmp_path,
        signer_key=bytes(32),
    )
    try:
        status, headers, body = await call(gateway, "GET", "/v1/visits/v-1")
    finally:
        await gateway.close()

    assert_problem(status, headers, body, 502)


# --- streaming ----------------------------------------------------------------------------


async def ndjson(gateway: RunningGateway, path: str) -> tuple[int, str, list[Any]]:
    async with gateway.session.get(
        gateway.url + path, headers=gateway.auth(), ssl=gateway.client_context()
    ) as response:
        text = await response.text()
        lines = [json.loads(line) for line in text.splitlines() if line]
        return response.status, response.headers["Content-Type"], lines


async def test_server_stream_is_newline_delimited_json(gateway: RunningGateway) -> None:
    status, content_type, lines = await ndjson(gateway, "/v1/visits:watch?clinicId=c-1&count=3")

    assert status == 200
    assert content_type.startswith("application/x-ndjson")
    assert [line["visitId"] for line in lines] == ["v-0", "v-1", "v-2"]


async def test_stream_error_after_first_message_ends_with_an_error_line(
    gateway: RunningGateway,
) -> None:
    status, _, lines = await ndjson(gateway, "/v1/visits:watch?clinicId=flaky&count=5")

    assert status == 200
    assert [line.get("visitId") for line in lines[:2]] == ["v-0", "v-1"]
    assert lines[2]["error"]["status"] == 503
    assert lines[2]["error"]["detail"] == "the clinic feed was interrupted"
    assert len(lines) == 3


async def test_stream_error_before_first_message_is_a_problem(gateway: RunningGateway) -> None:
    status, headers, body = await call(gateway, "GET", "/v1/visits:watch?clinicId=closed&count=2")

    assert_problem(status, headers, body, 404)


# --- authentication -----------------------------------------------------------------------


async def test_missing_token_is_a_401_with_a_bearer_challenge(gateway: RunningGateway) -> None:
    status, headers, body = await call(gateway, "GET", "/v1/visits/v-1", headers={})

    assert_problem(status, headers, body, 401)
    assert headers["WWW-Authenticate"] == 'Bearer realm="medsched"'


async def test_expired_token_is_a_401_invalid_token(gateway: RunningGateway) -> None:
    token = gateway.issuer.mint(
        dev_principal(Role.PATIENT, "pat-1"),
        now=datetime.now(UTC) - timedelta(hours=2),
        ttl=timedelta(minutes=5),
    )

    status, headers, body = await call(
        gateway, "GET", "/v1/visits/v-1", headers={"Authorization": f"Bearer {token}"}
    )

    assert_problem(status, headers, body, 401)
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]
    assert body["detail"] == "invalid bearer token: token expired"


async def test_basic_auth_is_refused(gateway: RunningGateway) -> None:
    status, headers, body = await call(
        gateway, "GET", "/v1/visits/v-1", headers={"Authorization": "Basic dXNlcjpwYXNz"}
    )

    assert_problem(status, headers, body, 401)


async def test_staff_scopes_reach_the_service(gateway: RunningGateway) -> None:
    headers = gateway.auth(Role.STAFF, "nurse-3", organization_ids=["org-1"])

    status, _, body = await call(gateway, "GET", "/v1/visits/v-1", headers=headers)

    assert status == 200
    assert body["tags"][0] == "staff:nurse-3:"


# --- limits, CORS, public endpoints, TLS ---------------------------------------------------


async def test_rate_limit_is_per_principal_with_retry_after(
    gwtest_api: Api, visit_backend: ServerHandle, pki: DevPki, redis_url: str, tmp_path: Path
) -> None:
    gateway = await start_gateway(
        gwtest_api,
        {"gwtest": visit_backend.address},
        pki=pki,
        redis_url=redis_url,
        work_dir=tmp_path,
        rate_limit=3,
    )
    subject = f"pat-rate-{time.time_ns()}"
    try:
        first = [
            (await call(gateway, "GET", "/v1/visits/v-1", headers=gateway.auth(subject=subject)))[0]
            for _ in range(3)
        ]
        status, headers, body = await call(
            gateway, "GET", "/v1/visits/v-1", headers=gateway.auth(subject=subject)
        )
        other, _, _ = await call(
            gateway, "GET", "/v1/visits/v-1", headers=gateway.auth(subject=subject + "-other")
        )
    finally:
        await gateway.close()

    assert first == [200, 200, 200]
    assert_problem(status, headers, body, 429)
    assert 1 <= int(headers["Retry-After"]) <= 120
    assert other == 200


async def test_cors_preflight_and_response_headers(gateway: RunningGateway) -> None:
    origin = "https://app.example.test"
    async with gateway.session.options(
        gateway.url + "/v1/visits/v-1",
        headers={"Origin": origin, "Access-Control-Request-Method": "GET"},
        ssl=gateway.client_context(),
    ) as preflight:
        assert preflight.status == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == origin
        assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]

    status, headers, _ = await call(
        gateway, "GET", "/v1/visits/missing", headers={**gateway.auth(), "Origin": origin}
    )
    assert status == 404
    assert headers["Access-Control-Allow-Origin"] == origin
    assert "X-Request-Id" in headers["Access-Control-Expose-Headers"]

    async with gateway.session.get(
        gateway.url + "/v1/visits:watch?clinicId=c-1&count=1",
        headers={**gateway.auth(), "Origin": origin},
        ssl=gateway.client_context(),
    ) as stream:
        assert stream.status == 200
        assert stream.headers["Access-Control-Allow-Origin"] == origin

    _, headers, _ = await call(
        gateway, "GET", "/v1/visits/v-1", headers={**gateway.auth(), "Origin": "https://evil.test"}
    )
    assert "Access-Control-Allow-Origin" not in headers


async def test_health_readiness_and_documents_are_public(
    gateway: RunningGateway, visit_backend: ServerHandle
) -> None:
    status, _, body = await call(gateway, "GET", "/healthz", headers={})
    assert (status, body) == (200, {"status": "ok"})

    status, _, body = await call(gateway, "GET", "/readyz", headers={})
    assert (status, body) == (200, {"status": "ready"})

    status, _, body = await call(gateway, "GET", "/openapi.json", headers={})
    assert status == 200
    assert body["openapi"] == "3.1.0"
    assert "/v1/visits/{visit_id}/cancel" in body["paths"]

    status, _, body = await call(gateway, "GET", "/.well-known/jwks.json", headers={})
    assert status == 200
    assert body["keys"][0]["kid"] == gateway.issuer.key_id

    await visit_backend.set_not_serving()
    status, headers, body = await call(gateway, "GET", "/readyz", headers={})
    assert_problem(status, headers, body, 503)
    assert body["reasons"] == [{"code": "NOT_SERVING", "subject": VISIT_SERVICE}]


async def test_tls_1_2_client_is_refused_and_tls_1_3_accepted(gateway: RunningGateway) -> None:
    old = gateway.client_context(maximum=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(aiohttp.ClientConnectorError):
        async with gateway.session.get(gateway.url + "/healthz", ssl=old):
            pass

    modern = gateway.client_context()
    modern.minimum_version = ssl.TLSVersion.TLSv1_3
    async with gateway.session.get(gateway.url + "/healthz", ssl=modern) as response:
        assert response.status == 200
    _, writer = await asyncio.open_connection("127.0.0.1", gateway.port, ssl=modern)
    try:
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.3"
    finally:
        writer.close()
        await writer.wait_closed()


async def test_access_log_names_the_route_template_never_the_query(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="gateway.app")

    status, headers, _ = await call(
        gateway, "GET", "/v1/visits?specialty=Jane%20Doe%201980-04-02&limit=1"
    )

    records = [r for r in caplog.records if r.getMessage() == "http request"]
    assert status == 200
    assert len(records) == 1
    record = records[0]
    assert record.__dict__["route"] == "/v1/visits"
    assert record.__dict__["method"] == "GET"
    assert record.__dict__["status"] == 200
    assert record.__dict__["request_id"] == headers["X-Request-Id"]
    assert record.__dict__["duration_ms"] >= 0
    assert "Jane" not in str(record.__dict__)
    assert "1980" not in str(record.__dict__)
