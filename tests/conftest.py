"""Test fixtures: real PostgreSQL, NATS JetStream and Redis, started once per session.

By default the embedded servers (from PyPI wheels) start on free ports in a temporary folder.
Set MEDSCHED_TEST_DATABASE_URL, MEDSCHED_TEST_NATS_URL and MEDSCHED_TEST_REDIS_URL to run
against existing servers instead (CI does this once against the machine's own services).
Each test that asks for `database_url` gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from deploy.embedded import Infra, start_infra

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


@dataclass(frozen=True)
class Servers:
    """Where the session's servers are, and whether they are ours (embedded) or external."""

    database_url: str
    nats_url: str
    redis_url: str
    external: bool

    def admin_url(self) -> str:
        parts = urlsplit(self.database_url)
        return urlunsplit(parts._replace(path="/postgres"))

    def url_for_database(self, name: str) -> str:
        parts = urlsplit(self.database_url)
        return urlunsplit(parts._replace(path=f"/{name}"))


def _external_urls() -> tuple[str, str, str] | None:
    names = ("MEDSCHED_TEST_DATABASE_URL", "MEDSCHED_TEST_NATS_URL", "MEDSCHED_TEST_REDIS_URL")
    values = [os.environ.get(n, "") for n in names]
    if all(values):
        return values[0], values[1], values[2]
    if any(values):
        pytest.exit(f"set all of {', '.join(names)} or none of them", returncode=4)
    return None


@pytest.fixture(scope="session")
def stack() -> Iterator[Servers]:
    external = _external_urls()
    if external is not None:
        yield Servers(*external, external=True)
        return
    with tempfile.TemporaryDirectory(prefix="medsched-test-") as folder:
        infra: Infra = start_infra(Path(folder), durable=False)
        try:
            yield Servers(infra.database_url, infra.nats_url, infra.redis_url, external=False)
        finally:
            infra.stop()


@pytest.fixture
def database_url(stack: Servers) -> Iterator[str]:
    """A brand-new empty database for this test alone."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(stack.admin_url(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield stack.url_for_database(name)
    finally:
        with psycopg.connect(stack.admin_url(), autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def nats_url(stack: Servers) -> str:
    return stack.nats_url


@pytest.fixture(scope="session")
def redis_url(stack: Servers) -> str:
    return stack.redis_url


@pytest.fixture
def unique() -> str:
    """A short unique token for stream, subject and key names owned by one test."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.fail(f"the shared data folder {SHARED_DIR} is missing beside the repository")
    return SHARED_DIR
