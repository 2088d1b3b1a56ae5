"""Unit tests for principals, their signed forwarding and the policy helpers (common.auth)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest

from common.auth import (
    PRINCIPAL_METADATA_KEY,
    InvalidPrincipal,
    Principal,
    PrincipalSigner,
    Role,
    can_access_location,
    can_access_organization,
    can_access_patient,
    require_role,
)
from common.errors import PermissionDenied, Unauthenticated

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
NOW = datetime(2026, 3, 9, 14, 30, tzinfo=UTC)

PATIENT = Principal(subject="user-17", role=Role.PATIENT, patient_id="pat-17")
STAFF = Principal(
    subject="user-3",
    role=Role.STAFF,
    organization_ids=frozenset({"org-a", "org-b"}),
    location_ids=frozenset({"loc-1"}),
)
ORG_STAFF = Principal(subject="user-4", role=Role.STAFF, organization_ids=frozenset({"org-a"}))
ADMIN = Principal(subject="user-1", role=Role.ADMIN)
SERVICE = Principal(subject="waitlist_svc", role=Role.SERVICE)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def test_metadata_key_is_lower_case_grpc_header() -> None:
    assert PRINCIPAL_METADATA_KEY == "x-medsched-principal"


@pytest.mark.parametrize("principal", [PATIENT, STAFF, ORG_STAFF, ADMIN, SERVICE])
def test_signed_principal_verifies_to_the_same_principal(principal: Principal) -> None:
    signer = PrincipalSigner(KEY)

    token = signer.sign(principal, now=NOW)

    assert signer.verify(token, now=NOW + timedelta(seconds=30)) == principal


def test_payload_is_canonical_compact_json() -> None:
    token = PrincipalSigner(KEY).sign(STAFF, now=NOW, ttl_s=60)
    encoded = token.split(".")[0]

    payload = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))

    issued = int(NOW.timestamp())
    assert payload == (
        b'{"exp":%d,"iat":%d,"loc":["loc-1"],"org":["org-a","org-b"],'
        b'"pat":null,"role":"staff","sub":"user-3","v":1}' % (issued + 60, issued)
    )


def test_signing_is_deterministic_for_the_same_instant() -> None:
    signer = PrincipalSigner(KEY)

    assert signer.sign(STAFF, now=NOW) == signer.sign(STAFF, now=NOW)


def test_changed_payload_is_rejected_as_bad_signature() -> None:
    signer = PrincipalSigner(KEY)
    token = signer.sign(PATIENT, now=NOW)
    signature = token.split(".")[1]
    forged = json.dumps(
        {
            "v": 1,
            "sub": "user-17",
            "role": "admin",
            "org": [],
            "loc": [],
            "pat": None,
            "iat": int(NOW.timestamp()),
            "exp": int(NOW.timestamp()) + 60,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()

    with pytest.raises(InvalidPrincipal, match="bad signature"):
        signer.verify(f"{b64url(forged)}.{signature}", now=NOW)


def test_any_changed_character_is_rejected() -> None:
    signer = PrincipalSigner(KEY)
    token = signer.sign(STAFF, now=NOW)

    for position, char in enumerate(token):
        replacement = "A" if char != "A" else "B"
        tampered = token[:position] + replacement + token[position + 1 :]
        with pytest.raises(InvalidPrincipal):
            signer.verify(tampered, now=NOW)


def test_token_signed_with_another_key_is_rejected() -> None:
    token = PrincipalSigner(OTHER_KEY).sign(ADMIN, now=NOW)

    with pytest.raises(InvalidPrincipal, match="bad signature"):
        PrincipalSigner(KEY).verify(token, now=NOW)


def test_previous_key_still_verifies_during_rotation() -> None:
    old_token = PrincipalSigner(OTHER_KEY).sign(ADMIN, now=NOW)
    rotated = PrincipalSigner(KEY, previous_keys=[OTHER_KEY])

    assert rotated.verify(old_token, now=NOW) == ADMIN
    new_token = rotated.sign(ADMIN, now=NOW)
    with pytest.raises(InvalidPrincipal, match="bad signature"):
        PrincipalSigner(OTHER_KEY).verify(new_token, now=NOW)


def test_token_is_valid_until_expiry_plus_leeway_and_not_after() -> None:
    signer = PrincipalSigner(KEY, leeway_s=5)
    token = signer.sign(PATIENT, now=NOW, ttl_s=60)

    assert signer.verify(token, now=NOW + timedelta(seconds=64)) == PATIENT
    with pytest.raises(InvalidPrincipal, match="expired"):
        signer.verify(token, now=NOW + timedelta(seconds=65))


def test_without_leeway_token_expires_at_ttl() -> None:
    signer = PrincipalSigner(KEY, leeway_s=0)
    token = signer.sign(PATIENT, now=NOW, ttl_s=10)

    assert signer.verify(token, now=NOW + timedelta(seconds=9)) == PATIENT
    with pytest.raises(InvalidPrincipal, match="expired"):
        signer.verify(token, now=NOW + timedelta(seconds=10))


def test_token_issued_beyond_clock_skew_in_the_future_is_rejected() -> None:
    signer = PrincipalSigner(KEY, leeway_s=5)
    token = signer.sign(PATIENT, now=NOW + timedelta(seconds=30))

    with pytest.raises(InvalidPrincipal, match="issued in the future"):
        signer.verify(token, now=NOW)
    assert signer.verify(token, now=NOW + timedelta(seconds=25)) == PATIENT


@pytest.mark.parametrize(
    "value",
    [
        "",
        "no-dot-at-all",
        ".",
        "abc.",
        ".abc",
        "a.b.c",
        "payload.sig nature",
        "pay/load.signature",
        "x" * 20_000 + ".abc",
        "påyload.signature",
    ],
)
def test_malformed_tokens_are_rejected_without_echoing_them(value: str) -> None:
    with pytest.raises(InvalidPrincipal, match="malformed token") as caught:
        PrincipalSigner(KEY).verify(value, now=NOW)

    assert caught.value.reason == "malformed token"
    if value:
        assert value not in str(caught.value)


def test_validly_signed_garbage_payload_is_rejected_as_malformed() -> None:
    payload = b'{"exp":2,"iat":1,"loc":[],"org":[],"pat":null,"role":"wizard","sub":"x","v":1}'
    encoded = b64url(payload)
    # Signed exactly as the module docstring documents the wire format.
    mac = hmac.digest(KEY, b"medsched.principal.v1." + encoded.encode(), hashlib.sha256)

    with pytest.raises(InvalidPrincipal, match="malformed payload"):
        PrincipalSigner(KEY).verify(f"{encoded}.{b64url(mac)}", now=NOW)


def test_error_message_never_contains_the_token() -> None:
    signer = PrincipalSigner(KEY)
    token = PrincipalSigner(OTHER_KEY).sign(PATIENT, now=NOW)

    with pytest.raises(InvalidPrincipal) as caught:
        signer.verify(token, now=NOW)

    assert token.split(".")[0] not in str(caught.value)
    assert token.split(".")[1] not in str(caught.value)
    assert "pat-17" not in str(caught.value)


def test_invalid_principal_is_an_unauthenticated_domain_error() -> None:
    assert issubclass(InvalidPrincipal, Unauthenticated)
    assert InvalidPrincipal("expired").grpc_code_name == "UNAUTHENTICATED"


def test_signer_refuses_short_keys_and_naive_times() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        PrincipalSigner(bytes(16))
    with pytest.raises(ValueError, match="at least 32 bytes"):
        PrincipalSigner(KEY, previous_keys=[b"short"])
    with pytest.raises(ValueError, match="timezone-aware"):
        PrincipalSigner(KEY).sign(ADMIN, now=datetime(2026, 3, 9, 14, 30))
    with pytest.raises(ValueError, match="ttl_s must be positive"):
        PrincipalSigner(KEY).sign(ADMIN, now=NOW, ttl_s=0)


def test_principal_invariants_are_checked() -> None:
    with pytest.raises(ValueError, match="needs a patient_id"):
        Principal(subject="u", role=Role.PATIENT)
    with pytest.raises(ValueError, match="must not carry a patient_id"):
        Principal(subject="u", role=Role.STAFF, patient_id="pat-1")
    with pytest.raises(ValueError, match="subject must not be empty"):
        Principal(subject="", role=Role.ADMIN)


def test_principal_ids_are_frozen_sets_even_when_given_lists() -> None:
    principal = Principal(
        subject="u",
        role=Role.STAFF,
        organization_ids=["org-a", "org-a"],  # type: ignore[arg-type]
    )

    assert principal.organization_ids == frozenset({"org-a"})
    assert hash(principal) == hash(Principal("u", Role.STAFF, frozenset({"org-a"})))


def test_patient_reaches_only_their_own_records() -> None:
    assert can_access_patient(PATIENT, "pat-17")
    assert not can_access_patient(PATIENT, "pat-18")
    assert not can_access_patient(PATIENT, "pat-18", organization_id="org-a")


def test_staff_reach_patients_only_through_their_organizations() -> None:
    assert can_access_patient(STAFF, "pat-17", organization_id="org-a")
    assert not can_access_patient(STAFF, "pat-17", organization_id="org-z")
    assert not can_access_patient(STAFF, "pat-17")


def test_admins_and_services_reach_every_patient() -> None:
    assert can_access_patient(ADMIN, "pat-17")
    assert can_access_patient(SERVICE, "pat-17")


def test_organization_access_by_role() -> None:
    assert can_access_organization(STAFF, "org-b")
    assert not can_access_organization(STAFF, "org-z")
    assert not can_access_organization(PATIENT, "org-a")
    assert can_access_organization(ADMIN, "org-z")
    assert can_access_organization(SERVICE, "org-z")


def test_location_scope_limits_staff_with_listed_locations() -> None:
    assert can_access_location(STAFF, "org-a", "loc-1")
    assert not can_access_location(STAFF, "org-a", "loc-2")
    assert not can_access_location(STAFF, "org-z", "loc-1")
    assert can_access_location(ORG_STAFF, "org-a", "loc-2")
    assert not can_access_location(ORG_STAFF, "org-b", "loc-2")
    assert not can_access_location(PATIENT, "org-a", "loc-1")
    assert can_access_location(ADMIN, "org-z", "loc-9")


def test_require_role_passes_listed_roles_and_refuses_others() -> None:
    require_role(ADMIN, Role.ADMIN)
    require_role(STAFF, Role.STAFF, Role.ADMIN)

    with pytest.raises(PermissionDenied, match="requires the staff or admin role"):
        require_role(PATIENT, Role.STAFF, Role.ADMIN)
    with pytest.raises(ValueError, match="at least one role"):
        require_role(ADMIN)
