"""End-to-end fixtures: the whole system as `medsched up` runs it, once per session."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from deploy.stack import Stack, start_stack
from tests.conftest import Servers


@pytest.fixture(scope="session")
def running_stack(tmp_path_factory: pytest.TempPathFactory, stack: Servers) -> Iterator[Stack]:
    """The whole system on the session's servers (the external-URL path of `up`)."""
    name = f"stack_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.admin_url(), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    environ = {
        "MEDSCHED_DATABASE_URL": stack.url_for_database(name),
        "MEDSCHED_NATS_URL": stack.nats_url,
        "MEDSCHED_REDIS_URL": stack.redis_url,
        "PATH": str(Path(sys.prefix) / "bin"),
    }
    started = start_stack(tmp_path_factory.mktemp("up"), environ=environ)
    try:
        yield started
    finally:
        started.stop()
        with psycopg.connect(stack.admin_url(), autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
