"""Unit tests for bearer token verification and the development issuer."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from common.auth import Principal, Role
from gateway.auth import InvalidToken, StaticKeys, TokenPolicy, TokenVerifier
from gateway.dev_issuer import (
    DEV_AUDIENCE,
    DEV_ISSUER,
    DevIssuer,
    dev_principal,
    load_or_create,
)

ISSUER = "https://login.example.test/"
AUDIENCE = "medsched-api"
POLICY = TokenPolicy(issuer=ISSUER, audience=AUDIENCE, leeway_s=60)


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    jwk.update(kid=kid, alg=alg, use="sig")
    return jwk


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-17",
        "iat": now,
        "exp": now + 300,
        "role": "patient",
        "patient_id": "pat-17",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


RSA_KEY = rsa_key()
EC_KEY = ec_key()
KEYS = StaticKeys(
    {"keys": [public_jwk(RSA_KEY, "rsa-1", "RS256"), public_jwk(EC_KEY, "ec-1", "ES256")]}
)
VERIFIER = TokenVerifier(KEYS, POLICY)


def rs256(payload: dict[str, Any], kid: str = "rsa-1", key: Any = RSA_KEY) -> str:
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})


async def refused(token: str) -> str:
    with pytest.raises(InvalidToken) as caught:
        await VERIFIER.verify(token)
    return caught.value.reason


async def test_rs256_token_becomes_patient_principal() -> None:
    principal = await VERIFIER.verify(rs256(claims()))

    assert principal == Principal(subject="user-17", role=Role.PATIENT, patient_id="pat-17")


async def test_es256_token_becomes_scoped_staff_principal() -> None:
    token = jwt.encode(
        claims(role="staff", patient_id=None, org_ids=["org-a"], location_ids=["loc-1"]),
        EC_KEY,
        algorithm="ES256",
        headers={"kid": "ec-1"},
    )

    principal = await VERIFIER.verify(token)

    assert principal == Principal(
        subject="user-17",
        role=Role.STAFF,
        organization_ids=frozenset({"org-a"}),
        location_ids=frozenset({"loc-1"}),
    )


async def test_expired_token_is_refused() -> None:
    now = int(time.time())

    assert await refused(rs256(claims(iat=now - 900, exp=now - 120))) == "token expired"


async def test_token_expired_within_the_leeway_is_accepted() -> None:
    now = int(time.time())

    principal = await VERIFIER.verify(rs256(claims(iat=now - 900, exp=now - 30)))

    assert principal.subject == "user-17"


async def test_token_issued_in_the_future_beyond_the_leeway_is_refused() -> None:
    now = int(time.time())

    assert await refused(rs256(claims(iat=now + 600, exp=now + 900))) == "token not valid yet"


async def test_wrong_audience_is_refused() -> None:
    assert await refused(rs256(claims(aud="other-api"))) == "token is for another audience"


async def test_wrong_issuer_is_refused() -> None:
    assert await refused(rs256(claims(iss="https://evil.test/"))) == "token is from another issuer"


async def test_signature_by_another_key_with_our_kid_is_refused() -> None:
    assert await refused(rs256(claims(), key=rsa_key())) == "bad signature"


async def test_alg_none_is_refused() -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT","kid":"rsa-1"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    token = f"{header.decode()}.{body.decode()}."

    assert await refused(token) == "signing algorithm not accepted"


async def test_hmac_token_keyed_with_the_public_key_is_refused() -> None:
    token = jwt.encode(claims(), "a-shared-secret-of-enough-length!", algorithm="HS256")

    assert await refused(token) == "signing algorithm not accepted"


async def test_es256_header_with_an_rsa_kid_is_refused() -> None:
    token = jwt.encode(claims(), EC_KEY, algorithm="ES256", headers={"kid": "rsa-1"})

    assert await refused(token) == "unknown signing key"


async def test_unknown_kid_is_refused() -> None:
    assert await refused(rs256(claims(), kid="rsa-9")) == "unknown signing key"


@pytest.mark.parametrize("missing", ["exp", "iat", "sub", "aud", "iss"])
async def test_token_missing_a_registered_claim_is_refused(missing: str) -> None:
    reason = await refused(rs256(claims(**{missing: None})))

    assert missing in reason


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"role": "superuser"}, "token has no valid medsched role"),
        ({"role": None}, "token has no valid medsched role"),
        ({"patient_id": None}, "a patient principal needs a patient_id"),
        ({"role": "admin"}, "a admin principal must not carry a patient_id"),
        ({"role": "staff", "patient_id": None, "org_ids": "org-a"}, "org_ids claim must be a list"),
    ],
)
async def test_inconsistent_medsched_claims_are_refused(
    overrides: dict[str, Any], reason: str
) -> None:
    assert reason in await refused(rs256(claims(**overrides)))


async def test_garbage_is_refused_as_malformed() -> None:
    assert await refused("not.a.token") == "malformed token"
    assert await refused("") == "malformed token"


def test_policy_refuses_algorithms_outside_the_accepted_set() -> None:
    with pytest.raises(ValueError, match="algorithms"):
        TokenPolicy(issuer=ISSUER, audience=AUDIENCE, algorithms=("HS256",))


# --- development issuer ------------------------------------------------------------------


def test_dev_issuer_key_is_made_once_and_kept(tmp_path: Path) -> None:
    first = load_or_create(tmp_path / "dev-issuer")
    second = load_or_create(tmp_path / "dev-issuer")

    assert first.key_id == second.key_id
    key_file = tmp_path / "dev-issuer" / "es256-key.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert list((tmp_path / "dev-issuer").iterdir()) == [key_file]


async def test_dev_token_verifies_against_the_dev_jwks(tmp_path: Path) -> None:
    issuer: DevIssuer = load_or_create(tmp_path)
    verifier = TokenVerifier(
        StaticKeys(issuer.jwks()), TokenPolicy(issuer=DEV_ISSUER, audience=DEV_AUDIENCE)
    )
    principal = dev_principal(Role.STAFF, "nurse-1", organization_ids=["org-a"])

    token = issuer.mint(principal, now=datetime.now(UTC))

    assert await verifier.verify(token) == principal
    assert jwt.get_unverified_header(token)["kid"] == issuer.key_id


async def test_dev_token_of_another_data_folder_is_refused(tmp_path: Path) -> None:
    ours = load_or_create(tmp_path / "a")
    theirs = load_or_create(tmp_path / "b")
    verifier = TokenVerifier(
        StaticKeys(ours.jwks()), TokenPolicy(issuer=DEV_ISSUER, audience=DEV_AUDIENCE)
    )

    token = theirs.mint(dev_principal(Role.ADMIN, "root"), now=datetime.now(UTC))

    with pytest.raises(InvalidToken, match="unknown signing key"):
        await verifier.verify(token)


def test_dev_patient_without_patient_id_is_its_subject() -> None:
    assert dev_principal(Role.PATIENT, "pat-3").patient_id == "pat-3"
    assert dev_principal(Role.PATIENT, "u-3", patient_id="pat-9").patient_id == "pat-9"
    assert dev_principal(Role.ADMIN, "u-4").patient_id is None


def test_dev_token_expires_after_its_ttl(tmp_path: Path) -> None:
    issuer = load_or_create(tmp_path)
    now = datetime(2026, 1, 1, tzinfo=UTC)

    token = issuer.mint(dev_principal(Role.ADMIN, "root"), now=now, ttl=timedelta(minutes=5))

    payload = jwt.decode(token, options={"verify_signature": False})
    assert payload["exp"] - payload["iat"] == 300
    assert payload["iss"] == DEV_ISSUER
    assert payload["aud"] == DEV_AUDIENCE


class CountingKeys:
    """The RSA test key, counting how often a signature check asked for it."""

    def __init__(self) -> None:
        self.lookups = 0

    async def key_for(self, kid: str | None, algorithm: str) -> jwt.PyJWK:
        self.lookups += 1
        return await KEYS.key_for(kid, algorithm)


async def test_verified_token_is_remembered_until_it_expires() -> None:
    now = time.time()
    clock = [now]
    keys = CountingKeys()
    verifier = TokenVerifier(keys, POLICY, clock=lambda: clock[0])
    token = rs256(claims(exp=int(now) + 100))

    first = await verifier.verify(token)
    second = await verifier.verify(token)
    clock[0] = now + 100 + POLICY.leeway_s + 1
    third = await verifier.verify(token)

    assert first == second == third
    assert keys.lookups == 2  # the second call was answered from memory, the third was not


async def test_remembered_tokens_are_bounded() -> None:
    keys = CountingKeys()
    verifier = TokenVerifier(keys, POLICY, cache_size=2)
    tokens = [rs256(claims(sub=f"user-{i}")) for i in range(3)]

    for token in tokens:
        await verifier.verify(token)
    await verifier.verify(tokens[0])  # evicted as the oldest: checked again
    await verifier.verify(tokens[2])  # still remembered

    assert keys.lookups == 4
