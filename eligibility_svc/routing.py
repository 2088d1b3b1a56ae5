"""The payer routing table: where each payer is reached, how, and who we are to it.

A JSON or TOML file (chosen by its suffix) with two lists::

    [[payers]]
    payer_id = "SIMPAYER"                 # InsurancePlan.payer_id in requests
    endpoint = "https://127.0.0.1:8444/core/soap"
    transport = "soap"                    # "soap" (SOAP 1.2 + WS-Security) or "mime"
    sender_id = "MEDSCHED"                # CORE SenderID and ISA06/GS02
    receiver_id = "SIMPAYER"              # CORE ReceiverID and ISA08/GS03
    username = "medsched"                 # WS-Security UsernameToken / MIME UserName
    password = "..."                      # or password_file = "secrets/payer.txt"
    payer_name = "SIMULATED HEALTH PLAN"  # 270 loop 2100A NM103
    payer_identifier = "SIM001"           # 270 loop 2100A NM109 (qualifier PI)
    ca_file = "ca.crt"                    # optional: the only trusted CA; else system store
    client_cert = "..."                   # optional, with client_key: mutual TLS

    [[organizations]]
    organization_id = "org-1"             # "*" is the fallback for unlisted organizations
    name = "RIVERSIDE CLINIC"             # 270 loop 2100B NM103
    npi = "1234567893"                    # 270 loop 2100B NM109 (qualifier XX)
    time_zone = "America/New_York"        # "today" for checks without a service date

Relative paths are resolved against the file's folder. Endpoints must be HTTPS: the
exchange carries PHI and the password. Errors name the entry and key, never a secret.
"""

from __future__ import annotations

import enum
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import NoReturn
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from eligibility_svc.domain import npi_is_valid

FALLBACK_ORGANIZATION = "*"
# X12 identifiers travel in ISA06/ISA08 (15 characters) and must not hold delimiters.
_X12_ID = re.compile(r"[A-Za-z0-9 ._-]{1,15}")
_TEXT = re.compile(r"[^*~:^\x00-\x1f\x7f]{1,60}")


class Transport(enum.Enum):
    """CAQH CORE Phase II real-time message envelopes."""

    SOAP = "soap"
    MIME = "mime"


class RoutingConfigError(ValueError):
    """The routing table file is unreadable or an entry is invalid (entry and key named)."""


@dataclass(frozen=True)
class PayerRoute:
    """How to reach one payer (or the clearinghouse that answers for it)."""

    payer_id: str
    endpoint: str
    transport: Transport
    sender_id: str
    receiver_id: str
    username: str
    password: str = field(repr=False)
    payer_name: str
    payer_identifier: str
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None


@dataclass(frozen=True)
class ProviderIdentity:
    """Who asks: the organisation's name and NPI as the information receiver of a 270."""

    organization_id: str
    name: str
    npi: str
    time_zone: str = "UTC"


@dataclass(frozen=True)
class RoutingTable:
    """Payer routes and provider identities by id."""

    payers: Mapping[str, PayerRoute] = field(default_factory=dict)
    organizations: Mapping[str, ProviderIdentity] = field(default_factory=dict)

    def route(self, payer_id: str) -> PayerRoute | None:
        return self.payers.get(payer_id)

    def provider(self, organization_id: str) -> ProviderIdentity | None:
        found = self.organizations.get(organization_id)
        return found if found is not None else self.organizations.get(FALLBACK_ORGANIZATION)


def load_routing_table(path: Path) -> RoutingTable:
    """Read and validate the routing table at `path` (`.json` or `.toml`)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise RoutingConfigError(f"routing table {path}: cannot read ({e.strerror})") from e
    try:
        if path.suffix == ".json":
            document = json.loads(raw)
        elif path.suffix == ".toml":
            document = tomllib.loads(raw.decode("utf-8"))
        else:
            raise RoutingConfigError(f"routing table {path}: use a .json or .toml file")
    except (ValueError, UnicodeDecodeError):
        # The parsers' messages quote the offending text, which may be a password.
        raise RoutingConfigError(f"routing table {path}: not valid {path.suffix[1:]}") from None
    if not isinstance(document, dict):
        raise RoutingConfigError(f"routing table {path}: the top level must be a table")
    return parse_routing_table(document, base=path.parent)


def parse_routing_table(document: Mapping[str, object], *, base: Path) -> RoutingTable:
    """Validate a routing table already read into plain values."""
    payers: dict[str, PayerRoute] = {}
    for index, entry in enumerate(_entries(document, "payers")):
        reader = _Entry(entry, f"payers[{index}]", base)
        route = _route(reader)
        if route.payer_id in payers:
            raise RoutingConfigError(f"payers[{index}]: payer_id is listed twice")
        payers[route.payer_id] = route
    organizations: dict[str, ProviderIdentity] = {}
    for index, entry in enumerate(_entries(document, "organizations")):
        reader = _Entry(entry, f"organizations[{index}]", base)
        provider = _provider(reader)
        if provider.organization_id in organizations:
            raise RoutingConfigError(f"organizations[{index}]: organization_id is listed twice")
        organizations[provider.organization_id] = provider
    return RoutingTable(MappingProxyType(payers), MappingProxyType(organizations))


def _entries(document: Mapping[str, object], key: str) -> list[Mapping[str, object]]:
    value = document.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise RoutingConfigError(f"{key}: must be a list of tables")
    return value


def _route(entry: _Entry) -> PayerRoute:
    endpoint = entry.text("endpoint", pattern=None)
    parts = urlsplit(endpoint)
    if parts.scheme != "https" or not parts.hostname:
        entry.fail("endpoint", "must be an https:// URL (the exchange carries PHI)")
    transport_name = entry.text("transport", pattern=None).lower()
    try:
        transport = Transport(transport_name)
    except ValueError:
        entry.fail("transport", "must be soap or mime")
    client_cert, client_key = entry.path("client_cert"), entry.path("client_key")
    if (client_cert is None) != (client_key is None):
        entry.fail("client_cert", "client_cert and client_key go together")
    return PayerRoute(
        payer_id=entry.text("payer_id", pattern=_TEXT),
        endpoint=endpoint,
        transport=transport,
        sender_id=entry.text("sender_id", pattern=_X12_ID),
        receiver_id=entry.text("receiver_id", pattern=_X12_ID),
        username=entry.text("username", pattern=None),
        password=entry.secret("password"),
        payer_name=entry.text("payer_name", pattern=_TEXT),
        payer_identifier=entry.text("payer_identifier", pattern=_TEXT),
        ca_file=entry.path("ca_file"),
        client_cert=client_cert,
        client_key=client_key,
    )


def _provider(entry: _Entry) -> ProviderIdentity:
    npi = entry.text("npi", pattern=None)
    if not npi_is_valid(npi):
        entry.fail("npi", "must be a 10-digit NPI with a valid check digit")
    time_zone = entry.optional_text("time_zone") or "UTC"
    try:
        ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        entry.fail("time_zone", "must be an IANA time zone such as America/New_York")
    return ProviderIdentity(
        organization_id=entry.text("organization_id", pattern=None),
        name=entry.text("name", pattern=_TEXT),
        npi=npi,
        time_zone=time_zone,
    )


class _Entry:
    """Typed access to one table of the file, with errors naming `where` and the key."""

    def __init__(self, values: Mapping[str, object], where: str, base: Path) -> None:
        self._values = values
        self._where = where
        self._base = base

    def fail(self, key: str, problem: str) -> NoReturn:
        raise RoutingConfigError(f"{self._where}.{key}: {problem}")

    def optional_text(self, key: str) -> str | None:
        value = self._values.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(key, "must be a non-empty string")
        return value.strip()

    def text(self, key: str, *, pattern: re.Pattern[str] | None) -> str:
        value = self.optional_text(key)
        if value is None:
            self.fail(key, "is required")
        if pattern is not None and not pattern.fullmatch(value):
            self.fail(key, "has characters or a length X12 cannot carry")
        return value

    def secret(self, key: str) -> str:
        inline = self._values.get(key)
        from_file = self.path(f"{key}_file")
        if (inline is None) == (from_file is None):
            self.fail(key, f"give exactly one of {key} and {key}_file")
        if from_file is not None:
            try:
                inline = from_file.read_text(encoding="utf-8").strip()
            except OSError as e:
                raise RoutingConfigError(
                    f"{self._where}.{key}_file: cannot read ({e.strerror})"
                ) from e
        if not isinstance(inline, str) or not inline:
            self.fail(key, "must be a non-empty string")
        return inline

    def path(self, key: str) -> Path | None:
        value = self.optional_text(key)
        if value is None:
            return None
        path = Path(value)
        return path if path.is_absolute() else self._base / path
