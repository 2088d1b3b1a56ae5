"""Fixtures of the gateway integration tests: the dev PKI, the test contract, servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from common.grpc_server import ServerHandle
from deploy.certs import DevPki, ensure_dev_pki
from gateway.descriptors import Api, load_api
from tests.integration.gateway.harness import RunningGateway, start_backend, start_gateway
from tests.integration.gateway.visit_servicer import VisitServicer
from tests.unit.gateway.testproto import compile_descriptor_set


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return ensure_dev_pki(Path(tmp_path_factory.mktemp("pki")))


@pytest.fixture(scope="session")
def gwtest_api(tmp_path_factory: pytest.TempPathFactory) -> Api:
    return load_api(compile_descriptor_set(Path(tmp_path_factory.mktemp("gwtest"))))


@pytest.fixture
def visit_servicer(gwtest_api: Api) -> VisitServicer:
    return VisitServicer(gwtest_api)


@pytest.fixture
async def visit_backend(visit_servicer: VisitServicer) -> AsyncIterator[ServerHandle]:
    handle = await start_backend([visit_servicer.registration()])
    yield handle
    await handle.stop(0)


@pytest.fixture
async def gateway(
    gwtest_api: Api, visit_backend: ServerHandle, pki: DevPki, redis_url: str, tmp_path: Path
) -> AsyncIterator[RunningGateway]:
    running = await start_gateway(
        gwtest_api,
        {"gwtest": visit_backend.address},
        pki=pki,
        redis_url=redis_url,
        work_dir=tmp_path,
        cors_origins=("https://app.example.test",),
    )
    yield running
    await running.close()
