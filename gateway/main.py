"""The gateway process: settings, descriptors, token verification, Redis, channels, HTTPS.

`python -m gateway.main` serves HTTPS (TLS 1.3 minimum) on `MEDSCHED_HTTP_LISTEN` and stops
gracefully on SIGTERM/SIGINT: it stops accepting connections, gives in-flight requests
`MEDSCHED_SHUTDOWN_GRACE_S` seconds, then closes its channels and clients.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as redis_asyncio
from opentelemetry.trace import TracerProvider

from common import grpc_client
from common.auth import PrincipalSigner
from common.grpc_server import run
from common.log import configure_logging
from common.settings import Settings, SettingsError, TlsFiles
from common.telemetry import setup_telemetry
from common.tls import https_server_context
from gateway.app import GatewayParts, create_app, start_site
from gateway.auth import KeySource, RemoteJwks, StaticKeys, TokenPolicy, TokenVerifier
from gateway.backends import Backends, service_targets
from gateway.config import (
    GatewayConfig,
)
from gateway.descriptors import load_api_file
from gateway.dev_issuer import load_or_create
from gateway.openapi import build_openapi
from gateway.ratelimit import RateLimit, RateLimiter, limiter_client

logger = logging.getLogger(__name__)

T = TypeVar("T")


def config_from(settings: Settings) -> GatewayConfig:
    """The gateway's config from `settings` and its `MEDSCHED_GATEWAY_*` variables.

    Each variable is the `Settings` field of the lower-case name without `MEDSCHED_`
    (`MEDSCHED_GATEWAY_JWKS_URL` -> `gateway_jwks_url`): strings, except the integers
    `gateway_token_leeway_s`, `gateway_rate_limit`, `gateway_max_body_bytes` and the float
    `gateway_backend_timeout_s`; `gateway_cors_origins` is the comma-separated text.
    """
    descriptor_set = settings.gateway_descriptor_set
    dev_issuer_dir = settings.gateway_dev_issuer_dir
    return GatewayConfig.from_settings(
        settings,
        jwks_url=settings.gateway_jwks_url,
        token_issuer=settings.gateway_token_issuer,
        token_audience=settings.gateway_token_audience,
        token_leeway_s=settings.gateway_token_leeway_s,
        dev_issuer_dir=Path(dev_issuer_dir) if dev_issuer_dir else None,
        cors_origins=settings.gateway_cors_origins.split(","),
        rate_limit_per_minute=settings.gateway_rate_limit,
        max_body_bytes=settings.gateway_max_body_bytes,
        backend_timeout_s=settings.gateway_backend_timeout_s,
        descriptor_set=Path(descriptor_set) if descriptor_set else None,
    )


@dataclass
class _Resources:
    """What `serve_gateway` opened and must close."""

    backends: Backends
    redis: redis_asyncio.Redis
    jwks: RemoteJwks | None


async def serve_gateway(
    config: GatewayConfig,
    tls: TlsFiles,
    *,
    tracer_provider: TracerProvider | None = None,
    on_listening: Callable[[int], None] | None = None,
) -> None:
    """Serve HTTPS with `tls` until SIGTERM/SIGINT, then drain and close everything.

    `on_listening` is called with the bound port once requests are accepted.
    """
    api = load_api_file(config.descriptor_set)
    backends = Backends(
        service_targets(api, config.service_addrs),
        lambda address: grpc_client.channel(
            address,
            tls=tls,
            default_timeout_s=config.backend_timeout_s,
            tracer_provider=tracer_provider,
        ),
    )
    redis = limiter_client(config.redis_url)
    keys, jwks, dev_jwks = _key_source(config)
    resources = _Resources(backends=backends, redis=redis, jwks=jwks)
    try:
        parts = GatewayParts(
            api=api,
            backends=backends,
            verifier=TokenVerifier(
                keys,
                TokenPolicy(
                    issuer=config.token_issuer,
                    audience=config.token_audience,
                    leeway_s=config.token_leeway_s,
                ),
            ),
            signer=PrincipalSigner(config.principal_key),
            limiter=RateLimiter(redis, RateLimit(config.rate_limit_per_minute))
            if config.rate_limit_per_minute
            else None,
            openapi=build_openapi(api.restricted_to(backends.services)),
            backend_timeout_s=config.backend_timeout_s,
            max_body_bytes=config.max_body_bytes,
            cors_origins=config.cors_origins,
            dev_jwks=dev_jwks,
        )
        runner, port = await start_site(
            create_app(parts), config.listen, https_server_context(tls), config.shutdown_grace_s
        )
        logger.info(
            "gateway listening",
            extra={"port": port, "count": len(backends.services), "kind": _mode(config)},
        )
        if on_listening is not None:
            on_listening(port)
        await _wait_for_signal()
        logger.info("gateway stopping")
        await runner.cleanup()
    finally:
        await _close(resources)


def _key_source(
    config: GatewayConfig,
) -> tuple[KeySource, RemoteJwks | None, Mapping[str, Any] | None]:
    if config.jwks_url:
        remote = RemoteJwks(config.jwks_url)
        return remote, remote, None
    if config.dev_issuer_dir is None:
        raise RuntimeError("GatewayConfig guarantees a JWKS URL or a dev issuer folder")
    issuer = load_or_create(config.dev_issuer_dir)
    logger.warning("gateway accepts DEVELOPMENT tokens (dev issuer): not for production")
    return StaticKeys(issuer.jwks()), None, issuer.jwks()


def _mode(config: GatewayConfig) -> str:
    return "dev-issuer" if config.dev_mode else "jwks"


async def _wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _close(resources: _Resources) -> None:
    await resources.backends.close()
    await resources.redis.aclose()
    if resources.jwks is not None:
        await resources.jwks.close()


def main() -> int:
    try:
        settings = Settings.from_env("gateway")
        config = config_from(settings)
    except SettingsError as e:
        print(f"gateway: {e}", file=sys.stderr)
        return 2
    configure_logging("gateway", settings.log_level)
    if config.tls is None:
        print("gateway: MEDSCHED_TLS_CA/CERT/KEY are required (HTTPS only)", file=sys.stderr)
        return 2
    telemetry = setup_telemetry(
        "gateway",
        metrics_listen=settings.metrics_listen or None,
        otlp_endpoint=settings.otlp_endpoint or None,
    )
    try:
        run(serve_gateway(config, config.tls, tracer_provider=telemetry.tracer_provider))
    finally:
        telemetry.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
