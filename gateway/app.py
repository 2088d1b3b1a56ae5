"""The aiohttp application: routing, authentication, limits, CORS, calls, problems, logs.

Per API request, in order: request id, CORS, route lookup (404/405), bearer token (401),
rate limit (429, per principal; per client address for anonymous callers), body read with
the size limit (413) and media type check (415),
transcoding (400), the gRPC call with a deadline and the signed principal, the JSON
response. Every failure becomes problem+json (`gateway.problems`).

What reaches a service: the request message, `x-medsched-principal` (signed by the gateway)
and `x-request-id`. No client header is forwarded, so a client-sent `x-medsched-*` header
cannot reach a service.

Anonymous callers: a request without an `Authorization` header reaches exactly the methods
the contract marks `(medsched.common.v1.public) = true` (the services let anonymous calls
through to the same methods, read from the same option), and is forwarded without a
principal. Any other method answers 401. A request that sends a token has it verified
whatever the method, so a signed-in caller is always identified (and limited) as itself.

Public endpoints (no token): `/healthz` (the process answers), `/readyz` (every backend
service reports SERVING), `/openapi.json`, and in development mode
`/.well-known/jwks.json` (the development issuer's public key).

Server-streaming methods answer `application/x-ndjson`: one JSON document per line; an
error before the first message is an ordinary problem response, an error after it ends the
stream with a line `{"error": <problem>}` (the status line was already sent).

Access log: one line per request with method, route template (never the concrete path or
the query string, which may carry PHI), status, duration and request id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import grpc.aio
from aiohttp import web
from aiohttp.typedefs import Middleware
from google.protobuf.message import Message

from common.auth import PRINCIPAL_METADATA_KEY, Principal, PrincipalSigner
from common.errors import DependencyUnavailable
from common.grpc_client import status_details
from gateway import problems
from gateway.auth import InvalidToken, TokenVerifier
from gateway.backends import Backends
from gateway.descriptors import Api, HttpBinding
from gateway.problems import PROBLEM_CONTENT_TYPE, Problem, ProblemField
from gateway.ratelimit import RateLimiter
from gateway.router import Router
from gateway.transcode import RequestError, Transcoder

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_METADATA_KEY = "x-request-id"
NDJSON_CONTENT_TYPE = "application/x-ndjson"
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,128}")
_JSON_TYPES = re.compile(r"application/(?:[a-z0-9.+-]+\+)?json")
_READINESS_TIMEOUT_S = 1.0
# Headers a browser may send cross-origin, and response headers its scripts may read.
_CORS_ALLOW_HEADERS = "Authorization, Content-Type, X-Request-Id"
_CORS_EXPOSE_HEADERS = "X-Request-Id, Retry-After, WWW-Authenticate"
_CORS_MAX_AGE_S = "600"

_REQUEST_ID = web.RequestKey("request_id", str)
_ROUTE = web.RequestKey("route", str)
_CORS_ORIGIN = web.RequestKey("cors_origin", str)


class ProblemResponse(Exception):
    """Raised anywhere in a handler to answer with `problem`."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.detail)
        self.problem = problem


@dataclass(frozen=True)
class GatewayParts:
    """The runtime objects the application uses; built by `gateway.main` (or tests)."""

    api: Api
    backends: Backends
    verifier: TokenVerifier
    signer: PrincipalSigner
    limiter: RateLimiter | None
    openapi: Mapping[str, Any]
    backend_timeout_s: float
    max_body_bytes: int
    cors_origins: tuple[str, ...] = ()
    dev_jwks: Mapping[str, Any] | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)


def create_app(parts: GatewayParts) -> web.Application:
    """The application; routes only the bindings whose service `parts.backends` serves."""
    served = parts.api.restricted_to(parts.backends.services)
    handler = _ApiHandler(parts, served)
    app = web.Application(
        # CORS outermost, so its headers reach every response, problems included.
        middlewares=[_cors_middleware(parts.cors_origins), _problems_and_access_log],
        client_max_size=parts.max_body_bytes,
    )
    openapi_body = json.dumps(parts.openapi, separators=(",", ":")).encode()
    app.router.add_get("/healthz", _healthz, allow_head=False)
    app.router.add_get("/readyz", handler.readyz, allow_head=False)
    app.router.add_get("/openapi.json", _static_json(openapi_body), allow_head=False)
    if parts.dev_jwks is not None:
        jwks_body = json.dumps(parts.dev_jwks).encode()
        app.router.add_get("/.well-known/jwks.json", _static_json(jwks_body), allow_head=False)
    app.router.add_route("*", "/{tail:.*}", handler.handle)
    app.on_response_prepare.append(_final_headers)
    return app


async def _final_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Headers every response gets just before it is sent, streams and problems included."""
    # Name no framework or version (nothing to fingerprint).
    response.headers["Server"] = "medsched-gateway"
    origin = request.get(_CORS_ORIGIN)
    if origin is not None:
        # Credentials are bearer tokens in a header, never cookies: no Allow-Credentials.
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        if response.status != 204:
            response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE_HEADERS


# --- middlewares -----------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _problems_and_access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, problem rendering for every failure, and the access log line."""
    started = time.perf_counter()
    request_id = _request_id(request)
    request[_REQUEST_ID] = request_id
    request[_ROUTE] = request.path if request.path in _FIXED_ROUTES else "unmatched"
    response: web.StreamResponse
    try:
        response = await handler(request)
    except ProblemResponse as e:
        response = problem_response(e.problem, request_id)
    except web.HTTPException as e:
        response = problem_response(_problem_for_http_exception(e), request_id)
    except Exception:
        error_id = uuid.uuid4().hex
        logger.exception(
            "unhandled error in the gateway",
            extra={"request_id": request_id, "error_id": error_id},
        )
        response = problem_response(
            Problem(problems.INTERNAL, f"internal error (error id {error_id})"), request_id
        )
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = request_id
    logger.info(
        "http request",
        extra={
            "method": request.method,
            "route": request[_ROUTE],
            "status": response.status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            "request_id": request_id,
        },
    )
    return response


_FIXED_ROUTES = frozenset({"/healthz", "/readyz", "/openapi.json", "/.well-known/jwks.json"})


def _request_id(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    # A well-formed client id is kept so a client can correlate; anything else is replaced,
    # which also keeps arbitrary text out of the logs.
    return given if _CLIENT_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def _cors_middleware(origins: tuple[str, ...]) -> Middleware:
    """Answers preflights of allowed origins; `_final_headers` adds the response headers."""
    allow_any = "*" in origins
    allowed = frozenset(origins)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or not (allow_any or origin in allowed):
            return await handler(request)
        request[_CORS_ORIGIN] = origin
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            preflight = web.Response(status=204)
            preflight.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE"
            preflight.headers["Access-Control-Allow-Headers"] = _CORS_ALLOW_HEADERS
            preflight.headers["Access-Control-Max-Age"] = _CORS_MAX_AGE_S
            return preflight
        return await handler(request)

    return cors


# --- public endpoints ------------------------------------------------------------------------


async def _healthz(request: web.Request) -> web.Response:
    del request
    return web.json_response({"status": "ok"})


def _static_json(body: bytes) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def serve(request: web.Request) -> web.Response:
        del request
        return web.Response(body=body, content_type="application/json")

    return serve


# --- the API ---------------------------------------------------------------------------------


class _ApiHandler:
    """Transcodes one REST request into one gRPC call."""

    def __init__(self, parts: GatewayParts, api: Api) -> None:
        self._parts = parts
        self._router = Router(api.bindings)
        self._transcoder = Transcoder(api.pool)

    async def readyz(self, request: web.Request) -> web.Response:
        del request
        states = await self._parts.backends.readiness(_READINESS_TIMEOUT_S)
        not_ready = sorted(name for name, serving in states.items() if not serving)
        if not_ready:
            raise ProblemResponse(
                Problem(
                    problems.UNAVAILABLE,
                    "not every backend service is ready",
                    reasons=tuple({"code": "NOT_SERVING", "subject": name} for name in not_ready),
                )
            )
        return web.json_response({"status": "ready"})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw_path = request.rel_url.raw_path
        match = self._router.match(request.method, raw_path)
        if match is None:
            raise ProblemResponse(self._no_route(request.method, raw_path))
        binding = match.binding
        request[_ROUTE] = binding.template.source
        principal = await self._authenticate(request, binding)
        await self._check_rate(request, principal)
        body = await self._read_body(request)
        try:
            message = self._transcoder.build_request(
                binding, match.params, list(request.query.items()), body
            )
        except RequestError as e:
            raise ProblemResponse(_bad_request(e)) from e
        metadata: tuple[tuple[str, str], ...] = ((REQUEST_ID_METADATA_KEY, request[_REQUEST_ID]),)
        if principal is not None:
            signed = self._parts.signer.sign(principal, now=self._parts.clock())
            metadata = ((PRINCIPAL_METADATA_KEY, signed), *metadata)
        if binding.server_streaming:
            return await self._stream(request, binding, message, metadata)
        try:
            reply = await self._parts.backends.unary(binding)(
                message, timeout=self._parts.backend_timeout_s, metadata=metadata
            )
        except grpc.aio.AioRpcError as e:
            raise ProblemResponse(self._rpc_problem(binding, e)) from e
        return _json_response(self._transcoder.response_json(binding, reply))

    def _no_route(self, method: str, raw_path: str) -> Problem:
        allowed = self._router.allowed_methods(raw_path)
        if allowed:
            return Problem(
                problems.METHOD_NOT_ALLOWED,
                f"{method} is not allowed here; use {', '.join(allowed)}",
                headers={"Allow": ", ".join(allowed)},
            )
        return Problem(problems.NOT_FOUND, "no API operation has this path")

    async def _authenticate(self, request: web.Request, binding: HttpBinding) -> Principal | None:
        """The verified caller; None for an anonymous call of a public method."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if not header and binding.public:
            return None
        if not header:
            raise ProblemResponse(
                Problem(
                    problems.UNAUTHENTICATED,
                    "a bearer token is required",
                    headers={"WWW-Authenticate": 'Bearer realm="medsched"'},
                )
            )
        try:
            if scheme.lower() != "bearer":
                raise InvalidToken("the Authorization header must use the Bearer scheme")
            return await self._parts.verifier.verify(token.strip())
        except InvalidToken as e:
            raise ProblemResponse(
                Problem(
                    problems.UNAUTHENTICATED,
                    e.message,
                    headers={
                        "WWW-Authenticate": 'Bearer realm="medsched", error="invalid_token", '
                        f'error_description="{e.reason}"'
                    },
                )
            ) from e
        except DependencyUnavailable as e:
            raise ProblemResponse(Problem(problems.UNAVAILABLE, e.message)) from e

    async def _check_rate(self, request: web.Request, principal: Principal | None) -> None:
        if self._parts.limiter is None:
            return
        if principal is None:
            decision = await self._parts.limiter.check_anonymous(request.remote or "unknown")
        else:
            decision = await self._parts.limiter.check(principal)
        if not decision.allowed:
            raise ProblemResponse(
                Problem(
                    problems.TOO_MANY_REQUESTS,
                    "rate limit exceeded; retry later",
                    headers={"Retry-After": str(decision.retry_after_s)},
                )
            )

    async def _read_body(self, request: web.Request) -> bytes:
        if not request.body_exists:
            return b""
        body = await request.read()
        if body.strip() and not _JSON_TYPES.fullmatch(request.content_type):
            raise ProblemResponse(
                Problem(problems.UNSUPPORTED_MEDIA_TYPE, "request bodies must be application/json")
            )
        return body

    async def _stream(
        self,
        request: web.Request,
        binding: HttpBinding,
        message: Message,
        metadata: tuple[tuple[str, str], ...],
    ) -> web.StreamResponse:
        call = self._parts.backends.server_streaming(binding)(
            message, timeout=self._parts.backend_timeout_s, metadata=metadata
        )
        try:
            iterator = call.__aiter__()
            try:
                first: Message | None = await iterator.__anext__()
            except StopAsyncIteration:
                first = None
            except grpc.aio.AioRpcError as e:
                raise ProblemResponse(self._rpc_problem(binding, e)) from e
            response = web.StreamResponse(headers={"Content-Type": NDJSON_CONTENT_TYPE})
            response.headers[REQUEST_ID_HEADER] = request[_REQUEST_ID]
            await response.prepare(request)
            # A client that goes away ends the stream; `finally` cancels the call.
            with contextlib.suppress(ConnectionResetError):
                await self._write_stream(request, response, binding, first, iterator)
            return response
        finally:
            call.cancel()

    async def _write_stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        binding: HttpBinding,
        first: Message | None,
        rest: AsyncIterator[Message],
    ) -> None:
        if first is not None:
            await response.write(self._line(binding, first))
            try:
                async for item in rest:
                    await response.write(self._line(binding, item))
            except grpc.aio.AioRpcError as e:
                problem = self._rpc_problem(binding, e)
                error = {"error": problem.body(request[_REQUEST_ID])}
                await response.write(json.dumps(error).encode() + b"\n")
        await response.write_eof()

    def _line(self, binding: HttpBinding, message: Message) -> bytes:
        value = self._transcoder.response_json(binding, message)
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"

    def _rpc_problem(self, binding: HttpBinding, error: grpc.aio.AioRpcError) -> Problem:
        problem = problems.problem_from_rpc_error(
            error,
            status_details(error),
            lambda path: self._transcoder.client_field_path(binding, path),
            self._transcoder.detail_json,
        )
        if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INTERNAL):
            logger.error(
                "backend call failed",
                extra={"method": binding.grpc_path, "code": error.code().name},
            )
        return problem


async def start_site(
    app: web.Application, listen: str, ssl_context: ssl.SSLContext | None, grace_s: float
) -> tuple[web.AppRunner, int]:
    """Serve `app` on `listen` (`host:port`, port 0: any free port); returns the bound port.

    `runner.cleanup()` stops accepting connections and gives in-flight requests `grace_s`.
    """
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=grace_s)
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]"), int(port), ssl_context=ssl_context)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])


def problem_response(problem: Problem, request_id: str) -> web.Response:
    """The HTTP response for `problem`."""
    response = web.Response(
        status=problem.status,
        body=json.dumps(problem.body(request_id), ensure_ascii=False).encode(),
        content_type=PROBLEM_CONTENT_TYPE,
    )
    for name, value in problem.headers.items():
        response.headers[name] = value
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


def _json_response(value: Any) -> web.Response:
    return web.Response(
        body=json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode(),
        content_type="application/json",
    )


def _bad_request(error: RequestError) -> Problem:
    fields = tuple(ProblemField(v.field, v.location, v.description) for v in error.violations)
    detail = "the request has invalid fields" if len(fields) != 1 else "the request is invalid"
    return Problem(problems.BAD_REQUEST, detail, errors=fields)


_HTTP_EXCEPTION_KINDS = {
    400: problems.BAD_REQUEST,
    404: problems.NOT_FOUND,
    405: problems.METHOD_NOT_ALLOWED,
    413: problems.PAYLOAD_TOO_LARGE,
    415: problems.UNSUPPORTED_MEDIA_TYPE,
}


def _problem_for_http_exception(error: web.HTTPException) -> Problem:
    kind = _HTTP_EXCEPTION_KINDS.get(error.status)
    if kind is None:
        kind = problems.INTERNAL if error.status >= 500 else problems.BAD_REQUEST
    if kind is problems.PAYLOAD_TOO_LARGE:
        return Problem(kind, "the request body is larger than this gateway accepts")
    return Problem(kind, kind.title)
