"""`x12 parse` and `x12 build` as an operator runs them (through argparse)."""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

import pytest

from eligibility_svc.x12 import parse_270
from eligibility_svc.x12.cli import add_x12_commands
from tests.unit.x12.documents import INQUIRY_270, RESPONSE_271, edi, replaced

BUILD_ARGS = [
    "x12",
    "build",
    "--payer-id",
    "77777",
    "--payer-name",
    "ACME HEALTH PLAN",
    "--provider-npi",
    "1234567893",
    "--provider-name",
    "RIVERSIDE CLINIC",
    "--member-id",
    "W123456789",
    "--first",
    "JOHN",
    "--last",
    "SMITH",
    "--dob",
    "1963-05-19",
    "--service-type",
    "30",
    "--service-type",
    "98",
    "--date",
    "2026-03-02",
    "--control-number",
    "42",
]


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="medsched")
    add_x12_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "input.edi"
    path.write_text(text)
    return path


def test_parse_prints_the_normalized_271_and_its_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(["x12", "parse", str(write(tmp_path, edi(RESPONSE_271))), "--service-type", "98"])

    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["transaction_set"] == "271"
    (entry,) = out["summaries"]
    assert entry["summary"]["status"] == "ACTIVE"
    assert entry["summary"]["copays"][0]["amount"] == "25.00"
    assert entry["summary"]["copays"][0]["in_network"] is True
    benefit = out["interchange"]["groups"][0]["transactions"][0]["sources"][0]["receivers"][0][
        "subscribers"
    ][0]["benefits"][0]
    assert benefit["meaning"] == "Active Coverage"
    assert benefit["coverage"] == "ACTIVE"
    assert benefit["plan_description"] == "SILVER PLAN"


def test_parse_of_a_270_prints_the_inquiry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(["x12", "parse", str(write(tmp_path, edi(INQUIRY_270)))])

    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["transaction_set"] == "270"
    inquiry = out["interchange"]["groups"][0]["transactions"][0]
    assert inquiry["subscriber"]["birth_date"] == "1963-05-19"
    assert inquiry["service_inquiries"][0]["service_types"] == ["30"]


def test_parse_redacts_isa_security_information(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    isa = RESPONSE_271[0].replace("*00*          *00*          *", "*00*          *01*SECRET    *")

    run(["x12", "parse", str(write(tmp_path, edi((isa, *RESPONSE_271[1:]))))])

    out = capsys.readouterr().out
    assert "SECRET" not in out
    assert json.loads(out)["interchange"]["header"]["security"] == "***"


def test_parse_of_malformed_input_exits_2_with_the_located_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, edi(replaced(RESPONSE_271, 14, "EB*ZZ")))

    code = run(["x12", "parse", str(path)])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err == (
        f"{path}: segment 14 (EB): element EB01: expected an eligibility code, found 'ZZ'\n"
    )


def test_parse_of_a_4010_file_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gs = "GS*HB*PAYER*SUBMITTER*20260301*0930*42*X*004010X092A1"
    path = write(tmp_path, edi(replaced(RESPONSE_271, 2, gs)))

    code = run(["x12", "parse", str(path)])

    assert code == 3
    assert "this is an X12 4010 file ('004010X092A1')" in capsys.readouterr().err


def test_parse_of_a_missing_file_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(["x12", "parse", str(tmp_path / "absent.edi")])

    assert code == 1
    assert capsys.readouterr().err.startswith(f"cannot read {tmp_path / 'absent.edi'}")


def test_build_prints_a_270_that_parses_back_to_the_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = run(BUILD_ARGS)

    text = capsys.readouterr().out
    assert code == 0
    interchange = parse_270(text)
    assert interchange.warnings == ()
    assert interchange.header.control_number == 42
    assert interchange.header.usage == "T"
    (inquiry,) = interchange.transactions
    assert inquiry.control_number == "0042"
    assert inquiry.information_source.identifier == "77777"
    assert inquiry.information_receiver.entity.identifier == "1234567893"
    assert inquiry.subscriber.entity.identifier == "W123456789"
    assert inquiry.subscriber.birth_date == date(1963, 5, 19)
    assert inquiry.subscriber.dates[0].start == date(2026, 3, 2)
    assert inquiry.service_inquiries[0].service_types == ("30", "98")
    assert text.splitlines()[-1] == "IEA*1*000000042~"


def test_build_with_only_the_required_fields(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*BUILD_ARGS]
    for option in ("--payer-name", "--provider-name"):
        at = argv.index(option)
        del argv[at : at + 2]

    code = run(argv)

    (inquiry,) = parse_270(capsys.readouterr().out).transactions
    assert code == 0
    assert inquiry.information_source.name is None
    assert inquiry.information_receiver.entity.name is None


def test_build_refuses_a_name_holding_a_delimiter(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*BUILD_ARGS]
    argv[argv.index("SMITH")] = "SMITH~JONES"

    code = run(argv)

    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err == (
        "cannot build the 270: interchange.groups[0].transactions[0].subscriber.entity.name: "
        "contains one of the delimiters\n"
    )
