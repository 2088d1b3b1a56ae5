"""The payer routing table file: TOML and JSON, secrets from files, precise errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eligibility_svc.routing import RoutingConfigError, Transport, load_routing_table

TOML = """
[[payers]]
payer_id = "SIMPAYER"
endpoint = "https://127.0.0.1:8444/core/mime"
transport = "MIME"
sender_id = "MEDSCHED"
receiver_id = "SIMPAYER"
username = "medsched"
password_file = "secret.txt"
payer_name = "SIMULATED HEALTH PLAN"
payer_identifier = "SIM001"
ca_file = "ca.crt"

[[organizations]]
organization_id = "*"
name = "RIVERSIDE CLINIC"
npi = "1234567893"
time_zone = "America/New_York"
"""


def test_toml_table_with_password_file_and_fallback_organization(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("hunter2\n")
    path = tmp_path / "routes.toml"
    path.write_text(TOML)
    table = load_routing_table(path)
    route = table.route("SIMPAYER")
    assert route is not None
    assert route.transport is Transport.MIME
    assert route.password == "hunter2"
    assert route.ca_file == tmp_path / "ca.crt"
    assert "hunter2" not in repr(route)
    provider = table.provider("any-org")
    assert provider is not None
    assert (provider.npi, provider.time_zone) == ("1234567893", "America/New_York")
    assert table.route("OTHER") is None


def payer(**changes: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "payer_id": "P",
        "endpoint": "https://payer.example/core",
        "transport": "soap",
        "sender_id": "MEDSCHED",
        "receiver_id": "P",
        "username": "u",
        "password": "p",
        "payer_name": "PAYER",
        "payer_identifier": "P1",
    }
    return entry | changes


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"payers": [payer(endpoint="http://payer.example/core")]}, r"payers\[0\]\.endpoint"),
        ({"payers": [payer(transport="ftp")]}, r"payers\[0\]\.transport: must be soap or mime"),
        ({"payers": [payer(password=None)]}, r"payers\[0\]\.password: give exactly one"),
        ({"payers": [payer(sender_id="WAY*TOO*LONG*SENDER")]}, r"payers\[0\]\.sender_id"),
        ({"payers": [payer(), payer()]}, r"payers\[1\]: payer_id is listed twice"),
        (
            {"organizations": [{"organization_id": "o", "name": "N", "npi": "1234567890"}]},
            r"organizations\[0\]\.npi",
        ),
        (
            {
                "organizations": [
                    {"organization_id": "o", "name": "N", "npi": "1234567893", "time_zone": "Mars"}
                ]
            },
            r"organizations\[0\]\.time_zone",
        ),
    ],
)
def test_invalid_entries_are_named(
    tmp_path: Path, document: dict[str, object], message: str
) -> None:
    path = tmp_path / "routes.json"
    path.write_text(json.dumps(document))
    with pytest.raises(RoutingConfigError, match=message):
        load_routing_table(path)


def test_unparsable_file_does_not_echo_its_content(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text('password = "hunter2\n')
    with pytest.raises(RoutingConfigError) as raised:
        load_routing_table(path)
    assert "hunter2" not in str(raised.value)
