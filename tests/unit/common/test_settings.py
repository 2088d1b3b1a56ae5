"""Settings are read once from the environment, validated, and every problem is named."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from common.settings import VARIABLES, Settings, SettingsError

KEY = base64.b64encode(b"k" * 32).decode()

VALID = {
    "MEDSCHED_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/medsched",
    "MEDSCHED_NATS_URL": "nats://127.0.0.1:4222",
    "MEDSCHED_REDIS_URL": "redis://127.0.0.1:6379/0",
    "MEDSCHED_ENCRYPTION_KEYS": f"dev1:{KEY}",
    "MEDSCHED_ENCRYPTION_ACTIVE_KEY": "dev1",
    "MEDSCHED_HASH_KEY": KEY,
    "MEDSCHED_PRINCIPAL_KEY": KEY,
}


def test_valid_environment_gives_frozen_settings_with_defaults() -> None:
    settings = Settings.from_env("booking", VALID)
    assert settings.grpc_listen == "127.0.0.1:0"
    assert settings.tls is None
    assert settings.hash_key == b"k" * 32
    assert settings.shutdown_grace_s == 10.0
    with pytest.raises(AttributeError):
        settings.grpc_listen = "0.0.0.0:1"  # type: ignore[misc]


def test_every_problem_is_reported_at_once() -> None:
    env = dict(VALID)
    del env["MEDSCHED_DATABASE_URL"]
    env["MEDSCHED_NATS_URL"] = "http://wrong"
    env["MEDSCHED_HASH_KEY"] = base64.b64encode(b"short").decode()
    env["MEDSCHED_GRPC_LISTEN"] = "nohostport"
    with pytest.raises(SettingsError) as caught:
        Settings.from_env("booking", env)
    fields = {v.field for v in caught.value.violations}
    assert fields == {
        "MEDSCHED_DATABASE_URL",
        "MEDSCHED_NATS_URL",
        "MEDSCHED_HASH_KEY",
        "MEDSCHED_GRPC_LISTEN",
    }


def test_secrets_never_appear_in_repr_or_errors() -> None:
    settings = Settings.from_env("booking", VALID)
    assert KEY not in repr(settings)
    assert "kkkk" not in repr(settings)
    env = dict(VALID, MEDSCHED_PRINCIPAL_KEY="not base64!!")
    with pytest.raises(SettingsError) as caught:
        Settings.from_env("booking", env)
    assert "not base64" not in str(caught.value)


def test_partial_tls_configuration_is_refused(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    env = dict(VALID, MEDSCHED_TLS_CA=str(ca))
    with pytest.raises(SettingsError) as caught:
        Settings.from_env("booking", env)
    assert {v.field for v in caught.value.violations} == {"MEDSCHED_TLS_CERT", "MEDSCHED_TLS_KEY"}


def test_service_addresses_are_parsed_and_missing_ones_named() -> None:
    env = dict(VALID, MEDSCHED_SERVICE_ADDRS="eligibility=127.0.0.1:50053, booking=h:1")
    settings = Settings.from_env("booking", env)
    assert settings.address_of("eligibility") == "127.0.0.1:50053"
    with pytest.raises(SettingsError, match="waitlist"):
        settings.address_of("waitlist")


def test_readme_documents_every_variable() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    missing = [v.name for v in VARIABLES if f"`{v.name}`" not in readme]
    assert missing == []
