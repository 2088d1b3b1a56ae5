"""OAuth 2.0 bearer tokens: JWT verification against a JWKS, and claims -> `Principal`.

A token is accepted when all of these hold:

- its header names an accepted algorithm (RS256 or ES256; `none` and HMAC algorithms are
  never accepted, so a token cannot choose to be unsigned or signed with a public key),
- the signing key is found in the issuer's JWKS by `kid` (a key without `kid` is used only
  when the set has exactly one key) and fits the algorithm (`kty`, and `alg`/`use` if set),
- the signature verifies, and `iss`, `aud`, `exp`, `iat` and `sub` are present with the
  configured issuer and audience, not expired and not issued in the future, both within
  the configured clock-skew leeway.

medsched claims (besides the registered ones):

| claim          | meaning                                                              |
|----------------|----------------------------------------------------------------------|
| `role`         | `patient`, `staff`, `admin` or `service` (required)                  |
| `patient_id`   | the medsched patient id; required for, and only for, patients        |
| `org_ids`      | organizations a staff member belongs to (list of strings)            |
| `location_ids` | locations a staff member is limited to (empty: all of their orgs')   |

Remote key sets are fetched with a deadline, cached, refreshed when a token names an
unknown `kid` (at most once per `refresh_min_interval_s`, so unknown kids cannot make the
gateway hammer the issuer), and a stale set keeps serving while the issuer is unreachable.
Rejections carry a short fixed reason; the token is never logged or echoed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import jwt

from common.auth import Principal, Role
from common.errors import DependencyUnavailable, Reason, Unauthenticated

logger = logging.getLogger(__name__)

ACCEPTED_ALGORITHMS = ("RS256", "ES256")
_KEY_TYPES = {"RS256": "RSA", "ES256": "EC"}
_CURVES = {"ES256": "P-256"}
_MAX_TOKEN_CHARS = 16_384
_MAX_JWKS_BYTES = 1_048_576
_REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "sub"]


class InvalidToken(Unauthenticated):
    """The bearer token is missing, malformed, expired, or not ours; `reason` is fixed text."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"invalid bearer token: {reason}",
            reasons=[Reason(code="INVALID_TOKEN", description=reason)],
        )
        self.reason = reason


@dataclass(frozen=True)
class TokenPolicy:
    """What a token must say to be accepted."""

    issuer: str
    audience: str
    leeway_s: int = 60
    algorithms: tuple[str, ...] = ACCEPTED_ALGORITHMS

    def __post_init__(self) -> None:
        if not self.issuer or not self.audience:
            raise ValueError("a token policy needs an issuer and an audience")
        if self.leeway_s < 0:
            raise ValueError("leeway_s must not be negative")
        unsupported = set(self.algorithms) - set(ACCEPTED_ALGORITHMS)
        if unsupported or not self.algorithms:
            raise ValueError(f"algorithms must be a non-empty subset of {ACCEPTED_ALGORITHMS}")


class KeySource(Protocol):
    """Finds the public key for a token header's `kid` and `alg`."""

    async def key_for(self, kid: str | None, algorithm: str) -> jwt.PyJWK: ...


class StaticKeys:
    """A fixed JWKS (the development issuer's own key, or tests)."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._keys = _parse_jwks(jwks)

    async def key_for(self, kid: str | None, algorithm: str) -> jwt.PyJWK:
        return _select(self._keys, kid, algorithm)


class RemoteJwks:
    """The issuer's JWKS fetched over HTTPS, cached for `cache_ttl_s`."""

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 2.0,
        cache_ttl_s: float = 300.0,
        refresh_min_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not url.startswith("https://"):
            raise ValueError("the JWKS URL must be https://")
        self._url = url
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._ttl = cache_ttl_s
        self._min_interval = refresh_min_interval_s
        self._clock = clock
        self._keys: list[_Key] = []
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    async def key_for(self, kid: str | None, algorithm: str) -> jwt.PyJWK:
        if self._fresh():
            try:
                return _select(self._keys, kid, algorithm)
            except InvalidToken:
                pass  # maybe the issuer rotated keys: refresh below (rate limited)
        await self._refresh()
        return _select(self._keys, kid, algorithm)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _fresh(self) -> bool:
        return self._fetched_at is not None and self._clock() - self._fetched_at < self._ttl

    async def _refresh(self) -> None:
        async with self._lock:
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < self._min_interval:
                return  # someone just refreshed (or failed to): use what we have
            self._attempted_at = now
            try:
                keys = _parse_jwks(await self._fetch())
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                if not self._keys:
                    raise DependencyUnavailable("cannot verify tokens: key set unavailable") from e
                logger.warning(
                    "JWKS refresh failed; keeping the previous key set",
                    extra={"error_type": type(e).__name__},
                )
                return
            self._keys = keys
            self._fetched_at = now

    async def _fetch(self) -> Mapping[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        async with self._session.get(self._url, ssl=self._ssl or True) as response:
            if response.status != 200:
                raise ValueError(f"JWKS answered HTTP {response.status}")
            raw = await response.content.read(_MAX_JWKS_BYTES + 1)
        if len(raw) > _MAX_JWKS_BYTES:
            raise ValueError("JWKS document too large")
        document = json.loads(raw)
        if not isinstance(document, dict):
            raise ValueError("JWKS document is not a JSON object")
        return document


class TokenVerifier:
    """Verifies bearer tokens and turns their claims into a `Principal`.

    A client sends the same token with every request until it expires, and a signature
    check costs more than the rest of the gateway's own work on a search; so verified
    tokens are remembered (by SHA-256 of the token, never the token itself) until their
    `exp` plus the leeway, at most `cache_size` of them, oldest dropped first.
    """

    def __init__(
        self,
        keys: KeySource,
        policy: TokenPolicy,
        *,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._policy = policy
        self._cache_size = cache_size
        self._clock = clock
        self._verified: dict[bytes, tuple[Principal, float]] = {}

    async def verify(self, token: str) -> Principal:
        if not token or len(token) > _MAX_TOKEN_CHARS:
            raise InvalidToken("malformed token")
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._verified.get(digest)
        if cached is not None:
            principal, usable_until = cached
            if self._clock() < usable_until:
                return principal
            del self._verified[digest]
        principal, expires_at = await self._verify_signed(token)
        self._remember(digest, principal, expires_at + self._policy.leeway_s)
        return principal

    def _remember(self, digest: bytes, principal: Principal, usable_until: float) -> None:
        if self._cache_size <= 0:
            return
        while len(self._verified) >= self._cache_size:
            del self._verified[next(iter(self._verified))]
        self._verified[digest] = (principal, usable_until)

    async def _verify_signed(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise InvalidToken("malformed token") from e
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self._policy.algorithms:
            raise InvalidToken("signing algorithm not accepted")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("malformed token")
        key = await self._keys.key_for(kid, algorithm)
        claims = self._decode(token, key, algorithm)
        return principal_from_claims(claims), float(claims["exp"])

    def _decode(self, token: str, key: jwt.PyJWK, algorithm: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self._policy.audience,
                issuer=self._policy.issuer,
                leeway=self._policy.leeway_s,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError as e:
            raise InvalidToken("token expired") from e
        except jwt.ImmatureSignatureError as e:
            raise InvalidToken("token not valid yet") from e
        except jwt.InvalidAudienceError as e:
            raise InvalidToken("token is for another audience") from e
        except jwt.InvalidIssuerError as e:
            raise InvalidToken("token is from another issuer") from e
        except jwt.MissingRequiredClaimError as e:
            raise InvalidToken(f"token lacks the {e.claim!r} claim") from e
        except jwt.InvalidSignatureError as e:
            raise InvalidToken("bad signature") from e
        except jwt.PyJWTError as e:
            raise InvalidToken("malformed token") from e
        return claims


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """The principal a verified token's claims describe; `InvalidToken` if inconsistent."""
    subject = claims.get("sub")
    role_name = claims.get("role")
    if not isinstance(subject, str) or not subject:
        raise InvalidToken("token lacks a subject")
    try:
        role = Role(role_name)
    except ValueError as e:
        raise InvalidToken("token has no valid medsched role") from e
    patient_id = claims.get("patient_id")
    if patient_id is not None and not isinstance(patient_id, str):
        raise InvalidToken("patient_id claim must be a string")
    try:
        return Principal(
            subject=subject,
            role=role,
            organization_ids=frozenset(_string_list(claims, "org_ids")),
            location_ids=frozenset(_string_list(claims, "location_ids")),
            patient_id=patient_id or None,
        )
    except ValueError as e:
        # Principal names the inconsistency (e.g. a patient without patient_id); no values.
        raise InvalidToken(str(e)) from e


def _string_list(claims: Mapping[str, Any], name: str) -> list[str]:
    value = claims.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise InvalidToken(f"{name} claim must be a list of strings")
    return value


@dataclass(frozen=True)
class _Key:
    """A usable JWK with the members `_fits` checks."""

    kid: str | None
    kty: str
    alg: str | None
    crv: str | None
    jwk: jwt.PyJWK


def _parse_jwks(document: Mapping[str, Any]) -> list[_Key]:
    keys = document.get("keys")
    if not isinstance(keys, list):
        raise ValueError("JWKS document has no 'keys' list")
    parsed: list[_Key] = []
    for entry in keys:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        algorithm = entry.get("alg")
        if algorithm is not None and algorithm not in ACCEPTED_ALGORITHMS:
            continue
        try:
            jwk = jwt.PyJWK(entry, algorithm)
        except jwt.PyJWTError:
            # Keys we cannot use (other types or curves) are skipped, not fatal: issuers
            # publish keys for several consumers.
            continue
        parsed.append(
            _Key(
                kid=_optional_str(entry, "kid"),
                kty=str(entry.get("kty", "")),
                alg=_optional_str(entry, "alg"),
                crv=_optional_str(entry, "crv"),
                jwk=jwk,
            )
        )
    return parsed


def _optional_str(entry: Mapping[str, Any], name: str) -> str | None:
    value = entry.get(name)
    return value if isinstance(value, str) else None


def _select(keys: list[_Key], kid: str | None, algorithm: str) -> jwt.PyJWK:
    if kid is None:
        candidates = keys if len(keys) == 1 else []
    else:
        candidates = [key for key in keys if key.kid == kid]
    for key in candidates:
        if _fits(key, algorithm):
            return key.jwk
    raise InvalidToken("unknown signing key")


def _fits(key: _Key, algorithm: str) -> bool:
    if key.kty != _KEY_TYPES[algorithm] or (key.alg or algorithm) != algorithm:
        return False
    curve = _CURVES.get(algorithm)
    return curve is None or key.crv == curve
