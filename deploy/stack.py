"""`medsched up`: the whole system on one machine, on embedded or external infrastructure.

Order of start: infrastructure (embedded servers, or the URLs from the environment), the dev
certificate authority, dev secrets, migrations, then every service and the gateway as child
processes. Each child is waited on until its health check says SERVING; then the endpoints are
printed and written to `<data dir>/endpoints.json` for tools and scripts. Ctrl-C or SIGTERM stops
the children (gateway first, infrastructure last) and the data stays for the next start.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy.certs import DevPki, ensure_dev_pki
from deploy.embedded import Infra, free_port, port_is_free, start_infra

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Component:
    """A process `up` starts: its name, module, and preferred port (0: any free port)."""

    name: str
    module: str
    preferred_port: int
    kind: str = "grpc"  # "grpc" (health-checked over gRPC) or "http" (checked over HTTPS)


# The payer simulator stands in for the clearinghouse: a separate HTTPS process speaking CAQH
# CORE, reached by eligibility_svc through the routing table `up` writes for it.
PAYER_SIMULATOR = Component("payer-sim", "eligibility_svc.payer_sim", 50060, kind="http")
SIMULATED_PAYER_ID = "SIMPAYER"
# A syntactically valid NPI (Luhn check digit) for the demo organization's 270s.
DEMO_PROVIDER_NPI = "1234567893"

COMPONENTS: tuple[Component, ...] = (
    PAYER_SIMULATOR,
    Component("availability", "availability_svc.main", 50051),
    Component("booking", "booking_svc.main", 50052),
    Component("eligibility", "eligibility_svc.main", 50053),
    Component("waitlist", "waitlist_svc.main", 50054),
    Component("notify", "notify_svc.main", 50055),
    Component("gateway", "gateway.main", 8443, kind="http"),
)

EXTERNAL_URL_VARS = ("MEDSCHED_DATABASE_URL", "MEDSCHED_NATS_URL", "MEDSCHED_REDIS_URL")
SECRET_VARS = (
    "MEDSCHED_ENCRYPTION_KEYS",
    "MEDSCHED_ENCRYPTION_ACTIVE_KEY",
    "MEDSCHED_HASH_KEY",
    "MEDSCHED_PRINCIPAL_KEY",
)


class StackError(RuntimeError):
    """The stack could not start; the message names the component and its log file."""


def _port_or_free(preferred: int) -> int:
    return preferred if preferred and port_is_free(preferred) else free_port()


def dev_secrets(data_dir: Path) -> dict[str, str]:
    """Development keys, made once and kept (0600) so data encrypted earlier stays readable."""
    path = data_dir / "secrets.json"
    if path.exists():
        loaded: dict[str, str] = json.loads(path.read_text())
        return loaded

    def key(size: int = 32) -> str:
        return base64.b64encode(secrets.token_bytes(size)).decode()

    made = {
        "MEDSCHED_ENCRYPTION_KEYS": f"dev1:{key()}",
        "MEDSCHED_ENCRYPTION_ACTIVE_KEY": "dev1",
        "MEDSCHED_HASH_KEY": key(),
        "MEDSCHED_PRINCIPAL_KEY": key(),
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(made, handle, indent=2)
    return made


@dataclass
class Stack:
    """What `up` started, and how to reach it."""

    data_dir: Path
    pki: DevPki
    env: dict[str, str]
    addresses: dict[str, str]
    infra: Infra | None
    metrics: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def endpoints(self) -> dict[str, object]:
        gateway = self.addresses.get("gateway")
        return {
            "gateway_url": f"https://{gateway}" if gateway else None,
            "payer_simulator": (
                f"https://{self.addresses['payer-sim']}" if "payer-sim" in self.addresses else None
            ),
            "services": {
                c.name: self.addresses[c.name]
                for c in COMPONENTS
                if c.kind == "grpc" and c.name in self.addresses
            },
            "ca_cert": str(self.pki.ca_cert),
            "operator_cert": str(self.pki.cert("operator")),
            "operator_key": str(self.pki.key("operator")),
            "database_url": self.env["MEDSCHED_DATABASE_URL"],
            "nats_url": self.env["MEDSCHED_NATS_URL"],
            "redis_url": self.env["MEDSCHED_REDIS_URL"],
            "metrics": {name: f"http://{addr}/metrics" for name, addr in self.metrics.items()},
            "logs": str(self.data_dir / "logs"),
        }

    def stop(self) -> None:
        for component in reversed(COMPONENTS):
            process = self.processes.pop(component.name, None)
            if process is None or process.poll() is not None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self.infra is not None:
            self.infra.stop()
            self.infra = None


def base_environment(
    data_dir: Path, environ: Mapping[str, str], *, durable: bool = True
) -> tuple[dict[str, str], Infra | None]:
    """Infrastructure URLs and secrets: from the environment when given, else embedded/dev."""
    env = {k: v for k, v in environ.items() if k.startswith("MEDSCHED_")}
    infra: Infra | None = None
    given = [name for name in EXTERNAL_URL_VARS if environ.get(name)]
    if given and len(given) != len(EXTERNAL_URL_VARS):
        missing = sorted(set(EXTERNAL_URL_VARS) - set(given))
        raise StackError(f"external infrastructure needs all URLs; missing {', '.join(missing)}")
    if not given:
        infra = start_infra(data_dir / "infra", durable=durable)
        env.update(
            MEDSCHED_DATABASE_URL=infra.database_url,
            MEDSCHED_NATS_URL=infra.nats_url,
            MEDSCHED_REDIS_URL=infra.redis_url,
        )
    if not all(environ.get(name) for name in SECRET_VARS):
        env.update(dev_secrets(data_dir))
    return env, infra


async def _wait_serving(
    component: Component,
    address: str,
    pki: DevPki,
    deadline: float,
    process: subprocess.Popen[bytes],
) -> None:
    from deploy.health import check_grpc_health, check_https_health

    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"{component.name} exited with status {process.returncode}")
        try:
            if component.kind == "grpc":
                if await check_grpc_health(address, pki, timeout_s=1.0):
                    return
            elif await check_https_health(address, pki, timeout_s=1.0):
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise StackError(f"{component.name} did not become ready in time")


def start_stack(
    data_dir: Path,
    *,
    environ: Mapping[str, str] | None = None,
    components: Sequence[Component] = COMPONENTS,
    durable: bool = True,
    ready_timeout_s: float = 60.0,
    demo_data: bool = True,
) -> Stack:
    """Start everything `up` starts and return once every component reports SERVING.

    `demo_data` seeds (or, when present, rolls forward) the small synthetic organization of
    `medsched seed`, so search and the README's examples have schedules to work with.
    """
    from common.migrations import migrate_all

    data_dir = data_dir.resolve()
    source = os.environ if environ is None else environ
    env, infra = base_environment(data_dir, source, durable=durable)
    pki = ensure_dev_pki(data_dir / "pki")
    stack = Stack(data_dir=data_dir, pki=pki, env=env, addresses={}, infra=infra)
    try:
        asyncio.run(migrate_all(env["MEDSCHED_DATABASE_URL"]))
        if demo_data:
            asyncio.run(seed_demo_organization(env["MEDSCHED_DATABASE_URL"]))
        for component in components:
            port = _port_or_free(component.preferred_port)
            stack.addresses[component.name] = f"127.0.0.1:{port}"
            if component.kind == "grpc":
                stack.metrics[component.name] = f"127.0.0.1:{free_port()}"
        service_addrs = ",".join(
            f"{c.name}={stack.addresses[c.name]}" for c in components if c.kind == "grpc"
        )
        logs = data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        if "payer-sim" in stack.addresses:
            env["MEDSCHED_ELIGIBILITY_ROUTES"] = str(
                write_simulator_routes(data_dir, stack.addresses["payer-sim"], pki)
            )
        for component in components:
            child_env = dict(os.environ if environ is None else environ)
            child_env.update(env)
            child_env.update(_component_env(component, stack, service_addrs))
            log = (logs / f"{component.name}.log").open("ab")
            stack.processes[component.name] = subprocess.Popen(
                [sys.executable, "-m", component.module, *_component_args(component, stack)],
                env=child_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches `up`, which stops children in order
            )
            log.close()
        deadline = time.monotonic() + ready_timeout_s
        for component in components:
            try:
                asyncio.run(
                    _wait_serving(
                        component,
                        stack.addresses[component.name],
                        pki,
                        deadline,
                        stack.processes[component.name],
                    )
                )
            except StackError as e:
                log_path = logs / f"{component.name}.log"
                raise StackError(f"{e}; see {log_path}") from None
        (data_dir / "endpoints.json").write_text(json.dumps(stack.endpoints(), indent=2) + "\n")
    except BaseException:
        stack.stop()
        raise
    return stack


async def seed_demo_organization(database_url: str) -> None:
    from availability_svc.seed import seed_organization
    from common.db import open_pool

    pool = await open_pool(
        database_url, min_size=1, max_size=4, name="medsched-up-seed", statement_timeout_ms=0
    )
    try:
        summary = await seed_organization(pool)
    finally:
        await pool.close()
    logger.info("demo organization ready", extra={"organization_id": summary.organization_id})


def write_simulator_routes(data_dir: Path, address: str, pki: DevPki) -> Path:
    """The payer routing table pointing eligibility_svc at the simulator (CORE over SOAP)."""
    path = data_dir / "eligibility-routes.json"
    routes = {
        "payers": [
            {
                "payer_id": SIMULATED_PAYER_ID,
                "endpoint": f"https://{address}/core/soap",
                "transport": "soap",
                "sender_id": "MEDSCHED",
                "receiver_id": SIMULATED_PAYER_ID,
                "username": "medsched",
                "password_file": str(_simulator_password_file(data_dir)),
                "payer_name": "SIMULATED HEALTH PLAN",
                "payer_identifier": "SIM001",
                "ca_file": str(pki.ca_cert),
            }
        ],
        "organizations": [
            {
                "organization_id": "*",
                "name": "MEDSCHED DEMO CLINIC",
                "npi": DEMO_PROVIDER_NPI,
                "time_zone": "America/New_York",
            }
        ],
    }
    path.write_text(json.dumps(routes, indent=2) + "\n")
    return path


def _simulator_password_file(data_dir: Path) -> Path:
    """The CORE password shared by eligibility_svc and the simulator, made once (0600)."""
    path = data_dir / "payer-sim-password"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(24))
    return path


def _component_args(component: Component, stack: Stack) -> list[str]:
    if component is not PAYER_SIMULATOR:
        return []
    return [
        "--listen", stack.addresses[component.name],
        "--tls-cert", str(stack.pki.cert(component.name)),
        "--tls-key", str(stack.pki.key(component.name)),
        "--password-file", str(_simulator_password_file(stack.data_dir)),
    ]  # fmt: skip


def _component_env(component: Component, stack: Stack, service_addrs: str) -> dict[str, str]:
    address = stack.addresses[component.name]
    pki = stack.pki
    identity = component.name if component.kind == "http" else f"svc-{component.name}"
    env = {
        "MEDSCHED_TLS_CA": str(pki.ca_cert),
        "MEDSCHED_TLS_CERT": str(pki.cert(identity)),
        "MEDSCHED_TLS_KEY": str(pki.key(identity)),
        "MEDSCHED_SERVICE_ADDRS": service_addrs,
    }
    if component.kind == "grpc":
        env["MEDSCHED_GRPC_LISTEN"] = address
        env["MEDSCHED_TLS_REQUIRE_CLIENT_CERT"] = "true"
        env["MEDSCHED_METRICS_LISTEN"] = stack.metrics[component.name]
    elif component is not PAYER_SIMULATOR:
        env["MEDSCHED_HTTP_LISTEN"] = address
        # The development token issuer: `medsched token` mints tokens this gateway accepts.
        env["MEDSCHED_GATEWAY_DEV_ISSUER_DIR"] = str(stack.data_dir / "dev-issuer")
    return env


def run_up(data_dir: Path) -> int:
    """Foreground `medsched up`: start, print endpoints, wait for Ctrl-C, stop cleanly."""
    stopping = False

    def request_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    print(f"starting medsched (data in {data_dir}) ...", flush=True)
    try:
        stack = start_stack(data_dir)
    except StackError as exc:
        print(f"medsched up failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(stack.endpoints(), indent=2))
    print(f"endpoints written to {data_dir.resolve() / 'endpoints.json'}")
    print("medsched is up; press Ctrl-C to stop.", flush=True)
    try:
        while not stopping:
            for name, process in stack.processes.items():
                if process.poll() is not None:
                    print(f"{name} exited with {process.returncode}; stopping", file=sys.stderr)
                    stopping = True
                    break
            time.sleep(0.5)
    finally:
        print("stopping ...", flush=True)
        stack.stop()
        print("stopped.")
    return 0
