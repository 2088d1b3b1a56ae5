"""Migration runner: numbered SQL files per service schema, applied once, recorded, race-free.

Layout and rules:

- A service package owns one schema, named after the package without `_svc` (`booking_svc` ->
  `booking`), and keeps its files in `<package>/migrations/NNNN_description.sql`: four digits
  from `0001` upwards, no gaps, no duplicates. Files run with `search_path = <schema>, public`,
  so unqualified names land in the service's schema and extensions (in `public`) resolve.
- Before a service's own files, `migrate` applies the shared templates in `common/sql/`
  (extensions, the outbox and the inbox) into the schema, recorded as versions `common-NNNN`.
  Templates name the schema as `{schema}`, substituted with `psycopg.sql.Identifier`; a literal
  brace in a template must be doubled. Service files are run verbatim (no substitution).
- Each file runs in its own transaction together with its row in `<schema>.schema_migrations`
  (version, name, sha256 checksum, applied_at): a file is applied entirely and recorded, or not
  at all. Statements that cannot run inside a transaction (`CREATE INDEX CONCURRENTLY`) are
  therefore not supported in migration files.
- A file whose content changed after it was applied is refused with `MigrationError`: the
  database would no longer match what the repository says it contains.
- Any number of processes may migrate the same database at once (every replica of a service
  does so at start): see `_lock_schema`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import psycopg
from psycopg import sql

from common.db import Connection, check_schema_name, connect

logger = logging.getLogger(__name__)

COMMON_SQL_DIR = Path(__file__).resolve().parent / "sql"
COMMON_PREFIX = "common-"

SERVICE_PACKAGES = (
    "availability_svc",
    "booking_svc",
    "eligibility_svc",
    "waitlist_svc",
    "notify_svc",
)

_FILE_NAME = re.compile(r"(?P<number>\d{4})_(?P<name>[a-z0-9][a-z0-9_]*)\.sql")


class MigrationError(RuntimeError):
    """Migrations cannot be applied as they are; the message names the file and the reason."""


@dataclass(frozen=True)
class Migration:
    """One migration file, read and checksummed."""

    version: str
    """`NNNN` for a service file, `common-NNNN` for a shared template."""
    name: str
    path: Path
    text: str
    checksum: str
    is_template: bool

    def statement(self, schema: str) -> sql.SQL | sql.Composed:
        """The SQL to run for `schema` (templates get the schema substituted as an identifier)."""
        # The text comes from a file shipped with the code, never from a request, so it is
        # used as query text as it stands.
        query = sql.SQL(self.text)
        if self.is_template:
            return query.format(schema=sql.Identifier(schema))
        return query


class ServiceMigrations(NamedTuple):
    """A service schema and the folder holding its migration files."""

    schema: str
    folder: Path


def load_migrations(folder: Path, *, template: bool = False) -> list[Migration]:
    """Read `folder`'s `.sql` files in number order; raise `MigrationError` on any bad name,
    duplicate number or gap, listing every problem found."""
    if not folder.is_dir():
        raise MigrationError(f"migration folder {folder} does not exist")
    problems: list[str] = []
    by_number: dict[int, list[Path]] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if match is None:
            problems.append(f"{path.name}: name must be NNNN_description.sql (lower case)")
            continue
        by_number.setdefault(int(match["number"]), []).append(path)
    for number, paths in sorted(by_number.items()):
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            problems.append(f"number {number:04d} is used by more than one file: {names}")
    expected = list(range(1, len(by_number) + 1))
    if sorted(by_number) != expected:
        missing = sorted(set(range(1, max(by_number, default=0) + 1)) - set(by_number))
        problems.append(
            "numbers must run 0001, 0002, ... without gaps; missing: "
            + ", ".join(f"{n:04d}" for n in missing)
        )
    if problems:
        raise MigrationError(f"migrations in {folder} are invalid: " + "; ".join(problems))
    prefix = COMMON_PREFIX if template else ""
    migrations = []
    for number, (path,) in sorted(by_number.items()):
        raw = path.read_bytes()
        migrations.append(
            Migration(
                version=f"{prefix}{number:04d}",
                name=path.stem[5:],
                path=path,
                text=raw.decode("utf-8"),
                checksum=hashlib.sha256(raw).hexdigest(),
                is_template=template,
            )
        )
    return migrations


def common_migrations() -> list[Migration]:
    """The shared templates from `common/sql/`, in order."""
    return load_migrations(COMMON_SQL_DIR, template=True)


def discover_service_migrations(
    packages: tuple[str, ...] = SERVICE_PACKAGES,
) -> list[ServiceMigrations]:
    """Every service package (in `packages`) that has a `migrations/` folder with SQL files.

    Packages are located without being imported, so discovery has no side effects.
    """
    found = []
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            folder = Path(location) / "migrations"
            if folder.is_dir() and any(folder.glob("*.sql")):
                found.append(ServiceMigrations(schema_for_package(package), folder))
                break
    return found


def schema_for_package(package: str) -> str:
    """`booking_svc` -> `booking`."""
    return check_schema_name(package.removesuffix("_svc"))


async def migrate(target: str | Connection, schema: str, folder: Path | None) -> list[str]:
    """Apply the shared templates, then `folder`'s files, to `schema`; return versions applied.

    `target` is a database URL (a dedicated connection is opened and closed) or an open
    connection that is not inside a transaction. `folder=None` applies the shared templates only.
    """
    check_schema_name(schema)
    plan = common_migrations()
    if folder is not None:
        plan += load_migrations(folder)
    if isinstance(target, str):
        # No statement timeout: building an index on a large table may legitimately take long.
        async with await connect(
            target, application_name=f"medsched-migrate-{schema}", statement_timeout_ms=0
        ) as conn:
            return await _apply(conn, schema, plan)
    if target.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise MigrationError("migrate() needs a connection that is not inside a transaction")
    return await _apply(target, schema, plan)


async def migrate_all(
    url: str, services: Iterable[ServiceMigrations] | None = None
) -> dict[str, list[str]]:
    """Migrate each service schema (default: every discovered one); return versions applied."""
    applied = {}
    for schema, folder in discover_service_migrations() if services is None else services:
        applied[schema] = await migrate(url, schema, folder)
    return applied


async def _lock_schema(conn: Connection, schema: str) -> None:
    # A transaction-level advisory lock keyed by the schema serialises every migrator of that
    # schema, in any process: whoever waits re-reads `schema_migrations` after the holder
    # committed, finds the file recorded and skips it, so each file is applied exactly once.
    # Being transaction-scoped, the lock cannot outlive a migrator that dies mid-file.
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
        (f"medsched.migrations.{schema}",),
    )


async def _apply(conn: Connection, schema: str, plan: list[Migration]) -> list[str]:
    ident = sql.Identifier(schema)
    async with conn.transaction():
        await _lock_schema(conn, schema)
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                " version text PRIMARY KEY,"
                " name text NOT NULL,"
                " checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(ident)
        )
        recorded = await _recorded_checksums(conn, schema)
    _refuse_changed_files(schema, plan, recorded)
    unknown = sorted(set(recorded) - {m.version for m in plan})
    if unknown:
        # A newer release already migrated this database (e.g. during a rolling upgrade);
        # this process's code is older but may still run against the newer schema.
        logger.warning(
            "database has migrations this code does not know",
            extra={"schema": schema, "versions": unknown},
        )
    applied = []
    for migration in plan:
        if migration.version in recorded:
            continue
        if await _apply_one(conn, schema, migration):
            applied.append(migration.version)
    return applied


async def _recorded_checksums(conn: Connection, schema: str) -> dict[str, str]:
    cursor = await conn.execute(
        sql.SQL("SELECT version, checksum FROM {}.schema_migrations").format(sql.Identifier(schema))
    )
    return {version: checksum for version, checksum in await cursor.fetchall()}


def _refuse_changed_files(schema: str, plan: list[Migration], recorded: dict[str, str]) -> None:
    changed = [m for m in plan if m.version in recorded and recorded[m.version] != m.checksum]
    if changed:
        files = ", ".join(f"{m.version} ({m.path.name})" for m in changed)
        raise MigrationError(
            f"schema {schema!r}: applied migration file(s) changed since they were applied:"
            f" {files}; add a new migration instead of editing an applied one"
        )


async def _apply_one(conn: Connection, schema: str, migration: Migration) -> bool:
    """Apply one file in its own transaction unless another migrator did meanwhile."""
    ident = sql.Identifier(schema)
    try:
        async with conn.transaction():
            await _lock_schema(conn, schema)
            recorded = await _recorded_checksums(conn, schema)
            if migration.version in recorded:
                _refuse_changed_files(schema, [migration], recorded)
                return False
            await conn.execute(sql.SQL("SET LOCAL search_path TO {}, public").format(ident))
            await conn.execute(migration.statement(schema))
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {}.schema_migrations (version, name, checksum) VALUES (%s, %s, %s)"
                ).format(ident),
                (migration.version, migration.name, migration.checksum),
            )
    except psycopg.Error as e:
        detail = e.diag.message_primary or type(e).__name__
        raise MigrationError(
            f"schema {schema!r}: migration {migration.version} ({migration.path.name}) failed"
            f" and was rolled back: [{e.sqlstate or '-'}] {detail}"
        ) from e
    logger.info(
        "migration applied",
        extra={"schema": schema, "version": migration.version, "migration": migration.name},
    )
    return True
