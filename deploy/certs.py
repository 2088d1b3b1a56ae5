"""The development certificate authority: a CA and one certificate per component, made once.

`ensure_dev_pki(folder)` is called by `medsched up` (and by tests) before anything listens.
The first call creates the CA and the leaf certificates; later calls reuse them and only
reissue what is missing, damaged, signed by another CA, or within `RENEW_BEFORE` of expiry,
so a stack that runs for months never starts with an expired certificate. Every leaf is
valid for both server and client authentication, so the same files serve a component's
listening side and its mutual-TLS calls to other services. Private keys are written 0600.

This CA is for development and tests only: production deployments bring certificates from
their own PKI (e.g. cert-manager) through the `MEDSCHED_TLS_*` variables.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.settings import TlsFiles

COMPONENTS: tuple[str, ...] = (
    "svc-availability",
    "svc-booking",
    "svc-eligibility",
    "svc-waitlist",
    "svc-notify",
    "gateway",
    "payer-sim",
    "operator",
)
CA_VALIDITY = timedelta(days=3650)
# 397 days is the longest lifetime browsers accept for a server certificate.
LEAF_VALIDITY = timedelta(days=397)
RENEW_BEFORE = timedelta(days=30)
# Back-dating absorbs small clock differences between the machine and containers it runs.
_BACKDATE = timedelta(minutes=5)
_CA_NAME = "medsched development CA"
_LOCAL_NAMES = ("localhost",)
_LOCAL_ADDRESSES = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class LeafFiles:
    """Where one component's certificate and private key are."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class DevPki:
    """Paths of the development CA certificate and of every component's certificate and key."""

    folder: Path
    ca_cert: Path
    leaves: Mapping[str, LeafFiles]

    def cert(self, component: str) -> Path:
        return self._leaf(component).cert

    def key(self, component: str) -> Path:
        return self._leaf(component).key

    def tls_files(self, component: str, *, require_client_cert: bool = True) -> TlsFiles:
        """The component's files in the shape `Settings.tls` has."""
        leaf = self._leaf(component)
        return TlsFiles(
            ca=self.ca_cert,
            cert=leaf.cert,
            key=leaf.key,
            require_client_cert=require_client_cert,
        )

    def _leaf(self, component: str) -> LeafFiles:
        try:
            return self.leaves[component]
        except KeyError:
            raise KeyError(
                f"no development certificate for {component!r}; known: {', '.join(self.leaves)}"
            ) from None


@dataclass(frozen=True)
class _Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def ensure_dev_pki(
    folder: Path, *, now: datetime | None = None, components: Iterable[str] = COMPONENTS
) -> DevPki:
    """Create or refresh the development PKI in `folder` and return its paths.

    Safe to call from several processes at once: the work happens under an exclusive lock
    on `folder/.lock`, and files are replaced atomically.
    """
    moment = now if now is not None else datetime.now(UTC)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    names = tuple(components)
    with _exclusive_lock(folder / ".lock"):
        issuer = _ensure_ca(folder, moment)
        leaves = {name: _ensure_leaf(folder, name, issuer, moment) for name in names}
    return DevPki(folder=folder, ca_cert=folder / "ca.crt", leaves=MappingProxyType(leaves))


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _ensure_ca(folder: Path, now: datetime) -> _Issuer:
    cert_path, key_path = folder / "ca.crt", folder / "ca.key"
    existing = _load_pair(cert_path, key_path)
    if existing is not None and _is_fresh(existing.cert, now):
        return existing
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "medsched (development only)"),
            x509.NameAttribute(NameOID.COMMON_NAME, _CA_NAME),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_pair(cert_path, key_path, cert, key)
    return _Issuer(cert, key)


def _ensure_leaf(folder: Path, component: str, issuer: _Issuer, now: datetime) -> LeafFiles:
    files = LeafFiles(cert=folder / f"{component}.crt", key=folder / f"{component}.key")
    existing = _load_pair(files.cert, files.key)
    if existing is not None and _leaf_is_usable(existing.cert, component, issuer, now):
        return files
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue_leaf(component, key, issuer, now)
    _write_pair(files.cert, files.key, cert, key)
    return files


def _issue_leaf(
    component: str, key: ec.EllipticCurvePrivateKey, issuer: _Issuer, now: datetime
) -> x509.Certificate:
    not_after = min(now + LEAF_VALIDITY, issuer.cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "medsched"),
                    x509.NameAttribute(NameOID.COMMON_NAME, component),
                ]
            )
        )
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(component)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
        .sign(issuer.key, hashes.SHA256())
    )


def _subject_alt_names(component: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in (*_LOCAL_NAMES, component)]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in _LOCAL_ADDRESSES]
    return names


def _leaf_is_usable(cert: x509.Certificate, component: str, issuer: _Issuer, now: datetime) -> bool:
    try:
        cert.verify_directly_issued_by(issuer.cert)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return _is_fresh(cert, now) and set(sans) == set(_subject_alt_names(component))


def _is_fresh(cert: x509.Certificate, now: datetime) -> bool:
    """Already valid, and not within `RENEW_BEFORE` of its end."""
    return cert.not_valid_before_utc <= now and now + RENEW_BEFORE < cert.not_valid_after_utc


def _load_pair(cert_path: Path, key_path: Path) -> _Issuer | None:
    """The certificate and key if both exist, parse, and belong together; otherwise None."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        return None
    return _Issuer(cert, key)


def _public_der(key: object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return b""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_pair(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    # Key first: a crash between the two writes leaves a key that does not match the old
    # certificate, which the next call detects and reissues.
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomically(key_path, key_pem, mode=0o600)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    """Write beside `path` and rename over it, so readers never see a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Created with its final mode: a private key is never readable by others, even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        # A leftover temporary file from a crashed run may carry other permissions.
        os.fchmod(out.fileno(), mode)
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
