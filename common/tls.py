"""TLS material from PEM files: gRPC server/channel credentials and `ssl` contexts for HTTPS.

Every process gets its certificate, key and the CA that signs its peers as three files
(`common.settings.TlsFiles`). gRPC services use them for mutual TLS; the REST gateway serves
HTTPS with TLS 1.3 as the minimum (HIPAA transmission security: no legacy protocol versions
on the public edge); outbound HTTPS clients verify their peer against the same CA or the
system store.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from common.settings import TlsFiles


class TlsConfigError(Exception):
    """A TLS file is missing, unreadable or not PEM; names the file and the problem."""


@dataclass(frozen=True)
class PemBundle:
    """The bytes of one process's CA certificate, certificate chain and private key."""

    ca: bytes
    cert: bytes
    key: bytes = field(repr=False)


def read_pem(path: Path, what: str) -> bytes:
    """Read one PEM file; the error names the role of the file, its path and the reason."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TlsConfigError(f"{what} {path}: cannot read ({e.strerror})") from e
    if b"-----BEGIN " not in data:
        raise TlsConfigError(f"{what} {path}: not a PEM file")
    return data


def load_pem_bundle(files: TlsFiles) -> PemBundle:
    """Read the three PEM files of `files`."""
    return PemBundle(
        ca=read_pem(files.ca, "CA certificate"),
        cert=read_pem(files.cert, "certificate"),
        key=read_pem(files.key, "private key"),
    )


def grpc_server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Server credentials; client certificates signed by the CA are required when configured.

    With `require_client_cert` false gRPC does not ask for a client certificate at all, so
    callers can only authenticate with signed principal metadata.
    """
    pem = load_pem_bundle(files)
    return grpc.ssl_server_credentials(
        [(pem.key, pem.cert)],
        root_certificates=pem.ca,
        require_client_auth=files.require_client_cert,
    )


def grpc_channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Channel credentials that verify the server against the CA and present our certificate.

    Presenting the client certificate is what makes the connection mutual TLS; servers that
    do not ask for one simply ignore it.
    """
    pem = load_pem_bundle(files)
    return grpc.ssl_channel_credentials(
        root_certificates=pem.ca, private_key=pem.key, certificate_chain=pem.cert
    )


def https_server_context(files: TlsFiles) -> ssl.SSLContext:
    """An `ssl` context for HTTPS servers (the gateway): TLS 1.3 minimum, CA-verified clients.

    Client certificates are required when `files.require_client_cert` is set and otherwise
    not requested (browsers and patient apps authenticate with bearer tokens instead).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    _load_cert_chain(context, files.cert, files.key)
    if files.require_client_cert:
        _load_ca(context, files.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def https_client_context(
    *,
    ca: Path | None,
    cert: Path | None = None,
    key: Path | None = None,
    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2,
) -> ssl.SSLContext:
    """An `ssl` context for outbound HTTPS that always verifies the server's name and chain.

    `ca` None trusts the system store (public endpoints such as a real clearinghouse);
    otherwise only that CA. `cert`/`key` present a client certificate for mutual TLS.
    TLS 1.2 is the default floor because external partners under CAQH CORE rules are only
    required to support 1.2; our own endpoints are 1.3-only on the server side anyway.
    """
    if (cert is None) != (key is None):
        raise TlsConfigError("client certificate and key must be given together")
    if ca is None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    else:
        # PROTOCOL_TLS_CLIENT verifies chain and host name by default; loading only `ca`
        # makes our CA the sole trust anchor (no system store).
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _load_ca(context, ca)
    context.minimum_version = minimum_version
    if cert is not None and key is not None:
        _load_cert_chain(context, cert, key)
    return context


def _load_cert_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    read_pem(cert, "certificate")
    read_pem(key, "private key")
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except ssl.SSLError as e:
        raise TlsConfigError(
            f"certificate {cert} and private key {key}: cannot be used together ({e.reason})"
        ) from e


def _load_ca(context: ssl.SSLContext, ca: Path) -> None:
    read_pem(ca, "CA certificate")
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as e:
        raise TlsConfigError(f"CA certificate {ca}: not usable ({e.reason})") from e
