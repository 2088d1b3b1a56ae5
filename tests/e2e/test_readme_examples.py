"""The README's grpcurl and curl examples work against a running `medsched up`.

The shell blocks of the README's "Calling it" section are run as written, from a folder where
`.medsched` is the running stack's data folder and `.venv` this environment, with only the
ports rewritten to the ones the test stack got.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.stack import COMPONENTS, Stack

README = Path(__file__).resolve().parents[2] / "README.md"
DEFAULT_PORTS = {c.name: c.preferred_port for c in COMPONENTS}
BASH = shutil.which("bash") or "/bin/bash"


def calling_it_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("## Calling it", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def with_real_ports(script: str, stack: Stack) -> str:
    for name, port in DEFAULT_PORTS.items():
        script = script.replace(f"127.0.0.1:{port}", stack.addresses[name])
    return script


def run_block(script: str, stack: Stack, workdir: Path) -> list[str]:
    """Run a block in one shell as written; return what each command printed."""
    marker = "__medsched_readme_output__"
    # A DEBUG trap prints a marker before every command, so outputs can be told apart
    # however the README breaks its commands over lines.
    prelude = f"trap 'echo {marker}' DEBUG\n"
    result = subprocess.run(
        [BASH, "-euo", "pipefail", "-c", prelude + script],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"README block failed:\n{script}\n{result.stderr}"
    return [part.strip() for part in result.stdout.split(marker) if part.strip()]


@pytest.fixture(scope="module")
def readme_workdir(running_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("readme")
    (workdir / ".medsched").symlink_to(running_stack.data_dir)
    (workdir / ".venv").symlink_to(Path(sys.prefix))
    return workdir


def test_readme_has_grpcurl_and_curl_examples() -> None:
    blocks = "\n".join(calling_it_blocks())
    assert "grpcurl" in blocks
    assert "curl" in blocks
    assert "/v1/availability" in blocks
    assert "/v1/appointments" in blocks
    assert "BookingService/BookAppointment" in blocks


def test_every_readme_example_runs_and_answers_without_server_errors(
    running_stack: Stack, readme_workdir: Path
) -> None:
    # The blocks are one terminal session: later ones use variables set by earlier ones.
    session = "\n".join(calling_it_blocks())
    outputs = run_block(with_real_ports(session, running_stack), running_stack, readme_workdir)
    assert outputs, "no commands ran"
    for output in outputs:
        if not output.startswith("{"):
            continue
        document = json.loads(output)
        status = document.get("status")
        assert not (isinstance(status, int) and status >= 500), output[:300]
    documents = [json.loads(o) for o in outputs if o.startswith("{")]
    assert any('"SERVING"' in output for output in outputs)
    assert any(d.get("openapi", "").startswith("3.1") for d in documents)
    # grpcurl prints proto field names (snake_case), the gateway canonical JSON (camelCase).
    searches = [d for d in documents if "slots" in d and "indexTime" in d]
    assert searches, "no search answered"
    assert len(searches[0]["slots"]) == 20
    assert all(s["provider"]["specialties"] == ["cardiology"] for s in searches[0]["slots"])
    problems = [d for d in documents if d.get("status") == 400]
    assert [e["field"] for e in problems[0]["errors"]] == ["radius"]
    grpc_searches = [d for d in documents if "slots" in d and "index_time" in d]
    assert grpc_searches, "the grpcurl search printed nothing"
    assert len(grpc_searches[0]["slots"]) == 3
    statuses = [d.get("status") for d in documents if "checkId" in d or "check_id" in d]
    assert statuses == ["INACTIVE", "ACTIVE"]
    # Booking through the gateway: booked, refused to someone else, cancelled.
    booked = [d for d in documents if "appointmentId" in d and d["patientId"] == "patient-123"]
    assert [d["status"] for d in booked] == ["BOOKED", "CANCELLED"]
    assert booked[0]["appointmentId"] == booked[1]["appointmentId"]
    assert booked[1]["cancellationReason"] == "PATIENT_REQUEST"
    refusals = [d for d in documents if d.get("status") == 409]
    assert len(refusals) == 1
    refusal = refusals[0]["details"][0]
    assert refusal["@type"] == "type.googleapis.com/medsched.booking.v1.BookingRefusal"
    taken = [v for v in refusal["violations"] if v["reason"] == "TAKEN"]
    assert taken
    assert booked[0]["slotId"] in taken[0]["slotIds"]
    grpc_booked = [d for d in documents if d.get("patient_id") == "patient-789"]
    assert [d["status"] for d in grpc_booked] == ["BOOKED"]
    assert grpc_booked[0]["appointment_id"]
    # Administering: a PTO day over patient-789's visit is created and names the conflict.
    exceptions = [d for d in documents if "exceptionId" in d]
    assert [e["kind"] for e in exceptions] == ["PTO"]
    assert exceptions[0]["conflictIds"], "the booked visit must be reported as a conflict"
    conflict_lists = [d for d in documents if "conflicts" in d]
    assert conflict_lists
    listed = {c["conflictId"]: c for c in conflict_lists[-1]["conflicts"]}
    assert set(exceptions[0]["conflictIds"]) <= set(listed)
    assert any(c.get("appointmentId") == grpc_booked[0]["appointment_id"] for c in listed.values())
