"""Outbound gRPC channels: mutual TLS, keepalive, deadlines that shrink across hops, tracing.

Every call made through `channel(...)`:

- gets a deadline: the caller's timeout, or `default_timeout_s` when it set none, and never
  later than the deadline of the incoming call being handled (`common.grpc_server` keeps
  it), so a request's time budget shrinks from hop to hop instead of restarting;
- with `forward_principal=True`, carries the signed principal of the incoming call, so the
  next service authorizes the same end user (a service acting on its own behalf is known
  to the callee by its mTLS certificate instead);
- is traced by OpenTelemetry (client span, trace context in the metadata).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

# googleapis-common-protos ships .pyi files without a py.typed marker: with mypy's
# `follow_untyped_imports` for google.rpc.* they type-check, without it they are Any.
import google.rpc.status_pb2 as status_pb2  # type: ignore[import-untyped, unused-ignore]
import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.trace import TracerProvider

from common.auth import PRINCIPAL_METADATA_KEY
from common.grpc_server import (
    STATUS_DETAILS_KEY,
    current_deadline,
    current_principal_credential,
)
from common.settings import TlsFiles
from common.tls import grpc_channel_credentials

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    # grpc-stubs make the interceptor bases generic; at run time they are plain classes.
    _UnaryUnaryBase = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStreamBase = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnaryBase = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStreamBase = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnaryBase = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStreamBase = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnaryBase = grpc.aio.StreamUnaryClientInterceptor
    _StreamStreamBase = grpc.aio.StreamStreamClientInterceptor

DEFAULT_TIMEOUT_S = 5.0
# Pings keep idle connections through NATs and load balancers and reveal a dead peer within
# about 40 s instead of at the next call; servers built by common.grpc_server accept them.
KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


def channel(
    target: str,
    *,
    tls: TlsFiles | None,
    service_name_override: str | None = None,
    default_timeout_s: float = DEFAULT_TIMEOUT_S,
    forward_principal: bool = False,
    tracer_provider: TracerProvider | None = None,
) -> grpc.aio.Channel:
    """A channel to `target` (`host:port`), with mutual TLS from `tls` when given.

    `tls` None is plaintext, for development and tests only. `service_name_override` checks
    the server certificate against that name instead of the target's host (e.g. when
    calling `10.0.0.7:50051` whose certificate names `svc-booking`).
    """
    if default_timeout_s <= 0:
        raise ValueError("default_timeout_s must be positive")
    options: list[tuple[str, Any]] = list(KEEPALIVE_OPTIONS)
    if service_name_override is not None:
        options.append(("grpc.ssl_target_name_override", service_name_override))
    # grpc-stubs leave ClientInterceptor untyped (a must-cast placeholder).
    interceptors: list[Any] = [
        *_outbound_interceptors(default_timeout_s, forward_principal),
        *aio_client_interceptors(  # type: ignore[no-untyped-call, unused-ignore]
            tracer_provider=tracer_provider
        ),
    ]
    if tls is None:
        logger.warning("gRPC channel to %s WITHOUT TLS: development and tests only", target)
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(
        target, grpc_channel_credentials(tls), options=options, interceptors=interceptors
    )


def call_details_for_hop(
    details: grpc.aio.ClientCallDetails, *, default_timeout_s: float, forward_principal: bool
) -> grpc.aio.ClientCallDetails:
    """The call details with the effective timeout and, if asked, the forwarded principal."""
    timeout = details.timeout if details.timeout is not None else default_timeout_s
    deadline = current_deadline()
    if deadline is not None:
        timeout = min(timeout, max(deadline - time.monotonic(), 0.0))
    metadata = details.metadata
    credential = current_principal_credential() if forward_principal else None
    if credential is not None and (metadata is None or PRINCIPAL_METADATA_KEY not in metadata):
        metadata = grpc.aio.Metadata(*(metadata or ()), (PRINCIPAL_METADATA_KEY, credential))
    return grpc.aio.ClientCallDetails(
        details.method, timeout, metadata, details.credentials, details.wait_for_ready
    )


def status_details(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The `google.rpc.Status` a failed call carried in `grpc-status-details-bin`, if any.

    Returns None when the trailer is absent, unparsable, or disagrees with the call's own
    status code (then it was not written for this error).
    """
    raw = _trailer(error.trailing_metadata(), STATUS_DETAILS_KEY)
    if raw is None:
        return None
    status = status_pb2.Status()
    try:
        status.ParseFromString(raw)
    except DecodeError:
        return None
    code_number: int = error.code().value[0]
    return status if status.code == code_number else None


def _trailer(metadata: Iterable[Any] | None, key: str) -> bytes | None:
    # Typed loosely: grpc-stubs describe AioRpcError's trailers wrongly (they are Metadata).
    for item_key, value in metadata or ():
        if item_key == key:
            return value if isinstance(value, bytes) else value.encode("latin-1")
    return None


class _Outbound:
    """Shared by the four interceptor shapes (gRPC registers each object for one shape)."""

    def __init__(self, default_timeout_s: float, forward_principal: bool) -> None:
        self._default_timeout_s = default_timeout_s
        self._forward_principal = forward_principal

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return call_details_for_hop(
            details,
            default_timeout_s=self._default_timeout_s,
            forward_principal=self._forward_principal,
        )


class _UnaryUnary(_Outbound, _UnaryUnaryBase):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _UnaryStream(_Outbound, _UnaryStreamBase):
    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _StreamUnary(_Outbound, _StreamUnaryBase):
    async def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any] | Iterable[Any],
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _StreamStream(_Outbound, _StreamStreamBase):
    async def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: AsyncIterable[Any] | Iterable[Any],
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def _outbound_interceptors(default_timeout_s: float, forward_principal: bool) -> Sequence[Any]:
    return tuple(
        shape(default_timeout_s, forward_principal)
        for shape in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)
    )
