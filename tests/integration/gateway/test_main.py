"""The gateway's composition root: HTTPS serving, mutual TLS to services, SIGTERM, refusals."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import ssl
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from common.auth import PrincipalSigner, Role
from common.grpc_server import create_server
from deploy.certs import DevPki
from deploy.health import check_https_health
from gateway.config import GatewayConfig
from gateway.dev_issuer import DEV_AUDIENCE, DEV_ISSUER, dev_principal, load_or_create
from gateway.main import serve_gateway
from tests.integration.gateway.harness import PRINCIPAL_KEY
from tests.integration.gateway.visit_servicer import VisitServicer
from tests.unit.gateway.testproto import compile_descriptor_set


async def test_serves_https_calls_services_over_mutual_tls_and_stops_on_sigterm(
    pki: DevPki, visit_servicer: VisitServicer, redis_url: str, tmp_path: Path
) -> None:
    backend = await create_server(
        service_name="gwtest",
        listen="127.0.0.1:0",
        tls=pki.tls_files("svc-booking", require_client_cert=True),
        servicers=[visit_servicer.registration()],
        principal_verifier=PrincipalSigner(PRINCIPAL_KEY),
    )
    await backend.start()
    await backend.set_serving()
    compile_descriptor_set(tmp_path)
    tls = pki.tls_files("gateway", require_client_cert=False)
    config = GatewayConfig(
        listen="127.0.0.1:0",
        tls=tls,
        service_addrs={"gwtest": backend.address},
        redis_url=redis_url,
        principal_key=PRINCIPAL_KEY,
        descriptor_set=tmp_path / "gwtest.binpb",
        token_issuer=DEV_ISSUER,
        token_audience=DEV_AUDIENCE,
        dev_issuer_dir=tmp_path / "dev-issuer",
        shutdown_grace_s=1.0,
    )
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    serving = asyncio.create_task(serve_gateway(config, tls, on_listening=listening.set_result))
    try:
        port = await asyncio.wait_for(listening, timeout=10)
        address = f"127.0.0.1:{port}"
        assert await check_https_health(address, pki, timeout_s=2.0)
        token = load_or_create(tmp_path / "dev-issuer").mint(
            dev_principal(Role.PATIENT, "pat-5"), now=datetime.now(UTC)
        )
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"https://{address}/v1/visits/v-1",
                headers={"Authorization": f"Bearer {token}"},
                ssl=context,
            ) as response,
        ):
            body = await response.json()
        assert response.status == 200
        assert body["tags"][0] == "patient:pat-5:pat-5"

        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(serving, timeout=10)
        assert not await check_https_health(address, pki, timeout_s=1.0)
    finally:
        if not serving.done():
            serving.cancel()
        await backend.stop(0)


def test_process_without_a_token_source_refuses_to_start(pki: DevPki) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "MEDSCHED_DATABASE_URL": "postgresql://u@127.0.0.1:1/x",
        "MEDSCHED_NATS_URL": "nats://127.0.0.1:1",
        "MEDSCHED_REDIS_URL": "redis://127.0.0.1:1/0",
        "MEDSCHED_ENCRYPTION_KEYS": "k1:" + base64.b64encode(bytes(32)).decode(),
        "MEDSCHED_ENCRYPTION_ACTIVE_KEY": "k1",
        "MEDSCHED_HASH_KEY": base64.b64encode(bytes(32)).decode(),
        "MEDSCHED_PRINCIPAL_KEY": base64.b64encode(PRINCIPAL_KEY).decode(),
        "MEDSCHED_TLS_CA": str(pki.ca_cert),
        "MEDSCHED_TLS_CERT": str(pki.cert("gateway")),
        "MEDSCHED_TLS_KEY": str(pki.key("gateway")),
        "MEDSCHED_HTTP_LISTEN": "127.0.0.1:0",
    }

    done = subprocess.run(
        [sys.executable, "-m", "gateway.main"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2
    assert "MEDSCHED_GATEWAY_JWKS_URL" in done.stderr
    assert "Traceback" not in done.stderr
