"""Readiness probes `medsched up` and tests use: gRPC health over mTLS, HTTPS `/healthz`."""

from __future__ import annotations

import ssl

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy.certs import DevPki


def operator_channel_credentials(pki: DevPki) -> grpc.ChannelCredentials:
    """mTLS client credentials of the `operator` identity (what grpcurl examples use too)."""
    return grpc.ssl_channel_credentials(
        root_certificates=pki.ca_cert.read_bytes(),
        private_key=pki.key("operator").read_bytes(),
        certificate_chain=pki.cert("operator").read_bytes(),
    )


async def check_grpc_health(
    address: str, pki: DevPki, *, timeout_s: float, service: str = ""
) -> bool:
    """True when the server at `address` answers SERVING for `service` ("" = whole server)."""
    async with grpc.aio.secure_channel(address, operator_channel_credentials(pki)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def check_https_health(address: str, pki: DevPki, *, timeout_s: float) -> bool:
    """True when the HTTPS server at `address` answers 200 on `/healthz`."""
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"https://{address}/healthz", ssl=context) as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False
