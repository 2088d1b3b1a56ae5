"""Principals (who is calling), their signed forwarding from the gateway, and policy checks.

The gateway verifies the end user's OAuth token, builds a `Principal` and forwards it to the
services in the `x-medsched-principal` gRPC metadata entry, signed with a key shared by the
gateway and the services. Services trust only that signed value (or an mTLS peer identity),
never a client-set header: a caller who can reach a service directly cannot forge a principal
without the key.

Wire format: `<payload>.<signature>`, both base64url without padding, where payload is the
compact JSON (sorted keys, no spaces) of::

    {"v": 1, "sub": ..., "role": "patient|staff|admin|service", "org": [...], "loc": [...],
     "pat": ... or null, "iat": <unix seconds>, "exp": <unix seconds>}

and signature is HMAC-SHA-256 over `medsched.principal.v1.` + the payload's base64url text.
Tokens live for seconds (60 by default): they travel with one request, not a session.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from common.errors import PermissionDenied, Reason, Unauthenticated

PRINCIPAL_METADATA_KEY = "x-medsched-principal"

_FORMAT_VERSION = 1
_SIGNING_LABEL = b"medsched.principal.v1."
_MIN_KEY_BYTES = 32
# Staff scoped to hundreds of locations still fit; anything larger is not ours.
_MAX_TOKEN_CHARS = 16_384
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


class Role(enum.Enum):
    """What kind of caller a principal is."""

    PATIENT = "patient"
    STAFF = "staff"
    ADMIN = "admin"
    SERVICE = "service"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    `organization_ids` and `location_ids` scope staff: an empty `location_ids` means every
    location of their organizations. `patient_id` is set for, and only for, patients.
    """

    subject: str
    role: Role
    organization_ids: frozenset[str] = field(default_factory=frozenset)
    location_ids: frozenset[str] = field(default_factory=frozenset)
    patient_id: str | None = None

    def __post_init__(self) -> None:
        if not self.subject:
            raise ValueError("principal subject must not be empty")
        if not isinstance(self.role, Role):
            raise ValueError(f"principal role must be a Role, got {type(self.role).__name__}")
        if self.role is Role.PATIENT and not self.patient_id:
            raise ValueError("a patient principal needs a patient_id")
        if self.role is not Role.PATIENT and self.patient_id is not None:
            raise ValueError(f"a {self.role.value} principal must not carry a patient_id")
        # Accept any iterable of ids from callers while keeping the value hashable and frozen.
        object.__setattr__(self, "organization_ids", frozenset(self.organization_ids))
        object.__setattr__(self, "location_ids", frozenset(self.location_ids))


class InvalidPrincipal(Unauthenticated):
    """The forwarded principal is malformed, expired or not signed with our key.

    `reason` is a short fixed phrase; the token itself is never echoed.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"invalid principal metadata: {reason}",
            reasons=[Reason(code="INVALID_PRINCIPAL", description=reason)],
        )
        self.reason = reason


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(padded.encode("ascii"))


def _unix_seconds(now: datetime, name: str) -> int:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return int(now.timestamp())


def _payload(principal: Principal, issued_at: int, expires_at: int) -> dict[str, Any]:
    return {
        "v": _FORMAT_VERSION,
        "sub": principal.subject,
        "role": principal.role.value,
        "org": sorted(principal.organization_ids),
        "loc": sorted(principal.location_ids),
        "pat": principal.patient_id,
        "iat": issued_at,
        "exp": expires_at,
    }


def _str_list(value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidPrincipal("malformed payload")
    return value


def _principal_from(payload: object) -> tuple[Principal, int, int]:
    """(principal, issued at, expires at) from a decoded payload; InvalidPrincipal if bad."""
    if not isinstance(payload, dict):
        raise InvalidPrincipal("malformed payload")
    if payload.get("v") != _FORMAT_VERSION:
        raise InvalidPrincipal("unsupported version")
    subject, role, patient_id = payload.get("sub"), payload.get("role"), payload.get("pat")
    issued_at, expires_at = payload.get("iat"), payload.get("exp")
    if not isinstance(subject, str) or not isinstance(role, str):
        raise InvalidPrincipal("malformed payload")
    if patient_id is not None and not isinstance(patient_id, str):
        raise InvalidPrincipal("malformed payload")
    if type(issued_at) is not int or type(expires_at) is not int:
        raise InvalidPrincipal("malformed payload")
    try:
        principal = Principal(
            subject=subject,
            role=Role(role),
            organization_ids=frozenset(_str_list(payload.get("org"))),
            location_ids=frozenset(_str_list(payload.get("loc"))),
            patient_id=patient_id,
        )
    except ValueError as e:
        raise InvalidPrincipal("malformed payload") from e
    return principal, issued_at, expires_at


class PrincipalSigner:
    """Signs and verifies forwarded principals with a shared HMAC-SHA-256 key.

    `previous_keys` are accepted for verification only, so the shared key can be rotated
    without downtime: deploy the new key as `key` with the old one in `previous_keys`
    everywhere, then drop the old one. `leeway_s` absorbs clock skew between hosts.
    """

    __slots__ = ("_key", "_leeway_s", "_verify_keys")

    def __init__(
        self, key: bytes, *, previous_keys: Iterable[bytes] = (), leeway_s: int = 5
    ) -> None:
        keys = (key, *previous_keys)
        if any(not isinstance(k, bytes) or len(k) < _MIN_KEY_BYTES for k in keys):
            raise ValueError(f"principal signing keys must be at least {_MIN_KEY_BYTES} bytes")
        if leeway_s < 0:
            raise ValueError("leeway_s must not be negative")
        self._key = key
        self._verify_keys = keys
        self._leeway_s = leeway_s

    def __repr__(self) -> str:
        return f"PrincipalSigner(keys={len(self._verify_keys)}, leeway_s={self._leeway_s})"

    def sign(self, principal: Principal, *, now: datetime, ttl_s: int = 60) -> str:
        """The metadata value carrying `principal`, valid from `now` for `ttl_s` seconds."""
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        issued_at = _unix_seconds(now, "now")
        document = _payload(principal, issued_at, issued_at + ttl_s)
        encoded = _b64encode(
            json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")
        )
        return f"{encoded}.{_b64encode(self._mac(self._key, encoded))}"

    def verify(self, value: str, *, now: datetime) -> Principal:
        """The principal in `value` if it is well formed, signed by us and current."""
        current = _unix_seconds(now, "now")
        encoded, signature = self._split(value)
        if not any(
            hmac.compare_digest(self._mac(key, encoded), signature) for key in self._verify_keys
        ):
            raise InvalidPrincipal("bad signature")
        try:
            payload = json.loads(_b64decode(encoded))
        except (binascii.Error, ValueError) as e:
            raise InvalidPrincipal("malformed payload") from e
        principal, issued_at, expires_at = _principal_from(payload)
        if current >= expires_at + self._leeway_s:
            raise InvalidPrincipal("expired")
        if issued_at > current + self._leeway_s:
            raise InvalidPrincipal("issued in the future")
        return principal

    @staticmethod
    def _mac(key: bytes, encoded_payload: str) -> bytes:
        return hmac.digest(key, _SIGNING_LABEL + encoded_payload.encode("ascii"), hashlib.sha256)

    @staticmethod
    def _split(value: str) -> tuple[str, bytes]:
        if not isinstance(value, str) or not value or len(value) > _MAX_TOKEN_CHARS:
            raise InvalidPrincipal("malformed token")
        encoded, _, signature_text = value.partition(".")
        if not _BASE64URL.fullmatch(encoded) or not _BASE64URL.fullmatch(signature_text):
            raise InvalidPrincipal("malformed token")
        try:
            signature = _b64decode(signature_text)
        except (binascii.Error, ValueError) as e:
            raise InvalidPrincipal("malformed token") from e
        # The decoder ignores stray padding bits; insisting on the canonical text keeps one
        # signature from having several spellings.
        if _b64encode(signature) != signature_text:
            raise InvalidPrincipal("malformed token")
        return encoded, signature


def can_access_patient(
    principal: Principal, patient_id: str, *, organization_id: str | None = None
) -> bool:
    """Whether `principal` may see or act on records of `patient_id`.

    Patients reach only themselves. Staff reach a patient's records only through an
    organization they belong to: pass the organization that owns the record (e.g. the
    appointment's); without it staff are refused. Admins and services reach everyone.
    """
    if principal.role is Role.PATIENT:
        return principal.patient_id == patient_id
    if principal.role is Role.STAFF:
        return organization_id is not None and organization_id in principal.organization_ids
    return True


def can_access_organization(principal: Principal, organization_id: str) -> bool:
    """Whether `principal` may read or manage data of `organization_id`.

    Staff only within their organizations; admins and services everywhere; patients never
    (what patients see of an organization comes through public search, not this check).
    """
    if principal.role is Role.STAFF:
        return organization_id in principal.organization_ids
    return principal.role in (Role.ADMIN, Role.SERVICE)


def can_access_location(principal: Principal, organization_id: str, location_id: str) -> bool:
    """Whether `principal` may manage `location_id` of `organization_id`.

    Staff need the organization and, if their location scope is non-empty, the location.
    """
    if not can_access_organization(principal, organization_id):
        return False
    if principal.role is Role.STAFF and principal.location_ids:
        return location_id in principal.location_ids
    return True


def require_role(principal: Principal, *roles: Role) -> None:
    """Raise PermissionDenied unless `principal` has one of `roles`."""
    if not roles:
        raise ValueError("require_role needs at least one role")
    if principal.role not in roles:
        allowed = " or ".join(role.value for role in roles)
        raise PermissionDenied(f"this operation requires the {allowed} role")
