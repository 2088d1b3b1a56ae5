"""PostgreSQL access: the async connection pool every service uses, and small helpers around it.

Every connection is configured the same way (UTC, a statement timeout, an `application_name`
naming the service, autocommit off), so a query behaves identically whichever service or pool
runs it. SQL is always sent with bind parameters; identifiers (schema names) go through
`psycopg.sql.Identifier` after `check_schema_name` accepted them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from common.errors import DependencyUnavailable

Connection: TypeAlias = psycopg.AsyncConnection[TupleRow]
Pool: TypeAlias = AsyncConnectionPool[Connection]

# Lower case, starts with a letter, short enough that derived names (the outbox NOTIFY channel
# `medsched_outbox_<schema>`) stay within PostgreSQL's 63-byte identifier limit.
_SCHEMA_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")

DEFAULT_STATEMENT_TIMEOUT_MS = 5_000


def check_schema_name(schema: str) -> str:
    """Return `schema` if it is a valid service schema name, else raise ValueError."""
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(
            f"schema name {schema!r} is invalid: want lower-case letters, digits and '_',"
            " starting with a letter, at most 40 characters"
        )
    return schema


def connection_kwargs(
    url: str,
    *,
    application_name: str,
    statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
    keepalives: bool = False,
) -> dict[str, Any]:
    """libpq parameters that give a connection our standard session settings.

    Session settings travel in the startup packet (`options`), so they hold from the first
    statement without an extra round trip and survive `DISCARD ALL`. Options already present in
    `url` are kept; ours come after them and therefore win.
    """
    existing = str(conninfo_to_dict(url).get("options") or "")
    ours = f"-c TimeZone=UTC -c statement_timeout={int(statement_timeout_ms)}"
    kwargs: dict[str, Any] = {
        "application_name": application_name,
        "options": f"{existing} {ours}".strip(),
        "autocommit": False,
    }
    if keepalives:
        # A long-lived connection that mostly waits (LISTEN, leader locks) must notice a dead
        # peer on its own: without keepalives a silent network failure would leave it waiting
        # forever while still believing it holds its lock.
        kwargs.update(keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
    return kwargs


async def connect(
    url: str,
    *,
    application_name: str,
    autocommit: bool = False,
    statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
    keepalives: bool = False,
    timeout_s: float = 10.0,
) -> Connection:
    """One dedicated connection (for work a pool cannot do: LISTEN, session locks, migrations)."""
    kwargs = connection_kwargs(
        url,
        application_name=application_name,
        statement_timeout_ms=statement_timeout_ms,
        keepalives=keepalives,
    )
    kwargs["autocommit"] = autocommit
    try:
        return await psycopg.AsyncConnection.connect(
            url, connect_timeout=max(1, round(timeout_s)), **kwargs
        )
    except psycopg.OperationalError as e:
        raise DependencyUnavailable(
            f"PostgreSQL connection for {application_name!r} could not be opened"
        ) from e


async def open_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    name: str = "medsched",
    timeout_s: float = 10.0,
    statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS,
) -> Pool:
    """Open a pool and wait until `min_size` connections are up (or fail after `timeout_s`).

    `timeout_s` is also how long a caller waits for a free connection before `PoolTimeout`.
    """
    if not 0 < min_size <= max_size:
        raise ValueError(
            f"pool sizes must satisfy 0 < min_size <= max_size, got {min_size}, {max_size}"
        )
    pool: Pool = AsyncConnectionPool(
        url,
        kwargs=connection_kwargs(
            url, application_name=name, statement_timeout_ms=statement_timeout_ms
        ),
        min_size=min_size,
        max_size=max_size,
        name=name,
        timeout=timeout_s,
        open=False,
    )
    try:
        await pool.open(wait=True, timeout=timeout_s)
    except PoolTimeout as e:
        await pool.close()
        raise DependencyUnavailable(
            f"PostgreSQL pool {name!r} could not open {min_size} connection(s) within {timeout_s}s"
        ) from e
    return pool


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool's use, for metrics."""

    size: int
    """Connections currently open (idle or lent out)."""
    in_use: int
    """Connections lent out to callers right now."""
    idle: int
    waiting: int
    """Callers queued for a connection."""
    max_size: int


def pool_stats(pool: Pool) -> PoolStats:
    """Current pool use (does not reset the pool's cumulative counters)."""
    stats = pool.get_stats()
    size = stats.get("pool_size", 0)
    idle = stats.get("pool_available", 0)
    return PoolStats(
        size=size,
        in_use=max(0, size - idle),
        idle=idle,
        waiting=stats.get("requests_waiting", 0),
        max_size=pool.max_size,
    )


@asynccontextmanager
async def transaction(pool: Pool) -> AsyncIterator[Connection]:
    """Borrow a connection and run one transaction on it: commit on success, roll back on error."""
    async with pool.connection() as conn, conn.transaction():
        yield conn
