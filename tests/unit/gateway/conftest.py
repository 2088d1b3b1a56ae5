"""Fixtures of the gateway unit tests: the compiled test contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.descriptors import Api, load_api
from tests.unit.gateway.testproto import compile_descriptor_set


@pytest.fixture(scope="session")
def gwtest_descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return compile_descriptor_set(Path(tmp_path_factory.mktemp("gwtest")))


@pytest.fixture(scope="session")
def gwtest_api(gwtest_descriptor_set: bytes) -> Api:
    return load_api(gwtest_descriptor_set)
