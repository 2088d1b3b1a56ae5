"""The one gRPC server bootstrap (`grpc.aio`): TLS, health, reflection, call pipeline, drain.

A service's `main.py` does::

    handle = await create_server(service_name="booking", listen=settings.grpc_listen,
                                 tls=settings.tls, servicers=[...], principal_verifier=signer)
    await handle.start()
    ...open pools, JetStream...
    await handle.set_serving()
    await serve(handle, grace_s=settings.shutdown_grace_s)

Every call passes these steps, outermost first. They are not gRPC interceptors: each
method's handler is wrapped once when the services are registered (`_CallPipeline`), which
costs a call far less than interceptors did (see `_CallPipeline`).

1. OpenTelemetry tracing: a server span per call (named by the method, with the attributes
   OpenTelemetry's gRPC instrumentation records), continuing the caller's trace from the
   metadata; health and reflection calls are not traced;
2. metrics: `on_rpc(method, code, seconds)` once per finished call;
3. deadline check: calls arriving with less than `min_deadline_s` left (default 5 ms, see
   `DEFAULT_MIN_DEADLINE_S`) are refused with DEADLINE_EXCEEDED before any work, and the
   deadline is kept for outbound calls (`common.grpc_client` shrinks their timeouts to it);
4. authentication: the signed `x-medsched-principal` metadata, or else an mTLS peer
   certificate naming a medsched service (`svc-<name>`), becomes `current_principal()`;
   methods not declared public refuse anonymous calls with UNAUTHENTICATED;
5. error mapping: `common.errors.MedschedError` becomes its status code with `google.rpc`
   details in the `grpc-status-details-bin` trailer; NotImplementedError (generated base
   servicers) becomes UNIMPLEMENTED; anything else becomes INTERNAL with a generic message
   and an error id that is also logged, with the exception type and code location only.

Streaming handlers may be async generators or write-style coroutines (`context.write`); the
pipeline keeps whichever kind it is given.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import signal
import time
import traceback
import uuid
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn, Protocol, TypeVar
from urllib.parse import unquote

# googleapis-common-protos ships .pyi files without a py.typed marker: with mypy's
# `follow_untyped_imports` for google.rpc.* they type-check, without it they are Any.
import google.rpc.error_details_pb2 as error_details_pb2  # type: ignore[import-untyped, unused-ignore]
import google.rpc.status_pb2 as status_pb2  # type: ignore[import-untyped, unused-ignore]
import grpc
import grpc.aio
from google.protobuf import any_pb2, descriptor_pool
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry import trace as otel_trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import Span, Status, StatusCode, TracerProvider

from common.auth import PRINCIPAL_METADATA_KEY, InvalidPrincipal, Principal, Role
from common.errors import (
    FailedPrecondition,
    InvalidArgument,
    MedschedError,
    NotFound,
    Reason,
    Unauthenticated,
)
from common.settings import SERVICES, TlsFiles
from common.tls import grpc_server_credentials
from medsched.common.v1 import options_pb2

logger = logging.getLogger(__name__)

T = TypeVar("T")

STATUS_DETAILS_KEY = "grpc-status-details-bin"
ERROR_DOMAIN = "medsched"
# A call arriving with less time left than this cannot get through our own call overhead
# (about 0.2-0.5 ms per Python gRPC call here), one database round trip and the reply
# before its caller gives up: starting it would only take capacity from calls that can
# still succeed. Services with slower dependencies pass a larger `min_deadline_s`.
DEFAULT_MIN_DEADLINE_S = 0.005
SERVICE_CERT_PREFIX = "svc-"
# Only the services' own certificates; the gateway forwards signed principals instead.
_SERVICE_PEERS = frozenset(f"{SERVICE_CERT_PREFIX}{s}" for s in SERVICES if s != "gateway")
_ALWAYS_PUBLIC_SERVICES = (health.SERVICE_NAME, reflection.SERVICE_NAME)
_ALWAYS_PUBLIC_PREFIXES = tuple(f"/{s}/" for s in _ALWAYS_PUBLIC_SERVICES)
# Our clients ping every 30 s (common.grpc_client); accept pings at that rate without
# answering with GOAWAY "too_many_pings", including on idle connections.
_KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
)

RpcObserver = Callable[[str, grpc.StatusCode, float], None]
Clock = Callable[[], datetime]

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "medsched_principal", default=None
)
_credential: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "medsched_principal_credential", default=None
)
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "medsched_deadline", default=None
)


def current_principal() -> Principal | None:
    """Who made the gRPC call being handled (None outside a call or for anonymous calls)."""
    return _principal.get()


def current_principal_credential() -> str | None:
    """The signed principal metadata of the call being handled, for forwarding downstream."""
    return _credential.get()


def current_deadline() -> float | None:
    """When the call being handled expires, on the `time.monotonic()` clock; None if never."""
    return _deadline.get()


class _HealthState(Protocol):
    """What we use of `grpc_health.v1.health.aio.HealthServicer`."""

    async def set(
        self, service: str, status: health_pb2.HealthCheckResponse.ServingStatus
    ) -> None: ...

    async def enter_graceful_shutdown(self) -> None: ...


class PrincipalVerifier(Protocol):
    """Checks forwarded principal metadata (`common.auth.PrincipalSigner` is one)."""

    def verify(self, value: str, *, now: datetime) -> Principal: ...


@dataclass(frozen=True)
class Registration:
    """One gRPC service to serve: its full name, how to add it, and its anonymous methods.

    `public_methods` are short method names (e.g. `SearchAvailability`) callable without a
    principal; every other method requires one.
    """

    service_name: str
    register: Callable[[grpc.aio.Server], None]
    public_methods: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(
        cls,
        add_to_server: Callable[[T, grpc.aio.Server], None],
        servicer: T,
        service_name: str,
        *,
        public_methods: Iterable[str] = (),
    ) -> Registration:
        """From generated code: `Registration.of(add_XServicer_to_server, servicer, name)`."""
        return cls(
            service_name=service_name,
            register=functools.partial(add_to_server, servicer),
            public_methods=frozenset(public_methods),
        )

    @classmethod
    def generic(
        cls,
        handler: grpc.GenericRpcHandler[Any, Any],
        service_name: str,
        *,
        public_methods: Iterable[str] = (),
    ) -> Registration:
        """From a generic handler (e.g. `grpc.method_handlers_generic_handler`)."""
        return cls(
            service_name=service_name,
            register=lambda server: server.add_generic_rpc_handlers((handler,)),
            public_methods=frozenset(public_methods),
        )

    def full_public_methods(self) -> frozenset[str]:
        # Plus the methods the contract marks public: the proto option is the one declaration.
        names = self.public_methods | contract_public_methods(self.service_name)
        return frozenset(f"/{self.service_name}/{name}" for name in names)


def contract_public_methods(service_name: str) -> frozenset[str]:
    """Short names of the service's methods marked `(medsched.common.v1.public) = true`."""
    try:
        service = descriptor_pool.Default().FindServiceByName(service_name)
    except KeyError:
        return frozenset()  # not a generated contract (e.g. a test's generic service)
    option = options_pb2.public
    return frozenset(m.name for m in service.methods if m.GetOptions().Extensions[option])


@dataclass
class ServerHandle:
    """A created (bound, maybe not yet started) server and its health state."""

    service_name: str
    server: grpc.aio.Server
    host: str
    port: int
    health: _HealthState
    health_names: tuple[str, ...]
    tls: bool
    _started: bool = False
    _stop_requests: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    @property
    def address(self) -> str:
        """`host:port` with the port actually bound (useful when asked for port 0)."""
        return f"{self.host}:{self.port}"

    async def start(self) -> None:
        """Start answering calls; health stays NOT_SERVING until `set_serving()`."""
        if not self._started:
            await self.server.start()
            self._started = True
            logger.info(
                "gRPC server %s listening on %s (%s)",
                self.service_name,
                self.address,
                "TLS" if self.tls else "plaintext",
            )

    async def set_serving(self) -> None:
        """Declare the process ready (dependencies up): health answers SERVING."""
        await self._set_all(health_pb2.HealthCheckResponse.SERVING)

    async def set_not_serving(self) -> None:
        """Declare the process not ready (e.g. lost its database) without stopping it."""
        await self._set_all(health_pb2.HealthCheckResponse.NOT_SERVING)

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask a running `serve()` to drain and stop (signal handlers call this too)."""
        self._stop_requests.put_nowait(reason)

    async def _next_stop_request(self) -> str:
        return await self._stop_requests.get()

    async def stop(self, grace_s: float) -> None:
        """Health to NOT_SERVING for good, refuse new calls, give in-flight ones `grace_s`."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        logger.info("gRPC server %s stopped", self.service_name)

    async def _set_all(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in self.health_names:
            await self.health.set(name, status)


async def create_server(
    *,
    service_name: str,
    listen: str,
    tls: TlsFiles | None,
    servicers: Sequence[Registration],
    principal_verifier: PrincipalVerifier | None,
    on_rpc: RpcObserver | None = None,
    tracer_provider: TracerProvider | None = None,
    min_deadline_s: float = DEFAULT_MIN_DEADLINE_S,
    clock: Clock | None = None,
    max_concurrent_rpcs: int | None = None,
    reuse_port: bool = False,
) -> ServerHandle:
    """Build the server, bind `listen` (port 0: a free port) and report where it listens.

    `tls` None serves plaintext, which is for development and tests only (logged as a
    warning). `principal_verifier` None means signed principals cannot be checked, so only
    mTLS service peers and public methods get through. `reuse_port` lets several processes
    share one port (SO_REUSEPORT, the kernel spreads connections over them); gRPC turns it
    on by default, but then a second stack started on a taken port would silently split
    traffic with the first instead of failing, so here it is off unless asked for.
    """
    public = frozenset().union(*(r.full_public_methods() for r in servicers))
    server = grpc.aio.server(
        options=(*_KEEPALIVE_OPTIONS, ("grpc.so_reuseport", int(reuse_port))),
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    # Every handler is added through the registrar, which runs it through the pipeline.
    registrar = _Registrar(
        server,
        _CallPipeline(
            on_rpc=on_rpc,
            tracer_provider=tracer_provider,
            min_deadline_s=min_deadline_s,
            authenticator=_Authenticator(principal_verifier, public, clock or _utc_now),
        ),
    )
    for registration in servicers:
        registration.register(registrar)
    names = tuple(r.service_name for r in servicers)
    # The stubs in grpc-stubs predate the asyncio health servicer.
    health_servicer: _HealthState = health.aio.HealthServicer()  # type: ignore[attr-defined, unused-ignore]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registrar)
    reflection.enable_server_reflection(
        (*names, health.SERVICE_NAME, reflection.SERVICE_NAME), registrar
    )
    health_names = ("", *names)
    for name in health_names:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    port = _bind(server, listen, tls, service_name)
    host = listen.rpartition(":")[0]
    return ServerHandle(
        service_name=service_name,
        server=server,
        host=host,
        port=port,
        health=health_servicer,
        health_names=health_names,
        tls=tls is not None,
    )


def _bind(server: grpc.aio.Server, listen: str, tls: TlsFiles | None, service_name: str) -> int:
    try:
        if tls is None:
            logger.warning(
                "gRPC server %s listens WITHOUT TLS on %s: development and tests only",
                service_name,
                listen,
            )
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, grpc_server_credentials(tls))
    except RuntimeError as e:
        raise OSError(f"gRPC server {service_name}: cannot listen on {listen}") from e
    if port == 0:
        raise OSError(f"gRPC server {service_name}: cannot listen on {listen}")
    return port


async def serve(handle: ServerHandle, *, grace_s: float) -> None:
    """Run until SIGTERM/SIGINT or `handle.request_stop()`, then drain; returns when stopped.

    On the first request health turns NOT_SERVING, new calls are refused and in-flight
    calls get `grace_s` seconds; a second request cuts the grace short.
    """
    await handle.start()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, handle.request_stop, sig.name)
    try:
        reason = await handle._next_stop_request()
        logger.info("gRPC server %s: %s, draining", handle.service_name, reason)
        stopping = asyncio.create_task(handle.stop(grace_s))
        impatient = asyncio.create_task(handle._next_stop_request())
        await asyncio.wait((stopping, impatient), return_when=asyncio.FIRST_COMPLETED)
        if not stopping.done():
            logger.warning("gRPC server %s: asked again, stopping now", handle.service_name)
            await handle.server.stop(0)
        impatient.cancel()
        await stopping
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a process's main coroutine, on uvloop where available (about +25% gRPC throughput)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _utc_now() -> datetime:
    return datetime.now(UTC)


# --- error mapping -------------------------------------------------------------------------


def status_code_of(error: MedschedError) -> grpc.StatusCode:
    """The gRPC status code a domain error is returned with."""
    try:
        return grpc.StatusCode[error.grpc_code_name]
    except KeyError:
        return grpc.StatusCode.UNKNOWN


def rpc_status_of(error: MedschedError) -> status_pb2.Status:
    """The `google.rpc.Status` (code, message, typed details) for a domain error.

    Field violations become `BadRequest`; every reason becomes an `ErrorInfo` (reason code,
    its domain or `medsched`, metadata plus the subject); for FAILED_PRECONDITION the reasons
    are also listed as `PreconditionFailure` violations, and for NOT_FOUND those naming a
    `resource_type` as `ResourceInfo`. The error's own typed details come last.
    """
    details: list[Any] = []
    if isinstance(error, InvalidArgument):
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
    for reason in error.reasons:
        metadata = dict(reason.metadata)
        if reason.subject:
            metadata.setdefault("subject", reason.subject)
        details.append(
            error_details_pb2.ErrorInfo(
                reason=reason.code, domain=reason.domain or ERROR_DOMAIN, metadata=metadata
            )
        )
    if isinstance(error, FailedPrecondition) and error.reasons:
        details.append(
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=r.code, subject=r.subject, description=r.description
                    )
                    for r in error.reasons
                ]
            )
        )
    if isinstance(error, NotFound):
        details.extend(
            error_details_pb2.ResourceInfo(
                resource_type=r.resource_type,
                resource_name=r.subject,
                description=error.message,
            )
            for r in error.reasons
            if r.resource_type
        )
    details.extend(error.details)
    return _status(status_code_of(error), error.message, details)


def internal_status(error_id: str) -> status_pb2.Status:
    """INTERNAL with a generic message; the error id lets support find the log line."""
    return _status(
        grpc.StatusCode.INTERNAL,
        f"internal error (error id {error_id})",
        [
            error_details_pb2.ErrorInfo(
                reason="INTERNAL", domain=ERROR_DOMAIN, metadata={"error_id": error_id}
            ),
            error_details_pb2.RequestInfo(request_id=error_id),
        ],
    )


def _status(code: grpc.StatusCode, message: str, details: Sequence[Any]) -> status_pb2.Status:
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)
        packed.append(item)
    number: int = code.value[0]
    return status_pb2.Status(code=number, message=message, details=packed)


_CODES_BY_NUMBER: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


async def abort_with_status(
    context: grpc.aio.ServicerContext[Any, Any], status: status_pb2.Status
) -> NoReturn:
    """End the call with `status`, its details in the `grpc-status-details-bin` trailer."""
    code = _CODES_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    await context.abort(
        code,
        status.message,
        trailing_metadata=((STATUS_DETAILS_KEY, status.SerializeToString()),),
    )


# --- the call pipeline ---------------------------------------------------------------------

# OpenTelemetry's semantic-convention names, as its gRPC instrumentation records them.
_RPC_SYSTEM = "rpc.system"
_RPC_SERVICE = "rpc.service"
_RPC_METHOD = "rpc.method"
_RPC_STATUS_CODE = "rpc.grpc.status_code"
_RPC_USER_AGENT = "rpc.user_agent"
_NET_PEER_IP = "net.peer.ip"
_NET_PEER_PORT = "net.peer.port"
_NET_PEER_NAME = "net.peer.name"
_TRACER_NAME = "common.grpc_server"
# Codes that mark a server span as failed (the others are the caller's doing).
_SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
# Bounds the per-method cache of a generic handler that would answer endless method names.
_MAX_CACHED_METHODS = 4096

_Behavior = Callable[..., Any]

if TYPE_CHECKING:
    # grpc-stubs make the handler base generic; at run time it is a plain class.
    _GenericRpcHandlerBase = grpc.GenericRpcHandler[Any, Any]
else:
    _GenericRpcHandlerBase = grpc.GenericRpcHandler
_Tokens = tuple[
    contextvars.Token[float | None] | None,
    contextvars.Token[Principal | None] | None,
    contextvars.Token[str | None] | None,
]


@dataclass(frozen=True)
class _Method:
    """What the pipeline needs to know about one method, worked out once at registration."""

    name: str
    always_public: bool
    """Health and reflection: no authentication, no span (load balancers poll them)."""
    span_attributes: Mapping[str, str | int]


class _CallState(NamedTuple):
    """One call in progress: when it started, its server span and the context token."""

    started: float
    span: Span | None
    context_token: object


class _CallPipeline:
    """Tracing, metrics, deadline check, authentication and error mapping, outermost first.

    Each method's behavior is wrapped once, when the services are registered (`_Registrar`),
    rather than by gRPC interceptors on every call: an interceptor costs a handler lookup, a
    re-created handler and several awaited layers per call (together about a third of a
    no-op call here). The steps run as plain code around the one await of the behavior; only
    a refusal (deadline, authentication) or an error awaits anything more.
    """

    def __init__(
        self,
        *,
        on_rpc: RpcObserver | None,
        tracer_provider: TracerProvider | None,
        min_deadline_s: float,
        authenticator: _Authenticator,
    ) -> None:
        self._on_rpc = on_rpc
        self._tracer = otel_trace.get_tracer(_TRACER_NAME, tracer_provider=tracer_provider)
        self._min_deadline_s = min_deadline_s
        self._authenticator = authenticator
        # Metadata keys the configured propagator reads (traceparent, baggage, ...): a call
        # carrying none of them continues the current context without parsing anything.
        self._trace_keys = frozenset(propagate.get_global_textmap().fields)

    def wrap(
        self, name: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """`handler` with its behavior run through the pipeline; same kind and serializers."""
        if handler.request_streaming and handler.response_streaming:
            behavior, factory = handler.stream_stream, grpc.stream_stream_rpc_method_handler
        elif handler.request_streaming:
            behavior, factory = handler.stream_unary, grpc.stream_unary_rpc_method_handler
        elif handler.response_streaming:
            behavior, factory = handler.unary_stream, grpc.unary_stream_rpc_method_handler
        else:
            behavior, factory = handler.unary_unary, grpc.unary_unary_rpc_method_handler
        deserializer = handler.request_deserializer
        if deserializer is not None and not handler.request_streaming:
            deserializer = _nul_screened(deserializer)
        return factory(
            self._wrap_behavior(_method(name), behavior),  # type: ignore[arg-type]
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )

    def _wrap_behavior(self, method: _Method, behavior: _Behavior) -> _Behavior:
        """Wrap keeping the behavior's kind: gRPC dispatches on async generator vs coroutine.

        Plain functions are accepted too: the generated base servicers' methods (for RPCs
        not built yet) are synchronous and raise NotImplementedError.
        """
        begin, admit, release, fail, end = (
            self._begin,
            self._admit,
            _release,
            self._fail,
            self._end,
        )

        if inspect.isasyncgenfunction(behavior):

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                call = begin(method, context)
                try:
                    tokens = admit(method, context)
                    if not isinstance(tokens, tuple):
                        await tokens  # a refusal: aborts the call
                    try:
                        _refuse_nul(request)
                        async for response in behavior(request, context):
                            yield response
                    except grpc.aio.AbortError:
                        raise
                    except Exception as e:
                        await fail(method.name, context, e)
                    finally:
                        release(tokens)
                except BaseException as e:
                    end(method, call, context, e)
                    raise
                end(method, call, context, None)

            return stream

        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            call = begin(method, context)
            try:
                tokens = admit(method, context)
                if not isinstance(tokens, tuple):
                    await tokens  # a refusal: aborts the call
                try:
                    _refuse_nul(request)
                    result = behavior(request, context)
                    if inspect.isawaitable(result):
                        result = await result
                except grpc.aio.AbortError:
                    raise
                except Exception as e:
                    await fail(method.name, context, e)
                finally:
                    release(tokens)
            except BaseException as e:
                end(method, call, context, e)
                raise
            end(method, call, context, None)
            return result

        return unary

    # -- 1 and 2: tracing and metrics

    def _begin(self, method: _Method, context: grpc.aio.ServicerContext[Any, Any]) -> _CallState:
        started = time.perf_counter()
        if method.always_public or not is_instrumentation_enabled():
            return _CallState(started, None, None)
        parent = None
        metadata = context.invocation_metadata()
        if metadata and self._trace_keys:
            carrier = {key: value for key, value in metadata if key in self._trace_keys}
            if carrier:
                parent = propagate.extract(carrier)
        span = self._tracer.start_span(
            method.name,
            context=parent,
            kind=otel_trace.SpanKind.SERVER,
            attributes=method.span_attributes,
        )
        if span.is_recording():
            # Only worth working out for a span that is kept.
            span.set_attributes(_peer_attributes(context))
        token = otel_context.attach(otel_trace.set_span_in_context(span, parent))
        return _CallState(started, span, token)

    def _end(
        self,
        method: _Method,
        call: _CallState,
        context: grpc.aio.ServicerContext[Any, Any],
        error: BaseException | None,
    ) -> None:
        if error is None:
            code = context.code() or grpc.StatusCode.OK
        elif isinstance(error, grpc.aio.AbortError):
            code = context.code() or grpc.StatusCode.UNKNOWN
        elif isinstance(error, asyncio.CancelledError):
            code = grpc.StatusCode.CANCELLED
        else:
            code = grpc.StatusCode.UNKNOWN
        span = call.span
        if span is not None:
            try:
                if span.is_recording():
                    _finish_span(span, code, context, error)
                span.end()
            finally:
                otel_context.detach(call.context_token)  # type: ignore[arg-type]
        if self._on_rpc is not None:
            _report(self._on_rpc, method.name, code, time.perf_counter() - call.started)

    # -- 3 and 4: deadline and authentication

    def _admit(
        self, method: _Method, context: grpc.aio.ServicerContext[Any, Any]
    ) -> _Tokens | Awaitable[NoReturn]:
        """The context-variable tokens to reset after the call, or the abort refusing it."""
        remaining = context.time_remaining()
        if remaining is not None and remaining < self._min_deadline_s:
            return context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"deadline too short: {max(remaining, 0) * 1000:.1f} ms left, "
                f"at least {self._min_deadline_s * 1000:.1f} ms needed",
            )
        deadline_token = _deadline.set(None if remaining is None else time.monotonic() + remaining)
        if method.always_public:
            return (deadline_token, None, None)
        try:
            principal, credential = self._authenticator.identify(method.name, context)
        except Unauthenticated as e:
            _deadline.reset(deadline_token)
            return abort_with_status(context, rpc_status_of(e))
        return (deadline_token, _principal.set(principal), _credential.set(credential))

    # -- 5: error mapping (innermost)

    async def _fail(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any], error: Exception
    ) -> NoReturn:
        status = _status_for_exception(method, error)
        try:
            await abort_with_status(context, status)
        except grpc.aio.AbortError as abort:
            # Keep the replaced exception (and what it chains) out of formatted tracebacks,
            # which tracing records: its message or cause may carry PHI or SQL text.
            raise abort from None
        raise AssertionError("abort returned")  # pragma: no cover - abort always raises


def _method(name: str) -> _Method:
    service, _, short = name.lstrip("/").partition("/")
    return _Method(
        name=name,
        always_public=name.startswith(_ALWAYS_PUBLIC_PREFIXES),
        span_attributes={
            _RPC_SYSTEM: "grpc",
            _RPC_STATUS_CODE: grpc.StatusCode.OK.value[0],
            _RPC_METHOD: short,
            _RPC_SERVICE: service,
        },
    )


class _NulRefusal(NamedTuple):
    """Stands for a request that holds NUL in a string field (see `_nul_screened`)."""

    path: str


def _nul_screened(
    deserialize: Callable[[bytes], Any],
) -> Callable[[bytes], Any]:
    """`deserialize`, returning a `_NulRefusal` for a request with NUL in a string field.

    Protobuf strings may hold NUL but PostgreSQL text cannot, so such a value would fail deep
    in a service as an internal error instead of being the caller's bad input. UTF-8 writes
    U+0000 as a zero byte and nothing else, so a request whose bytes hold no zero byte (the
    usual case) needs no walk over its fields.
    """

    def screened(data: bytes) -> Any:
        message = deserialize(data)
        if b"\x00" in data and isinstance(message, Message):
            path = nul_field_path(message)
            if path is not None:
                return _NulRefusal(path)
        return message

    return screened


def _refuse_nul(request: Any) -> None:
    """INVALID_ARGUMENT, naming the field, for a request `_nul_screened` found NUL in."""
    if type(request) is _NulRefusal:
        raise InvalidArgument.single(request.path, "must not contain the NUL character (U+0000)")


def nul_field_path(message: Message, prefix: str = "") -> str | None:
    """The path (`a.b[2].c`) of the first set string field holding NUL, or None."""
    for described, value in message.ListFields():
        name = prefix + described.name
        if described.type == FieldDescriptor.TYPE_STRING:
            if described.is_repeated:
                for i, item in enumerate(value):
                    if "\x00" in item:
                        return f"{name}[{i}]"
            elif "\x00" in value:
                return name
        elif described.type == FieldDescriptor.TYPE_MESSAGE:
            entry = described.message_type
            if entry is not None and entry.GetOptions().map_entry:
                for key, item in value.items():
                    if isinstance(key, str) and "\x00" in key:
                        return name
                    if isinstance(item, str) and "\x00" in item:
                        return f"{name}[{key!r}]"
                    if isinstance(item, Message):
                        found = nul_field_path(item, f"{name}[{key!r}].")
                        if found is not None:
                            return found
            elif described.is_repeated:
                for i, item in enumerate(value):
                    found = nul_field_path(item, f"{name}[{i}].")
                    if found is not None:
                        return found
            else:
                found = nul_field_path(value, name + ".")
                if found is not None:
                    return found
    return None


def _release(tokens: _Tokens | Awaitable[NoReturn]) -> None:
    if not isinstance(tokens, tuple):
        return
    deadline_token, principal_token, credential_token = tokens
    if credential_token is not None:
        _credential.reset(credential_token)
    if principal_token is not None:
        _principal.reset(principal_token)
    if deadline_token is not None:
        _deadline.reset(deadline_token)


def _peer_attributes(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    """User agent and peer address, as OpenTelemetry's gRPC instrumentation records them."""
    attributes = {}
    for key, value in context.invocation_metadata() or ():
        if key == "user-agent":
            attributes[_RPC_USER_AGENT] = str(value)
    peer = context.peer()
    if not peer.startswith("unix:"):
        # ipv4:127.0.0.1:57284, ipv6:[::1]:57284, or several comma-separated.
        ip, _, port = peer.split(",")[0].partition(":")[2].rpartition(":")
        if ip and port:
            ip = unquote(ip)
            attributes[_NET_PEER_IP] = ip
            attributes[_NET_PEER_PORT] = port
            if ip in ("[::1]", "127.0.0.1"):
                attributes[_NET_PEER_NAME] = "localhost"
    return attributes


def _finish_span(
    span: Span,
    code: grpc.StatusCode,
    context: grpc.aio.ServicerContext[Any, Any],
    error: BaseException | None,
) -> None:
    span.set_attribute(_RPC_STATUS_CODE, code.value[0])
    if code in _SERVER_ERROR_CODES:
        span.set_status(Status(StatusCode.ERROR, f"{code}:{context.details()}"))
    # An exception leaving the pipeline is an abort (mapped errors included, with their
    # cause cut off) or a cancellation; aborts are recorded as the instrumentation did.
    if isinstance(error, Exception) and type(error) is not Exception:
        span.record_exception(error)


def _report(on_rpc: RpcObserver, method: str, code: grpc.StatusCode, seconds: float) -> None:
    try:
        on_rpc(method, code, seconds)
    except Exception as e:
        # Metrics must never fail a call that itself succeeded.
        logger.warning("rpc observer failed with %s", type(e).__name__)


class _PipelineHandler(_GenericRpcHandlerBase):
    """A generic handler whose answers run through the pipeline, wrapped once per method."""

    def __init__(self, inner: grpc.GenericRpcHandler[Any, Any], pipeline: _CallPipeline) -> None:
        self._inner = inner
        self._pipeline = pipeline
        self._wrapped: dict[
            str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]
        ] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None  # unknown here: gRPC asks the next handler or answers UNIMPLEMENTED
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._pipeline.wrap(method, handler)
        if len(self._wrapped) >= _MAX_CACHED_METHODS:
            self._wrapped.clear()
        self._wrapped[method] = (handler, wrapped)
        return wrapped


class _Registrar(grpc.aio.Server):
    """The server as registrations see it: handlers they add pass through the pipeline.

    Generated `add_*_to_server` functions, health and reflection add their handlers here;
    everything else is the real server's.
    """

    def __init__(self, server: grpc.aio.Server, pipeline: _CallPipeline) -> None:
        self._server = server
        self._pipeline = pipeline

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_PipelineHandler(h, self._pipeline) for h in generic_rpc_handlers)
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self._server.add_registered_method_handlers(  # type: ignore[attr-defined, unused-ignore]
            service_name,
            {
                name: self._pipeline.wrap(f"/{service_name}/{name}", handler)
                for name, handler in method_handlers.items()
            },
        )

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None = None) -> None:
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        return await self._server.wait_for_termination(timeout)


class _Authenticator:
    """Decides who a call comes from; refuses anonymous calls to non-public methods."""

    def __init__(
        self, verifier: PrincipalVerifier | None, public_methods: frozenset[str], clock: Clock
    ) -> None:
        self._verifier = verifier
        self._public = public_methods
        self._clock = clock

    def identify(
        self, method: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[Principal | None, str | None]:
        """(principal, presented credential) of a call; `Unauthenticated` if refused.

        Not for the always-public services (health, reflection), which never look.
        """
        credential = _metadata_value(context, PRINCIPAL_METADATA_KEY)
        try:
            principal = self._principal(credential, context)
            if principal is None and method not in self._public:
                raise Unauthenticated(
                    "this method needs an authenticated caller",
                    reasons=[Reason(code="PRINCIPAL_REQUIRED")],
                )
        except Unauthenticated as e:
            # Reason codes are fixed words, never the presented token: safe to log, and
            # refused access is worth an audit trail.
            logger.info(
                "rpc %s refused: %s",
                method,
                ",".join(r.code for r in e.reasons) or type(e).__name__,
            )
            raise
        return principal, credential

    def _principal(
        self, credential: str | None, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Principal | None:
        # A forwarded principal wins over the transport identity: the gateway (and a
        # service acting for a user) calls with its own certificate on someone's behalf.
        if credential is not None:
            if self._verifier is None:
                raise InvalidPrincipal("principal verification is not configured")
            return self._verifier.verify(credential, now=self._clock())
        service = service_peer_name(context.auth_context())
        return None if service is None else Principal(subject=service, role=Role.SERVICE)


def service_peer_name(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    """`svc-<name>` of a verified mTLS peer certificate naming a medsched service, else None.

    gRPC fills `x509_*` entries only for certificates it verified against our CA, and only
    asks for one when client certificates are required. The common name is preferred;
    otherwise exactly one `svc-*` subject alternative name must be present.
    """
    common_names = [v.decode("utf-8", "replace") for v in auth_context.get("x509_common_name", ())]
    for name in common_names:
        if name in _SERVICE_PEERS:
            return name
    alt_names = {
        v.decode("utf-8", "replace") for v in auth_context.get("x509_subject_alternative_name", ())
    }
    services = alt_names & _SERVICE_PEERS
    return services.pop() if len(services) == 1 else None


def _metadata_value(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    for item_key, value in context.invocation_metadata() or ():
        if item_key == key:
            return value if isinstance(value, str) else value.decode("ascii", "replace")
    return None


def _status_for_exception(method: str, error: Exception) -> status_pb2.Status:
    if isinstance(error, MedschedError):
        logger.debug("rpc %s ended with %s", method, type(error).__name__)
        return rpc_status_of(error)
    if isinstance(error, NotImplementedError):
        # What generated base servicers raise for RPCs whose contract exists but whose
        # implementation does not yet.
        return _status(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented yet", ())
    if isinstance(error, grpc.aio.AioRpcError):
        dependency_status = _status_for_dependency_error(error)
        if dependency_status is not None:
            return dependency_status
    error_id = uuid.uuid4().hex[:16]
    # Type, status code and code locations only: messages can carry PHI or SQL text.
    code_name = error.code().name if isinstance(error, grpc.aio.AioRpcError) else ""
    logger.error(
        "rpc %s failed with unexpected %s%s (error id %s) at %s",
        method,
        type(error).__name__,
        f" {code_name}" if code_name else "",
        error_id,
        _where(error),
        extra={"error_id": error_id, "rpc_method": method, "error_type": type(error).__name__},
    )
    return internal_status(error_id)


def _status_for_dependency_error(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The status for a downstream failure the servicer let through, if it keeps its meaning.

    Running out of the (propagated) deadline downstream means ours is gone too, and an
    unreachable dependency is worth retrying. Anything else is a bug here: None (INTERNAL).
    """
    code = error.code()
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return _status(code, "deadline exceeded while waiting for a dependency", ())
    if code is grpc.StatusCode.UNAVAILABLE:
        return _status(code, "a dependency is unavailable; retry later", ())
    return None


def _where(error: BaseException, frames: int = 4) -> str:
    """The innermost code locations of a traceback (file:line in function), no message."""
    stack = traceback.extract_tb(error.__traceback__)[-frames:]
    return " <- ".join(f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in reversed(stack))
