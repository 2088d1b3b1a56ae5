"""Process settings: one frozen object read from the environment and validated at start.

Only this module reads the environment, and only when `Settings.from_env` is called (from a
service's `main.py` or the command line). Every variable is listed in `VARIABLES`, which is also
what the README's configuration table documents. Secrets (keys) have no defaults: a process that
needs them refuses to start without them.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from common.errors import FieldViolation

SERVICES = ("availability", "booking", "eligibility", "waitlist", "notify", "gateway")


class SettingsError(Exception):
    """The environment does not describe a runnable process; lists every problem found."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = violations
        super().__init__(
            "invalid configuration: " + "; ".join(f"{v.field}: {v.description}" for v in violations)
        )


@dataclass(frozen=True)
class Variable:
    name: str
    description: str
    default: str | None = None
    secret: bool = False


VARIABLES: tuple[Variable, ...] = (
    Variable("MEDSCHED_DATABASE_URL", "PostgreSQL URL (postgresql://user@host:port/db)"),
    Variable("MEDSCHED_NATS_URL", "NATS URL with JetStream enabled (nats://host:port)"),
    Variable("MEDSCHED_REDIS_URL", "Redis URL (redis://host:port/db)"),
    Variable("MEDSCHED_GRPC_LISTEN", "host:port the gRPC server binds", "127.0.0.1:0"),
    Variable("MEDSCHED_HTTP_LISTEN", "host:port the REST gateway binds", "127.0.0.1:8443"),
    Variable(
        "MEDSCHED_METRICS_LISTEN", "host:port of the Prometheus scrape endpoint; empty: off", ""
    ),
    Variable("MEDSCHED_TLS_CA", "CA certificate (PEM) that signs service certificates", ""),
    Variable("MEDSCHED_TLS_CERT", "this process's certificate chain (PEM)", ""),
    Variable("MEDSCHED_TLS_KEY", "this process's private key (PEM)", "", secret=True),
    Variable("MEDSCHED_TLS_REQUIRE_CLIENT_CERT", "require mutual TLS from gRPC clients", "false"),
    Variable(
        "MEDSCHED_ENCRYPTION_KEYS",
        "PHI key ring 'kid:base64key,...' (32-byte AES-256 keys)",
        secret=True,
    ),
    Variable("MEDSCHED_ENCRYPTION_ACTIVE_KEY", "key id new ciphertexts are written under"),
    Variable("MEDSCHED_HASH_KEY", "base64 key (>= 32 bytes) for keyed lookup hashes", secret=True),
    Variable(
        "MEDSCHED_PRINCIPAL_KEY",
        "base64 key (>= 32 bytes) the gateway signs forwarded principals with",
        secret=True,
    ),
    Variable(
        "MEDSCHED_SERVICE_ADDRS",
        "where other services listen: 'booking=host:port,eligibility=host:port,...'",
        "",
    ),
    Variable("MEDSCHED_ELASTICSEARCH_URL", "optional Elasticsearch URL for the search backend", ""),
    Variable("MEDSCHED_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR", "INFO"),
    Variable("MEDSCHED_OTLP_ENDPOINT", "optional OTLP endpoint for traces", ""),
    Variable("MEDSCHED_SHUTDOWN_GRACE_S", "seconds in-flight RPCs get on SIGTERM", "10"),
    Variable(
        "MEDSCHED_ELIGIBILITY_ROUTES",
        "eligibility: payer routing table file (JSON or TOML); empty: no payer routed",
        "",
    ),
    Variable(
        "MEDSCHED_ELIGIBILITY_CACHE_TTL_S", "eligibility: how long answers are cached", "86400"
    ),
    Variable(
        "MEDSCHED_ELIGIBILITY_PAYER_TIMEOUT_S",
        "eligibility: longest a payer exchange may run (CORE real-time allows 20 s)",
        "20",
    ),
    Variable(
        "MEDSCHED_ELIGIBILITY_MAX_FLIGHTS",
        "eligibility: payer exchanges running at once per process",
        "512",
    ),
    Variable(
        "MEDSCHED_GRPC_REUSE_PORT",
        "let several processes share MEDSCHED_GRPC_LISTEN's port (SO_REUSEPORT)",
        "false",
    ),
    Variable(
        "MEDSCHED_AVAILABILITY_PROCESSES",
        "availability: search processes sharing the gRPC port, each with its own index",
        "1",
    ),
    Variable(
        "MEDSCHED_AVAILABILITY_ROLL_FORWARD_INTERVAL_S",
        "availability: how often the roll-forward of the horizon runs (also at start); 0: never",
        "3600",
    ),
    Variable(
        "MEDSCHED_BOOKING_BUDGET_S",
        "booking: longest a booking may take, eligibility included (caller deadlines cut it)",
        "2",
    ),
    Variable(
        "MEDSCHED_BOOKING_VERIFICATION_MAX_AGE_DAYS",
        "booking: age of an ACTIVE verification that allows PENDING_VERIFICATION when the"
        " payer is slow",
        "30",
    ),
    Variable(
        "MEDSCHED_BOOKING_RECHECK_INTERVAL_S",
        "booking: how often PENDING_VERIFICATION appointments are checked again",
        "300",
    ),
    Variable("MEDSCHED_GATEWAY_JWKS_URL", "gateway: HTTPS URL of the OAuth issuer's JWKS", ""),
    Variable(
        "MEDSCHED_GATEWAY_TOKEN_ISSUER", "gateway: expected `iss` (needed with a JWKS URL)", ""
    ),
    Variable("MEDSCHED_GATEWAY_TOKEN_AUDIENCE", "gateway: expected `aud`", "medsched"),
    Variable("MEDSCHED_GATEWAY_TOKEN_LEEWAY_S", "gateway: clock skew allowed on exp/iat", "60"),
    Variable(
        "MEDSCHED_GATEWAY_DEV_ISSUER_DIR",
        "gateway: folder of the development token issuer; empty turns it off",
        "",
    ),
    Variable("MEDSCHED_GATEWAY_CORS_ORIGINS", "gateway: comma-separated allowed origins or *", ""),
    Variable(
        "MEDSCHED_GATEWAY_RATE_LIMIT", "gateway: requests per minute per principal (0 off)", "600"
    ),
    Variable("MEDSCHED_GATEWAY_MAX_BODY_BYTES", "gateway: larger request bodies get 413", "262144"),
    Variable(
        "MEDSCHED_GATEWAY_BACKEND_TIMEOUT_S", "gateway: deadline of each call to a service", "5"
    ),
    Variable(
        "MEDSCHED_GATEWAY_DESCRIPTOR_SET",
        "gateway: descriptor set of the contracts to serve (default: packaged)",
        "",
    ),
)

# What each kind of process must be given; the gateway keeps no data and decrypts nothing.
_USES_DATABASE = frozenset({"availability", "booking", "eligibility", "waitlist", "notify", "cli"})
_USES_NATS = _USES_DATABASE
_USES_PHI_KEYS = _USES_DATABASE

_BY_NAME = {v.name: v for v in VARIABLES}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path
    require_client_cert: bool


@dataclass(frozen=True)
class Settings:
    """Everything a medsched process needs to start, already validated."""

    service: str
    database_url: str
    nats_url: str
    redis_url: str
    grpc_listen: str
    http_listen: str
    metrics_listen: str
    tls: TlsFiles | None
    encryption_keys: str = field(repr=False)
    encryption_active_key: str
    hash_key: bytes = field(repr=False)
    principal_key: bytes = field(repr=False)
    service_addrs: Mapping[str, str]
    elasticsearch_url: str
    log_level: str
    otlp_endpoint: str
    shutdown_grace_s: float
    eligibility_routes: str
    eligibility_cache_ttl_s: float
    eligibility_payer_timeout_s: float
    eligibility_max_flights: int
    grpc_reuse_port: bool
    availability_processes: int
    availability_roll_forward_interval_s: float
    booking_budget_s: float
    booking_verification_max_age_days: float
    booking_recheck_interval_s: float
    gateway_jwks_url: str
    gateway_token_issuer: str
    gateway_token_audience: str
    gateway_token_leeway_s: int
    gateway_dev_issuer_dir: str
    gateway_cors_origins: str
    gateway_rate_limit: int
    gateway_max_body_bytes: int
    gateway_backend_timeout_s: float
    gateway_descriptor_set: str

    @classmethod
    def from_env(cls, service: str, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate; raise `SettingsError` naming every bad or missing variable."""
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        if service not in SERVICES and service != "cli":
            reader.violation("service", f"unknown service {service!r}")
        uses_db = service in _USES_DATABASE
        uses_nats = service in _USES_NATS
        uses_keys = service in _USES_PHI_KEYS
        settings = cls(
            service=service,
            database_url=reader.url(
                "MEDSCHED_DATABASE_URL", ("postgresql", "postgres"), required=uses_db
            ),
            nats_url=reader.url("MEDSCHED_NATS_URL", ("nats", "tls"), required=uses_nats),
            redis_url=reader.url("MEDSCHED_REDIS_URL", ("redis", "rediss", "unix")),
            grpc_listen=reader.address("MEDSCHED_GRPC_LISTEN"),
            http_listen=reader.address("MEDSCHED_HTTP_LISTEN"),
            metrics_listen=reader.address("MEDSCHED_METRICS_LISTEN", allow_empty=True),
            tls=reader.tls(),
            encryption_keys=reader.required("MEDSCHED_ENCRYPTION_KEYS", needed=uses_keys),
            encryption_active_key=reader.required(
                "MEDSCHED_ENCRYPTION_ACTIVE_KEY", needed=uses_keys
            ),
            hash_key=reader.key("MEDSCHED_HASH_KEY", needed=uses_keys),
            principal_key=reader.key("MEDSCHED_PRINCIPAL_KEY"),
            service_addrs=reader.service_addrs(),
            elasticsearch_url=reader.optional_url("MEDSCHED_ELASTICSEARCH_URL", ("http", "https")),
            log_level=reader.choice("MEDSCHED_LOG_LEVEL", _LOG_LEVELS),
            otlp_endpoint=reader.value("MEDSCHED_OTLP_ENDPOINT"),
            shutdown_grace_s=reader.positive_float("MEDSCHED_SHUTDOWN_GRACE_S"),
            eligibility_routes=reader.existing_file("MEDSCHED_ELIGIBILITY_ROUTES"),
            eligibility_cache_ttl_s=reader.positive_float("MEDSCHED_ELIGIBILITY_CACHE_TTL_S"),
            eligibility_payer_timeout_s=reader.positive_float(
                "MEDSCHED_ELIGIBILITY_PAYER_TIMEOUT_S"
            ),
            eligibility_max_flights=reader.non_negative_int("MEDSCHED_ELIGIBILITY_MAX_FLIGHTS"),
            grpc_reuse_port=reader.boolean("MEDSCHED_GRPC_REUSE_PORT"),
            availability_processes=reader.positive_int("MEDSCHED_AVAILABILITY_PROCESSES"),
            availability_roll_forward_interval_s=reader.non_negative_float(
                "MEDSCHED_AVAILABILITY_ROLL_FORWARD_INTERVAL_S"
            ),
            booking_budget_s=reader.positive_float("MEDSCHED_BOOKING_BUDGET_S"),
            booking_verification_max_age_days=reader.positive_float(
                "MEDSCHED_BOOKING_VERIFICATION_MAX_AGE_DAYS"
            ),
            booking_recheck_interval_s=reader.positive_float("MEDSCHED_BOOKING_RECHECK_INTERVAL_S"),
            gateway_jwks_url=reader.optional_url("MEDSCHED_GATEWAY_JWKS_URL", ("https", "http")),
            gateway_token_issuer=reader.value("MEDSCHED_GATEWAY_TOKEN_ISSUER"),
            gateway_token_audience=reader.value("MEDSCHED_GATEWAY_TOKEN_AUDIENCE"),
            gateway_token_leeway_s=int(reader.positive_float("MEDSCHED_GATEWAY_TOKEN_LEEWAY_S")),
            gateway_dev_issuer_dir=reader.value("MEDSCHED_GATEWAY_DEV_ISSUER_DIR"),
            gateway_cors_origins=reader.value("MEDSCHED_GATEWAY_CORS_ORIGINS"),
            gateway_rate_limit=reader.non_negative_int("MEDSCHED_GATEWAY_RATE_LIMIT"),
            gateway_max_body_bytes=reader.non_negative_int("MEDSCHED_GATEWAY_MAX_BODY_BYTES"),
            gateway_backend_timeout_s=reader.positive_float("MEDSCHED_GATEWAY_BACKEND_TIMEOUT_S"),
            gateway_descriptor_set=reader.value("MEDSCHED_GATEWAY_DESCRIPTOR_SET"),
        )
        reader.raise_if_invalid()
        return settings

    def address_of(self, service: str) -> str:
        """The gRPC address of another service; a clear error when it is not configured."""
        try:
            return self.service_addrs[service]
        except KeyError:
            raise SettingsError(
                [FieldViolation("MEDSCHED_SERVICE_ADDRS", f"no address for {service!r}")]
            ) from None


class _Reader:
    """Reads variables, collecting every problem instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self._violations: list[FieldViolation] = []

    def violation(self, name: str, description: str) -> None:
        self._violations.append(FieldViolation(name, description))

    def raise_if_invalid(self) -> None:
        if self._violations:
            raise SettingsError(self._violations)

    def value(self, name: str) -> str:
        default = _BY_NAME[name].default
        return self._env.get(name, default if default is not None else "").strip()

    def required(self, name: str, *, needed: bool = True) -> str:
        value = self.value(name)
        if not value and needed:
            self.violation(name, "is required")
        return value

    def url(self, name: str, schemes: tuple[str, ...], *, required: bool = True) -> str:
        value = self.required(name, needed=required)
        if value and urlsplit(value).scheme not in schemes:
            self.violation(name, f"must be a URL with scheme {' or '.join(schemes)}")
        return value

    def optional_url(self, name: str, schemes: tuple[str, ...]) -> str:
        value = self.value(name)
        if value and urlsplit(value).scheme not in schemes:
            self.violation(name, f"must be a URL with scheme {' or '.join(schemes)}")
        return value

    def address(self, name: str, *, allow_empty: bool = False) -> str:
        value = self.value(name)
        if not value and allow_empty:
            return ""
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            self.violation(name, "must be host:port (port 0 picks a free port)")
        return value

    def key(self, name: str, *, needed: bool = True) -> bytes:
        raw = self.required(name, needed=needed)
        if not raw:
            return b""
        try:
            key = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            self.violation(name, "must be base64")
            return b""
        if len(key) < 32:
            self.violation(name, "must decode to at least 32 bytes")
        return key

    def choice(self, name: str, allowed: tuple[str, ...]) -> str:
        value = self.value(name).upper()
        if value not in allowed:
            self.violation(name, f"must be one of {', '.join(allowed)}")
        return value

    def positive_float(self, name: str) -> float:
        value = self.value(name)
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if number <= 0:
            self.violation(name, "must be a positive number")
        return number

    def existing_file(self, name: str) -> str:
        value = self.value(name)
        if value and not Path(value).is_file():
            self.violation(name, "file does not exist")
        return value

    def non_negative_float(self, name: str) -> float:
        value = self.value(name)
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if number < 0:
            self.violation(name, "must be a number >= 0")
        return number

    def positive_int(self, name: str) -> int:
        value = self.value(name)
        if not value.isdigit() or int(value) < 1:
            self.violation(name, "must be a whole number >= 1")
            return 1
        return int(value)

    def boolean(self, name: str) -> bool:
        value = self.value(name).lower()
        if value not in ("true", "false"):
            self.violation(name, "must be true or false")
        return value == "true"

    def non_negative_int(self, name: str) -> int:
        value = self.value(name)
        if not value.isdigit():
            self.violation(name, "must be a whole number >= 0")
            return 0
        return int(value)

    def service_addrs(self) -> dict[str, str]:
        raw = self.value("MEDSCHED_SERVICE_ADDRS")
        addrs: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in raw.split(","))):
            name, sep, addr = item.partition("=")
            if not sep or name not in SERVICES or ":" not in addr:
                self.violation("MEDSCHED_SERVICE_ADDRS", f"bad entry {item!r}: want name=host:port")
                continue
            addrs[name] = addr
        return addrs

    def tls(self) -> TlsFiles | None:
        paths = {
            n: self.value(n) for n in ("MEDSCHED_TLS_CA", "MEDSCHED_TLS_CERT", "MEDSCHED_TLS_KEY")
        }
        if not any(paths.values()):
            return None
        for name, value in paths.items():
            if not value:
                self.violation(name, "is required when any MEDSCHED_TLS_* variable is set")
            elif not Path(value).is_file():
                self.violation(name, "file does not exist")
        require = self.value("MEDSCHED_TLS_REQUIRE_CLIENT_CERT").lower()
        if require not in ("true", "false", "1", "0", "yes", "no"):
            self.violation("MEDSCHED_TLS_REQUIRE_CLIENT_CERT", "must be true or false")
        return TlsFiles(
            ca=Path(paths["MEDSCHED_TLS_CA"]),
            cert=Path(paths["MEDSCHED_TLS_CERT"]),
            key=Path(paths["MEDSCHED_TLS_KEY"]),
            require_client_cert=require in ("true", "1", "yes"),
        )
