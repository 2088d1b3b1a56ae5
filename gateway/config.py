"""The gateway's configuration: the shared `Settings` plus the gateway's own knobs.

`GatewayConfig.from_settings(settings, ...)` takes what every process has (listen address,
TLS files, service addresses, Redis, the principal signing key) from `Settings` and the
gateway-only values as explicit parameters, which `gateway.main` reads from the
`MEDSCHED_GATEWAY_*` variables through `Settings`:

- `MEDSCHED_GATEWAY_JWKS_URL`: HTTPS URL of the OAuth issuer's JWKS (default empty);
- `MEDSCHED_GATEWAY_TOKEN_ISSUER`: expected `iss` (required with a JWKS URL);
- `MEDSCHED_GATEWAY_TOKEN_AUDIENCE`: expected `aud` (default `medsched`);
- `MEDSCHED_GATEWAY_TOKEN_LEEWAY_S`: clock skew allowed on `exp`/`iat` (default 60);
- `MEDSCHED_GATEWAY_DEV_ISSUER_DIR`: folder of the development issuer's key; empty turns
  the dev issuer off (default); `medsched up` sets it to `<data dir>/dev-issuer`;
- `MEDSCHED_GATEWAY_CORS_ORIGINS`: comma-separated allowed origins or `*` (default none);
- `MEDSCHED_GATEWAY_RATE_LIMIT`: requests per minute per principal (anonymous callers of
  public methods: per client address), 0 = off (default 600);
- `MEDSCHED_GATEWAY_MAX_BODY_BYTES`: larger request bodies get 413 (default 262144);
- `MEDSCHED_GATEWAY_BACKEND_TIMEOUT_S`: deadline of each call to a service (default 5);
- `MEDSCHED_GATEWAY_DESCRIPTOR_SET`: the contracts to serve (default: the packaged
  `medsched/descriptor_set.binpb`).

Exactly one token source is used: the JWKS URL when set, else the development issuer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from common.errors import FieldViolation
from common.settings import Settings, SettingsError, TlsFiles
from gateway.dev_issuer import DEV_AUDIENCE, DEV_ISSUER

DEFAULT_AUDIENCE = DEV_AUDIENCE
DEFAULT_RATE_LIMIT = 600
DEFAULT_MAX_BODY_BYTES = 256 * 1024
DEFAULT_BACKEND_TIMEOUT_S = 5.0
DEFAULT_TOKEN_LEEWAY_S = 60


def packaged_descriptor_set() -> Path:
    """The descriptor set `python -m deploy.protogen` writes next to the generated code."""
    import medsched

    return Path(medsched.__file__).parent / "descriptor_set.binpb"


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway needs, validated."""

    listen: str
    tls: TlsFiles | None
    # Service area (`booking`, ...) -> gRPC address, as in `Settings.service_addrs`.
    service_addrs: Mapping[str, str]
    redis_url: str
    principal_key: bytes = field(repr=False)
    descriptor_set: Path
    token_issuer: str
    token_audience: str
    jwks_url: str = ""
    dev_issuer_dir: Path | None = None
    token_leeway_s: int = DEFAULT_TOKEN_LEEWAY_S
    cors_origins: tuple[str, ...] = ()
    rate_limit_per_minute: int = DEFAULT_RATE_LIMIT
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    backend_timeout_s: float = DEFAULT_BACKEND_TIMEOUT_S
    shutdown_grace_s: float = 10.0

    def __post_init__(self) -> None:
        problems = list(self._violations())
        if problems:
            raise SettingsError(problems)

    @property
    def dev_mode(self) -> bool:
        return not self.jwks_url and self.dev_issuer_dir is not None

    def _violations(self) -> Iterable[FieldViolation]:
        if not self.jwks_url and self.dev_issuer_dir is None:
            yield FieldViolation(
                "MEDSCHED_GATEWAY_JWKS_URL",
                "is required unless MEDSCHED_GATEWAY_DEV_ISSUER_DIR enables the dev issuer",
            )
        if self.jwks_url and not self.jwks_url.startswith("https://"):
            yield FieldViolation("MEDSCHED_GATEWAY_JWKS_URL", "must be an https:// URL")
        if not self.token_issuer:
            yield FieldViolation("MEDSCHED_GATEWAY_TOKEN_ISSUER", "is required")
        if not self.token_audience:
            yield FieldViolation("MEDSCHED_GATEWAY_TOKEN_AUDIENCE", "must not be empty")
        if self.token_leeway_s < 0 or self.token_leeway_s > 600:
            yield FieldViolation("MEDSCHED_GATEWAY_TOKEN_LEEWAY_S", "must be 0 to 600 seconds")
        if self.rate_limit_per_minute < 0:
            yield FieldViolation("MEDSCHED_GATEWAY_RATE_LIMIT", "must not be negative")
        if self.max_body_bytes < 1024:
            yield FieldViolation("MEDSCHED_GATEWAY_MAX_BODY_BYTES", "must be at least 1024")
        if self.backend_timeout_s <= 0:
            yield FieldViolation("MEDSCHED_GATEWAY_BACKEND_TIMEOUT_S", "must be positive")
        for origin in self.cors_origins:
            if origin != "*" and not origin.startswith(("https://", "http://")):
                yield FieldViolation(
                    "MEDSCHED_GATEWAY_CORS_ORIGINS", "each origin must be * or scheme://host"
                )
        if len(self.principal_key) < 32:
            yield FieldViolation("MEDSCHED_PRINCIPAL_KEY", "must decode to at least 32 bytes")

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        jwks_url: str = "",
        token_issuer: str = "",
        token_audience: str = DEFAULT_AUDIENCE,
        token_leeway_s: int = DEFAULT_TOKEN_LEEWAY_S,
        dev_issuer_dir: Path | None = None,
        cors_origins: Iterable[str] = (),
        rate_limit_per_minute: int = DEFAULT_RATE_LIMIT,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        backend_timeout_s: float = DEFAULT_BACKEND_TIMEOUT_S,
        descriptor_set: Path | None = None,
    ) -> GatewayConfig:
        """The config for `settings` and the gateway's own values.

        With no JWKS URL and a dev issuer folder, the issuer defaults to the dev issuer's.
        """
        issuer = token_issuer or (DEV_ISSUER if not jwks_url and dev_issuer_dir else "")
        return cls(
            listen=settings.http_listen,
            tls=settings.tls,
            service_addrs=MappingProxyType(dict(settings.service_addrs)),
            redis_url=settings.redis_url,
            principal_key=settings.principal_key,
            descriptor_set=descriptor_set or packaged_descriptor_set(),
            token_issuer=issuer,
            token_audience=token_audience,
            jwks_url=jwks_url,
            dev_issuer_dir=dev_issuer_dir,
            token_leeway_s=token_leeway_s,
            cors_origins=tuple(o.strip() for o in cors_origins if o.strip()),
            rate_limit_per_minute=rate_limit_per_minute,
            max_body_bytes=max_body_bytes,
            backend_timeout_s=backend_timeout_s,
            shutdown_grace_s=settings.shutdown_grace_s,
        )
