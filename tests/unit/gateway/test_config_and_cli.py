"""Unit tests for the gateway's configuration and the `medsched token` command."""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

import jwt
import pytest

from common.settings import Settings, SettingsError
from gateway.cli import add_token_command
from gateway.config import GatewayConfig, packaged_descriptor_set
from gateway.dev_issuer import DEV_AUDIENCE, DEV_ISSUER, dev_issuer_folder, load_or_create
from gateway.main import config_from

KEY = base64.b64encode(b"k" * 32).decode()
ENVIRONMENT = {
    "MEDSCHED_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/medsched",
    "MEDSCHED_NATS_URL": "nats://127.0.0.1:4222",
    "MEDSCHED_REDIS_URL": "redis://127.0.0.1:6379/0",
    "MEDSCHED_ENCRYPTION_KEYS": f"dev1:{KEY}",
    "MEDSCHED_ENCRYPTION_ACTIVE_KEY": "dev1",
    "MEDSCHED_HASH_KEY": KEY,
    "MEDSCHED_PRINCIPAL_KEY": KEY,
    "MEDSCHED_SERVICE_ADDRS": "booking=127.0.0.1:50052,availability=127.0.0.1:50051",
}


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env("gateway", ENVIRONMENT)


def test_dev_issuer_folder_selects_the_dev_issuer(settings: Settings, tmp_path: Path) -> None:
    config = GatewayConfig.from_settings(settings, dev_issuer_dir=tmp_path)

    assert config.dev_mode
    assert config.token_issuer == DEV_ISSUER
    assert config.token_audience == DEV_AUDIENCE
    assert config.service_addrs == {"booking": "127.0.0.1:50052", "availability": "127.0.0.1:50051"}
    assert config.redis_url == "redis://127.0.0.1:6379/0"
    assert config.descriptor_set == packaged_descriptor_set()
    assert config.descriptor_set.is_file()


def test_jwks_url_wins_over_the_dev_issuer(settings: Settings, tmp_path: Path) -> None:
    config = GatewayConfig.from_settings(
        settings,
        jwks_url="https://idp.example.test/jwks",
        token_issuer="https://idp.example.test/",
        dev_issuer_dir=tmp_path,
    )

    assert not config.dev_mode
    assert config.token_issuer == "https://idp.example.test/"


def test_every_config_problem_is_named(settings: Settings) -> None:
    with pytest.raises(SettingsError) as caught:
        GatewayConfig.from_settings(
            settings,
            jwks_url="http://idp.example.test/jwks",
            cors_origins=["app.example.test"],
            rate_limit_per_minute=-1,
            max_body_bytes=10,
            backend_timeout_s=0,
        )

    named = {violation.field for violation in caught.value.violations}
    assert named == {
        "MEDSCHED_GATEWAY_JWKS_URL",
        "MEDSCHED_GATEWAY_TOKEN_ISSUER",
        "MEDSCHED_GATEWAY_CORS_ORIGINS",
        "MEDSCHED_GATEWAY_RATE_LIMIT",
        "MEDSCHED_GATEWAY_MAX_BODY_BYTES",
        "MEDSCHED_GATEWAY_BACKEND_TIMEOUT_S",
    }


def test_without_any_token_source_the_gateway_refuses(settings: Settings) -> None:
    with pytest.raises(SettingsError, match="MEDSCHED_GATEWAY_JWKS_URL"):
        config_from(settings)


def token_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsched")
    parser.add_argument("--data-dir")
    add_token_command(parser.add_subparsers(dest="command", required=True))
    return parser


def run_token(tmp_path: Path, *arguments: str) -> int:
    args = token_parser().parse_args(["--data-dir", str(tmp_path), "token", *arguments])
    result: int = args.func(args)
    return result


def test_token_command_prints_a_token_of_the_data_folders_issuer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = run_token(
        tmp_path, "--role", "staff", "--subject", "nurse-3", "--org", "o1", "--location", "l1"
    )

    token = capsys.readouterr().out.strip()
    issuer = load_or_create(dev_issuer_folder(tmp_path))
    claims = jwt.decode(
        token, issuer.private_key.public_key(), algorithms=["ES256"], audience=DEV_AUDIENCE
    )
    assert status == 0
    assert claims["sub"] == "nurse-3"
    assert claims["role"] == "staff"
    assert claims["org_ids"] == ["o1"]
    assert claims["location_ids"] == ["l1"]
    assert claims["iss"] == DEV_ISSUER


def test_patient_token_carries_the_patient_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_token(tmp_path, "--role", "patient", "--subject", "pat-17")

    claims = jwt.decode(capsys.readouterr().out.strip(), options={"verify_signature": False})
    assert claims["patient_id"] == "pat-17"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--role", "admin", "--subject", "a", "--patient-id", "p"], "only for --role patient"),
        (["--role", "patient", "--subject", "p", "--org", "o"], "only for --role staff"),
        (["--role", "admin", "--subject", "a", "--ttl-minutes", "0"], "must be positive"),
    ],
)
def test_inconsistent_token_options_are_refused(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    with pytest.raises(SystemExit, match=message):
        run_token(tmp_path, *arguments)
