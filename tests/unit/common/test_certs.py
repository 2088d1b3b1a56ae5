"""The development PKI: a valid chain per component, reused while fresh, reissued when not."""

from __future__ import annotations

import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.certs import COMPONENTS, LEAF_VALIDITY, RENEW_BEFORE, DevPki, ensure_dev_pki

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def pki(tmp_path: Path) -> DevPki:
    return ensure_dev_pki(tmp_path / "pki", now=NOW)


def test_ca_is_a_ten_year_certificate_signing_authority(pki: DevPki) -> None:
    ca = _cert(pki.ca_cert)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert constraints.critical
    assert constraints.value.ca
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert ca.not_valid_after_utc - ca.not_valid_before_utc >= timedelta(days=3650)
    ca.verify_directly_issued_by(ca)  # self-signed


def test_every_component_has_a_leaf_signed_by_the_ca(pki: DevPki) -> None:
    ca = _cert(pki.ca_cert)
    assert set(pki.leaves) == set(COMPONENTS)
    for component in COMPONENTS:
        leaf = _cert(pki.cert(component))
        leaf.verify_directly_issued_by(ca)
        assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == component
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert leaf.not_valid_before_utc <= NOW < leaf.not_valid_after_utc


def test_leaf_serves_both_ends_of_mutual_tls_on_local_names(pki: DevPki) -> None:
    leaf = _cert(pki.cert("svc-booking"))
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "svc-booking"}
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }


def test_private_keys_are_readable_by_the_owner_only(pki: DevPki) -> None:
    for path in [pki.folder / "ca.key", *(pki.key(c) for c in COMPONENTS)]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_key_file_matches_its_certificate(pki: DevPki) -> None:
    key = serialization.load_pem_private_key(pki.key("gateway").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == _cert(pki.cert("gateway")).public_key()


def test_second_call_reuses_every_file(pki: DevPki) -> None:
    before = {p: p.read_bytes() for p in pki.folder.iterdir() if p.suffix in (".crt", ".key")}
    again = ensure_dev_pki(pki.folder, now=NOW + timedelta(days=10))
    after = {p: p.read_bytes() for p in again.folder.iterdir() if p.suffix in (".crt", ".key")}
    assert after == before
    assert again == pki


def test_leaf_close_to_expiry_is_reissued_and_ca_kept(pki: DevPki) -> None:
    ca_before = pki.ca_cert.read_bytes()
    old = _cert(pki.cert("svc-waitlist"))
    later = NOW + LEAF_VALIDITY - RENEW_BEFORE + timedelta(days=1)
    ensure_dev_pki(pki.folder, now=later)
    new = _cert(pki.cert("svc-waitlist"))
    assert pki.ca_cert.read_bytes() == ca_before
    assert new.serial_number != old.serial_number
    assert new.not_valid_after_utc > later + RENEW_BEFORE
    new.verify_directly_issued_by(_cert(pki.ca_cert))


def test_leaf_just_outside_the_renewal_window_is_kept(pki: DevPki) -> None:
    old = pki.cert("svc-notify").read_bytes()
    earlier = NOW + LEAF_VALIDITY - RENEW_BEFORE - timedelta(days=1)
    ensure_dev_pki(pki.folder, now=earlier)
    assert pki.cert("svc-notify").read_bytes() == old


def test_missing_key_causes_only_that_leaf_to_be_reissued(pki: DevPki) -> None:
    other = pki.cert("gateway").read_bytes()
    old_serial = _cert(pki.cert("payer-sim")).serial_number
    pki.key("payer-sim").unlink()
    ensure_dev_pki(pki.folder, now=NOW)
    assert pki.key("payer-sim").is_file()
    assert _cert(pki.cert("payer-sim")).serial_number != old_serial
    assert pki.cert("gateway").read_bytes() == other


def test_replaced_ca_causes_every_leaf_to_be_reissued(pki: DevPki) -> None:
    (pki.folder / "ca.key").unlink()
    ensure_dev_pki(pki.folder, now=NOW)
    ca = _cert(pki.ca_cert)
    for component in COMPONENTS:
        _cert(pki.cert(component)).verify_directly_issued_by(ca)


def test_unknown_component_is_named_in_the_error(pki: DevPki) -> None:
    with pytest.raises(KeyError, match="svc-billing"):
        pki.cert("svc-billing")
