"""TLS contexts and credentials from PEM files: TLS 1.3 floor on HTTPS, clear file errors."""

from __future__ import annotations

import queue
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest

from common.settings import TlsFiles
from common.tls import (
    TlsConfigError,
    grpc_channel_credentials,
    grpc_server_credentials,
    https_client_context,
    https_server_context,
)
from deploy.certs import DevPki, ensure_dev_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return ensure_dev_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class HandshakeServer:
    """A local socket server wrapped with an `ssl` context; records each handshake's outcome."""

    port: int
    outcomes: queue.Queue[str]


@pytest.fixture
def gateway_server(pki: DevPki) -> Iterator[HandshakeServer]:
    context = https_server_context(pki.tls_files("gateway", require_client_cert=False))
    listener = socket.create_server(("127.0.0.1", 0))
    outcomes: queue.Queue[str] = queue.Queue()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # listener closed: the test is over
            conn.settimeout(5)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    outcomes.put(f"accepted {tls.version()}")
                    tls.sendall(tls.recv(64))
            except ssl.SSLError as e:
                outcomes.put(f"refused {e.reason}")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield HandshakeServer(listener.getsockname()[1], outcomes)
    finally:
        # shutdown() wakes the blocked accept(); close() alone would not on Linux.
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(timeout=5)
        assert not thread.is_alive()


def _client(pki: DevPki, *, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = https_client_context(ca=pki.ca_cert)
    if maximum is not None:
        context.maximum_version = maximum
    return context


def _round_trip(context: ssl.SSLContext, port: int, server_hostname: str = "127.0.0.1") -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        tls.sendall(b"ping")
        assert tls.recv(64) == b"ping"
        return str(tls.version())


def test_https_server_context_refuses_anything_below_tls_1_3(pki: DevPki) -> None:
    context = https_server_context(pki.tls_files("gateway"))
    assert context.minimum_version is ssl.TLSVersion.TLSv1_3


def test_https_server_context_requires_ca_signed_clients_only_when_configured(
    pki: DevPki,
) -> None:
    mutual = https_server_context(pki.tls_files("gateway", require_client_cert=True))
    public = https_server_context(pki.tls_files("gateway", require_client_cert=False))
    assert mutual.verify_mode is ssl.CERT_REQUIRED
    assert public.verify_mode is ssl.CERT_NONE


def test_tls_1_3_client_completes_a_round_trip(
    pki: DevPki, gateway_server: HandshakeServer
) -> None:
    assert _round_trip(_client(pki), gateway_server.port) == "TLSv1.3"
    assert gateway_server.outcomes.get(timeout=5) == "accepted TLSv1.3"


def test_tls_1_2_only_client_is_refused(pki: DevPki, gateway_server: HandshakeServer) -> None:
    with pytest.raises(ssl.SSLError) as refused:
        _round_trip(_client(pki, maximum=ssl.TLSVersion.TLSv1_2), gateway_server.port)
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"
    assert gateway_server.outcomes.get(timeout=5) == "refused UNSUPPORTED_PROTOCOL"


def test_client_context_rejects_a_server_name_the_certificate_does_not_carry(
    pki: DevPki, gateway_server: HandshakeServer
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="svc-booking"):
        _round_trip(_client(pki), gateway_server.port, server_hostname="svc-booking")


def test_client_context_verifies_by_default_and_keeps_a_tls_1_2_floor(pki: DevPki) -> None:
    context = https_client_context(ca=pki.ca_cert)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version is ssl.TLSVersion.TLSv1_2


def test_client_context_needs_certificate_and_key_together(pki: DevPki) -> None:
    with pytest.raises(TlsConfigError, match="together"):
        https_client_context(ca=pki.ca_cert, cert=pki.cert("gateway"))


def test_grpc_credentials_build_from_the_component_files(pki: DevPki) -> None:
    files = pki.tls_files("svc-booking")
    assert isinstance(grpc_server_credentials(files), grpc.ServerCredentials)
    assert isinstance(grpc_channel_credentials(files), grpc.ChannelCredentials)


def test_missing_file_error_names_the_role_and_path(pki: DevPki, tmp_path: Path) -> None:
    files = replace(pki.tls_files("svc-booking"), key=tmp_path / "absent.key")
    with pytest.raises(TlsConfigError, match=r"private key .*absent\.key: cannot read"):
        grpc_server_credentials(files)


def test_non_pem_file_is_refused_with_its_role(pki: DevPki, tmp_path: Path) -> None:
    garbage = tmp_path / "ca.der"
    garbage.write_bytes(b"\x30\x82\x01\x0a")
    files = TlsFiles(
        ca=garbage, cert=pki.cert("gateway"), key=pki.key("gateway"), require_client_cert=True
    )
    with pytest.raises(TlsConfigError, match=r"CA certificate .*ca\.der: not a PEM file"):
        https_server_context(files)


def test_certificate_with_someone_elses_key_is_refused(pki: DevPki) -> None:
    files = replace(pki.tls_files("gateway"), key=pki.key("operator"))
    with pytest.raises(TlsConfigError, match="cannot be used together"):
        https_server_context(files)
