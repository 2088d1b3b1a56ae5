"""The migration runner against a real PostgreSQL: order, records, refusals, concurrency."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from pathlib import Path

import psycopg
import pytest

from common.migrations import (
    MigrationError,
    ServiceMigrations,
    common_migrations,
    discover_service_migrations,
    load_migrations,
    migrate,
    migrate_all,
)


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def recorded(database_url: str, schema: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            f"SELECT version, name, checksum FROM {schema}.schema_migrations"
            " ORDER BY applied_at, version"
        ).fetchall()
    return [(str(v), str(n), str(c)) for v, n, c in rows]


def common_versions() -> list[str]:
    return [m.version for m in common_migrations()]


async def test_files_are_applied_in_number_order_and_recorded_once(
    database_url: str, tmp_path: Path
) -> None:
    # 0002 depends on 0001's table: applying out of order would fail.
    write(tmp_path, "0002_add_note.sql", "ALTER TABLE clinic ADD COLUMN note text;")
    first = write(tmp_path, "0001_create_clinic.sql", "CREATE TABLE clinic (id int PRIMARY KEY);")

    applied = await migrate(database_url, "booking", tmp_path)
    again = await migrate(database_url, "booking", tmp_path)

    assert applied == [*common_versions(), "0001", "0002"]
    assert again == []
    rows = recorded(database_url, "booking")
    assert [v for v, _, _ in rows] == [*common_versions(), "0001", "0002"]
    assert rows[-2] == ("0001", "create_clinic", hashlib.sha256(first.read_bytes()).hexdigest())
    with psycopg.connect(database_url) as conn:
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'booking' AND table_name = 'clinic' ORDER BY ordinal_position"
        ).fetchall()
    assert columns == [("id",), ("note",)]


async def test_shared_tables_and_btree_gist_exist_in_every_migrated_schema(
    database_url: str,
) -> None:
    await migrate(database_url, "waitlist", None)
    await migrate(database_url, "notify", None)

    with psycopg.connect(database_url) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema IN ('waitlist', 'notify') ORDER BY 1, 2"
        ).fetchall()
        extension = conn.execute(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname = 'btree_gist'"
        ).fetchone()
    expected = ["inbox", "outbox", "outbox_aggregates", "schema_migrations"]
    assert tables == [("notify", t) for t in expected] + [("waitlist", t) for t in expected]
    assert extension == ("public",)


async def test_service_files_can_use_btree_gist_exclusion_with_unqualified_names(
    database_url: str, tmp_path: Path
) -> None:
    write(
        tmp_path,
        "0001_reservations.sql",
        "CREATE TABLE reservation (resource int, during tstzrange,"
        " EXCLUDE USING gist (resource WITH =, during WITH &&));",
    )
    await migrate(database_url, "booking", tmp_path)

    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO booking.reservation VALUES (1, '[2026-03-02 09:00Z, 2026-03-02 09:30Z)')"
        )
        with pytest.raises(psycopg.errors.ExclusionViolation):
            conn.execute(
                "INSERT INTO booking.reservation"
                " VALUES (1, '[2026-03-02 09:15Z, 2026-03-02 09:45Z)')"
            )


async def test_changed_applied_file_is_refused_and_nothing_more_is_applied(
    database_url: str, tmp_path: Path
) -> None:
    path = write(tmp_path, "0001_create_clinic.sql", "CREATE TABLE clinic (id int);")
    await migrate(database_url, "booking", tmp_path)
    path.write_text("CREATE TABLE clinic (id bigint);")
    write(tmp_path, "0002_create_room.sql", "CREATE TABLE room (id int);")

    with pytest.raises(
        MigrationError, match=r"changed since they were applied: 0001 \(0001_create_clinic\.sql\)"
    ):
        await migrate(database_url, "booking", tmp_path)

    assert [v for v, _, _ in recorded(database_url, "booking")][-1] == "0001"


def test_duplicate_numbers_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "0001_a.sql", "SELECT 1;")
    write(tmp_path, "0001_b.sql", "SELECT 1;")

    with pytest.raises(MigrationError, match=r"0001 is used by more than one file: 0001_a.sql"):
        load_migrations(tmp_path)


def test_gaps_in_numbers_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "0001_a.sql", "SELECT 1;")
    write(tmp_path, "0003_c.sql", "SELECT 1;")

    with pytest.raises(MigrationError, match=r"without gaps; missing: 0002"):
        load_migrations(tmp_path)


def test_badly_named_files_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "0001_a.sql", "SELECT 1;")
    write(tmp_path, "2_b.sql", "SELECT 1;")

    with pytest.raises(MigrationError, match=r"2_b.sql: name must be NNNN_description.sql"):
        load_migrations(tmp_path)


async def test_failing_file_is_rolled_back_entirely_and_named(
    database_url: str, tmp_path: Path
) -> None:
    write(tmp_path, "0001_ok.sql", "CREATE TABLE ok (id int);")
    write(
        tmp_path, "0002_broken.sql", "CREATE TABLE half (id int); INSERT INTO missing VALUES (1);"
    )

    with pytest.raises(MigrationError, match=r"0002 \(0002_broken.sql\) failed.*42P01"):
        await migrate(database_url, "booking", tmp_path)

    with psycopg.connect(database_url) as conn:
        half = conn.execute("SELECT to_regclass('booking.half')").fetchone()
    assert half == (None,)
    assert [v for v, _, _ in recorded(database_url, "booking")][-1] == "0001"


async def test_concurrent_migrators_apply_each_file_exactly_once(
    database_url: str, tmp_path: Path
) -> None:
    # Every file appends to `applications`; a file applied twice would add a second row (and
    # CREATE TABLE without IF NOT EXISTS would fail). The sleep widens the race window.
    write(
        tmp_path,
        "0001_log.sql",
        "CREATE TABLE applications (version text NOT NULL);"
        " INSERT INTO applications VALUES ('0001'); SELECT pg_sleep(0.05);",
    )
    for number in range(2, 6):
        write(
            tmp_path,
            f"{number:04d}_step.sql",
            f"CREATE TABLE step_{number} (id int);"
            f" INSERT INTO applications VALUES ('{number:04d}'); SELECT pg_sleep(0.02);",
        )

    results = await asyncio.gather(*(migrate(database_url, "booking", tmp_path) for _ in range(5)))

    applied_by_anyone = sorted(v for result in results for v in result)
    assert applied_by_anyone == sorted([*common_versions(), "0001", "0002", "0003", "0004", "0005"])
    with psycopg.connect(database_url) as conn:
        log = conn.execute("SELECT version FROM booking.applications ORDER BY version").fetchall()
    assert log == [("0001",), ("0002",), ("0003",), ("0004",), ("0005",)]


async def test_migrate_all_migrates_each_service_into_its_own_schema(
    database_url: str, tmp_path: Path
) -> None:
    write(tmp_path / "a", "0001_clinic.sql", "CREATE TABLE clinic (id int);")
    write(tmp_path / "b", "0001_offer.sql", "CREATE TABLE offer (id int);")

    applied = await migrate_all(
        database_url,
        [
            ServiceMigrations("booking", tmp_path / "a"),
            ServiceMigrations("waitlist", tmp_path / "b"),
        ],
    )

    assert applied == {
        "booking": [*common_versions(), "0001"],
        "waitlist": [*common_versions(), "0001"],
    }
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT to_regclass('booking.clinic')::text, to_regclass('waitlist.offer')::text"
        ).fetchone()
    assert found == ("booking.clinic", "waitlist.offer")


def test_discovery_finds_service_packages_with_migration_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for package, has_sql in (("fake_a_svc", True), ("fake_b_svc", False)):
        folder = tmp_path / package
        (folder / "migrations").mkdir(parents=True)
        (folder / "__init__.py").write_text("")
        if has_sql:
            (folder / "migrations" / "0001_init.sql").write_text("SELECT 1;")
    monkeypatch.syspath_prepend(str(tmp_path))

    found = discover_service_migrations(("fake_a_svc", "fake_b_svc", "not_installed_svc"))

    assert found == [("fake_a", tmp_path / "fake_a_svc" / "migrations")]
    assert "fake_a_svc" not in sys.modules
