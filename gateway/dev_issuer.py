"""The development token issuer: an ES256 key pair in the data folder, a JWKS, and minting.

`medsched up` runs the gateway with this issuer so curl examples work without an identity
provider: `medsched token --role patient --subject ID` mints a token with the private key
kept in `<data dir>/dev-issuer/`, and the gateway verifies it with the public half (and
publishes that as `/.well-known/jwks.json`). The key is made once (0600, written to a
temporary file and linked into place so a concurrent reader never sees half a key) and kept,
so tokens stay valid across restarts. It is for development only: production gateways
verify tokens of the organisation's own OAuth issuer through its JWKS URL.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from common.auth import Principal, Role

DEV_ISSUER = "urn:medsched:dev-issuer"
DEV_AUDIENCE = "medsched"
KEY_FILE = "es256-key.pem"
FOLDER = "dev-issuer"
DEFAULT_TTL = timedelta(hours=12)
_ALGORITHM = "ES256"


class DevIssuerError(Exception):
    """The development issuer's key cannot be read or made; names the file and the reason."""


@dataclass(frozen=True)
class DevIssuer:
    """The development issuer's key pair and identity."""

    private_key: ec.EllipticCurvePrivateKey
    issuer: str = DEV_ISSUER
    audience: str = DEV_AUDIENCE

    @property
    def key_id(self) -> str:
        """RFC 7638 JWK thumbprint of the public key: stable for the life of the key."""
        public = self._public_numbers()
        canonical = json.dumps(
            {"crv": "P-256", "kty": "EC", "x": public["x"], "y": public["y"]},
            separators=(",", ":"),
            sort_keys=True,
        )
        return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())

    def jwks(self) -> dict[str, Any]:
        """The public key as a JWKS document."""
        public = self._public_numbers()
        key = {
            "kty": "EC",
            "crv": "P-256",
            "x": public["x"],
            "y": public["y"],
            "kid": self.key_id,
            "use": "sig",
            "alg": _ALGORITHM,
        }
        return {"keys": [key]}

    def mint(self, principal: Principal, *, now: datetime, ttl: timedelta = DEFAULT_TTL) -> str:
        """A signed access token for `principal`, valid from `now` for `ttl`."""
        if ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": principal.subject,
            "iat": int(now.timestamp()),
            "exp": int((now + ttl).timestamp()),
            "jti": uuid.uuid4().hex,
            "role": principal.role.value,
        }
        if principal.patient_id is not None:
            claims["patient_id"] = principal.patient_id
        if principal.organization_ids:
            claims["org_ids"] = sorted(principal.organization_ids)
        if principal.location_ids:
            claims["location_ids"] = sorted(principal.location_ids)
        return jwt.encode(
            claims, self.private_key, algorithm=_ALGORITHM, headers={"kid": self.key_id}
        )

    def _public_numbers(self) -> dict[str, str]:
        numbers = self.private_key.public_key().public_numbers()
        return {
            "x": _b64url(numbers.x.to_bytes(32, "big")),
            "y": _b64url(numbers.y.to_bytes(32, "big")),
        }


def dev_issuer_folder(data_dir: Path) -> Path:
    """Where the development issuer of a `medsched up` data folder keeps its key."""
    return data_dir / FOLDER


def load_or_create(folder: Path) -> DevIssuer:
    """The issuer whose key is in `folder`, making the key on first use."""
    path = folder / KEY_FILE
    if not path.exists():
        _create_key(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise DevIssuerError(f"development issuer key {path}: cannot be loaded") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise DevIssuerError(f"development issuer key {path}: not a P-256 EC private key")
    return DevIssuer(private_key=key)


def _create_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        # link() fails if another process made the key first; theirs wins, ours goes.
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def dev_principal(
    role: Role,
    subject: str,
    *,
    patient_id: str | None = None,
    organization_ids: Iterable[str] = (),
    location_ids: Iterable[str] = (),
) -> Principal:
    """The principal a `medsched token` command line describes.

    Patients without an explicit patient id use their subject as the id, which is how the
    demo data names patients.
    """
    if role is Role.PATIENT and not patient_id:
        patient_id = subject
    return Principal(
        subject=subject,
        role=role,
        organization_ids=frozenset(organization_ids),
        location_ids=frozenset(location_ids),
        patient_id=patient_id if role is Role.PATIENT else None,
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
