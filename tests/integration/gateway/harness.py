"""A real gateway over HTTPS in front of real in-process gRPC servers, for integration tests.

`start_gateway` serves `create_app` on a free port with the dev PKI's gateway certificate
(TLS 1.3 minimum, from `common.tls`), verifies tokens of a development issuer made in a
temporary folder, forwards signed principals to gRPC servers built by
`common.grpc_server.create_server` (which verify them), and limits rates in the session's
Redis. Backend channels are plaintext: mutual TLS between services is tested in `common`.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as redis_asyncio
from aiohttp import web

from common import grpc_client
from common.auth import PrincipalSigner, Role
from common.grpc_server import Registration, ServerHandle, create_server
from common.tls import https_server_context
from deploy.certs import DevPki
from gateway.app import GatewayParts, create_app, start_site
from gateway.auth import StaticKeys, TokenPolicy, TokenVerifier
from gateway.backends import Backends, service_targets
from gateway.descriptors import Api
from gateway.dev_issuer import DEV_AUDIENCE, DEV_ISSUER, DevIssuer, dev_principal, load_or_create
from gateway.openapi import build_openapi
from gateway.ratelimit import RateLimit, RateLimiter

PRINCIPAL_KEY = bytes(range(32, 64))


@dataclass
class RunningGateway:
    """A started gateway and what a test needs to call it."""

    url: str
    port: int
    issuer: DevIssuer
    ca_cert: Path
    runner: web.AppRunner
    backends: Backends
    redis: redis_asyncio.Redis
    session: aiohttp.ClientSession

    def token(self, role: Role = Role.PATIENT, subject: str = "pat-1", **scopes: Any) -> str:
        principal = dev_principal(role, subject, **scopes)
        return self.issuer.mint(principal, now=datetime.now(UTC))

    def auth(
        self, role: Role = Role.PATIENT, subject: str = "pat-1", **scopes: Any
    ) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, subject, **scopes)}"}

    def client_context(self, *, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        if maximum is not None:
            context.maximum_version = maximum
        return context

    async def close(self) -> None:
        await self.session.close()
        await self.runner.cleanup()
        await self.backends.close()
        await self.redis.aclose()


async def start_backend(registrations: Sequence[Registration]) -> ServerHandle:
    """A gRPC server on a free port that accepts principals signed with PRINCIPAL_KEY."""
    handle = await create_server(
        service_name="gwtest",
        listen="127.0.0.1:0",
        tls=None,
        servicers=registrations,
        principal_verifier=PrincipalSigner(PRINCIPAL_KEY),
    )
    await handle.start()
    await handle.set_serving()
    return handle


async def start_gateway(
    api: Api,
    service_addrs: Mapping[str, str],
    *,
    pki: DevPki,
    redis_url: str,
    work_dir: Path,
    rate_limit: int = 10_000,
    max_body_bytes: int = 64 * 1024,
    backend_timeout_s: float = 2.0,
    cors_origins: tuple[str, ...] = (),
    signer_key: bytes = PRINCIPAL_KEY,
) -> RunningGateway:
    issuer = load_or_create(work_dir / f"dev-issuer-{uuid.uuid4().hex[:8]}")
    backends = Backends(
        service_targets(api, service_addrs),
        lambda address: grpc_client.channel(address, tls=None),
    )
    redis = redis_asyncio.Redis.from_url(redis_url, socket_timeout=1.0)
    parts = GatewayParts(
        api=api,
        backends=backends,
        verifier=TokenVerifier(
            StaticKeys(issuer.jwks()), TokenPolicy(issuer=DEV_ISSUER, audience=DEV_AUDIENCE)
        ),
        signer=PrincipalSigner(signer_key),
        limiter=RateLimiter(redis, RateLimit(rate_limit)),
        openapi=build_openapi(api.restricted_to(backends.services)),
        backend_timeout_s=backend_timeout_s,
        max_body_bytes=max_body_bytes,
        cors_origins=cors_origins,
        dev_jwks=issuer.jwks(),
    )
    tls = pki.tls_files("gateway", require_client_cert=False)
    runner, port = await start_site(
        create_app(parts), "127.0.0.1:0", https_server_context(tls), grace_s=1.0
    )
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    return RunningGateway(
        url=f"https://127.0.0.1:{port}",
        port=port,
        issuer=issuer,
        ca_cert=pki.ca_cert,
        runner=runner,
        backends=backends,
        redis=redis,
        session=session,
    )
