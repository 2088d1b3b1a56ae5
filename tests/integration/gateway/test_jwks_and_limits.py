"""Token keys fetched from a real HTTPS JWKS endpoint, and the Redis rate limiter."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
import redis.asyncio as redis_asyncio
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from common.auth import Principal, Role
from common.errors import DependencyUnavailable
from common.tls import https_server_context
from deploy.certs import DevPki
from gateway.app import start_site
from gateway.auth import InvalidToken, RemoteJwks, TokenPolicy, TokenVerifier
from gateway.ratelimit import RateLimit, RateLimiter, limiter_client

ISSUER = "https://idp.example.test/"
AUDIENCE = "medsched"


@dataclass
class Issuer:
    """An HTTPS JWKS endpoint whose keys and availability a test controls."""

    url: str
    runner: web.AppRunner
    keys: dict[str, ec.EllipticCurvePrivateKey] = field(default_factory=dict)
    fetches: int = 0
    down: bool = False

    def publish(self, kid: str) -> None:
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1())

    def token(self, kid: str, key: ec.EllipticCurvePrivateKey | None = None) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "user-1",
            "iat": now,
            "exp": now + 300,
            "role": "admin",
        }
        return jwt.encode(claims, key or self.keys[kid], algorithm="ES256", headers={"kid": kid})

    async def serve(self, request: web.Request) -> web.Response:
        del request
        self.fetches += 1
        if self.down:
            return web.Response(status=503)
        keys = []
        for kid, key in self.keys.items():
            jwk: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
            jwk.update(kid=kid, use="sig", alg="ES256")
            keys.append(jwk)
        return web.json_response({"keys": keys})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def issuer(pki: DevPki) -> AsyncIterator[Issuer]:
    app = web.Application()
    holder: list[Issuer] = []

    async def jwks(request: web.Request) -> web.Response:
        return await holder[0].serve(request)

    app.router.add_get("/jwks", jwks)
    context = https_server_context(pki.tls_files("payer-sim", require_client_cert=False))
    runner, port = await start_site(app, "127.0.0.1:0", context, grace_s=0.5)
    holder.append(Issuer(url=f"https://127.0.0.1:{port}/jwks", runner=runner))
    yield holder[0]
    await runner.cleanup()


def verifier_for(issuer: Issuer, pki: DevPki, clock: Clock) -> tuple[TokenVerifier, RemoteJwks]:
    keys = RemoteJwks(
        issuer.url,
        ssl_context=ssl.create_default_context(cafile=str(pki.ca_cert)),
        cache_ttl_s=300,
        refresh_min_interval_s=30,
        clock=clock,
    )
    return TokenVerifier(keys, TokenPolicy(issuer=ISSUER, audience=AUDIENCE)), keys


async def test_keys_are_fetched_once_and_cached(issuer: Issuer, pki: DevPki) -> None:
    issuer.publish("k1")
    verifier, keys = verifier_for(issuer, pki, Clock())
    try:
        first = await verifier.verify(issuer.token("k1"))
        second = await verifier.verify(issuer.token("k1"))
    finally:
        await keys.close()

    assert first == second == Principal(subject="user-1", role=Role.ADMIN)
    assert issuer.fetches == 1


async def test_rotated_key_is_picked_up_but_unknown_kids_cannot_hammer_the_issuer(
    issuer: Issuer, pki: DevPki
) -> None:
    issuer.publish("k1")
    clock = Clock()
    verifier, keys = verifier_for(issuer, pki, clock)
    try:
        await verifier.verify(issuer.token("k1"))
        clock.now += 31
        issuer.publish("k2")
        rotated = await verifier.verify(issuer.token("k2"))
        for _ in range(5):
            with pytest.raises(InvalidToken, match="unknown signing key"):
                await verifier.verify(issuer.token("k9", key=issuer.keys["k1"]))
    finally:
        await keys.close()

    assert rotated.subject == "user-1"
    assert issuer.fetches == 2


async def test_stale_keys_keep_working_while_the_issuer_is_down(
    issuer: Issuer, pki: DevPki
) -> None:
    issuer.publish("k1")
    clock = Clock()
    verifier, keys = verifier_for(issuer, pki, clock)
    try:
        await verifier.verify(issuer.token("k1"))
        issuer.down = True
        clock.now += 600  # past the cache lifetime
        principal = await verifier.verify(issuer.token("k1"))
    finally:
        await keys.close()

    assert principal.subject == "user-1"
    assert issuer.fetches == 2


async def test_no_keys_at_all_is_unavailable_not_unauthenticated(
    issuer: Issuer, pki: DevPki
) -> None:
    issuer.publish("k1")
    issuer.down = True
    verifier, keys = verifier_for(issuer, pki, Clock())
    try:
        with pytest.raises(DependencyUnavailable):
            await verifier.verify(issuer.token("k1"))
    finally:
        await keys.close()


async def test_limit_is_shared_by_gateway_replicas(redis_url: str) -> None:
    principal = Principal(subject=f"svc-{time.time_ns()}", role=Role.SERVICE)
    first = redis_asyncio.Redis.from_url(redis_url)
    second = redis_asyncio.Redis.from_url(redis_url)
    try:
        replicas = [RateLimiter(first, RateLimit(4)), RateLimiter(second, RateLimit(4))]
        decisions = [await replicas[i % 2].check(principal) for i in range(6)]
    finally:
        await first.aclose()
        await second.aclose()

    assert [d.allowed for d in decisions] == [True, True, True, True, False, False]
    assert all(d.retry_after_s >= 1 for d in decisions[4:])


async def test_limiter_allows_requests_and_pauses_when_redis_does_not_answer() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        del reader
        connections.append(writer)  # accept, never answer

    server = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = limiter_client(f"redis://127.0.0.1:{port}/0", timeout_s=0.2)
    clock = Clock()
    limiter = RateLimiter(client, RateLimit(1), pause_s=5.0, clock=clock)
    principal = Principal(subject="pat-1", role=Role.PATIENT, patient_id="pat-1")
    try:
        started = time.perf_counter()
        during_pause = [await limiter.check(principal) for _ in range(3)]
        elapsed = time.perf_counter() - started
        attempts_during_pause = len(connections)
        clock.now += 5.0
        after_pause = await limiter.check(principal)
    finally:
        await client.aclose()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()

    assert all(d.allowed for d in during_pause)
    assert after_pause.allowed
    # One timed-out attempt, then no Redis call until the pause ends.
    assert attempts_during_pause == 1
    assert elapsed < 0.6
    assert len(connections) == 2
