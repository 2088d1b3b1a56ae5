"""`medsched x12 parse|build`: operator tools for X12 270/271 files.

Exit codes of `x12 parse`: 0 parsed (JSON on stdout), 1 the file cannot be read, 2 the
content is not valid X12 270/271 (the located error on stderr), 3 the file is X12 4010 or
another unsupported version (said so on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date, datetime
from pathlib import Path
from typing import TextIO

from eligibility_svc.x12 import codes
from eligibility_svc.x12.errors import UnsupportedVersion, X12Error
from eligibility_svc.x12.export import to_jsonable
from eligibility_svc.x12.model import (
    DatePeriod,
    EligibilityInquiry,
    EligibilityResponse,
    Entity,
    InformationReceiver,
    Interchange,
    Member,
    ServiceInquiry,
)
from eligibility_svc.x12.reader import parse_x12
from eligibility_svc.x12.summary import summarize
from eligibility_svc.x12.writer import build_270, interchange_for

EXIT_OK = 0
EXIT_UNREADABLE = 1
EXIT_INVALID = 2
EXIT_UNSUPPORTED_VERSION = 3


def add_x12_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `x12 parse` and `x12 build` on a `medsched`-style subparsers object."""
    x12 = subparsers.add_parser("x12", help="parse and build X12 270/271 eligibility files")
    commands = x12.add_subparsers(dest="x12_command", required=True, metavar="X12_COMMAND")
    _add_parse(commands)
    _add_build(commands)


def _add_parse(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parse = commands.add_parser(
        "parse",
        help="print a 270/271 file as normalized JSON (exit 2: invalid, 3: 4010 or other version)",
    )
    parse.add_argument("file", type=Path, help="the X12 file")
    parse.add_argument(
        "--service-type",
        default=codes.HEALTH_BENEFIT_PLAN_COVERAGE,
        help="service type the 271 summary is computed for (default: 30)",
    )
    parse.set_defaults(func=_cmd_parse)


def _add_build(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    build = commands.add_parser("build", help="print a 005010X279A1 270 built from the fields")
    build.add_argument("--payer-id", required=True, help="payer id (NM109 of NM1*PR, PI)")
    build.add_argument(
        "--payer-name", help="payer name, NM103 of NM1*PR (the TR3 requires it; most payers check)"
    )
    build.add_argument("--provider-npi", required=True, help="provider NPI (NM109, XX)")
    build.add_argument("--provider-name", help="provider organization name (NM103 of NM1*1P)")
    build.add_argument("--member-id", required=True, help="subscriber member id (MI)")
    build.add_argument("--first", required=True, help="subscriber first name")
    build.add_argument("--last", required=True, help="subscriber last name")
    build.add_argument("--middle", help="subscriber middle name")
    build.add_argument("--dob", required=True, type=_iso_date, help="birth date YYYY-MM-DD")
    build.add_argument("--gender", choices=sorted(codes.GENDERS), help="F, M or U")
    build.add_argument(
        "--service-type",
        action="append",
        dest="service_types",
        help="EQ01 service type code; repeat for several (default: 30)",
    )
    build.add_argument("--date", type=_iso_date, help="date of service YYYY-MM-DD (default: today)")
    build.add_argument("--sender-id", help="ISA06/GS02 (default: the provider NPI)")
    build.add_argument("--receiver-id", help="ISA08/GS03 (default: the payer id)")
    build.add_argument("--control-number", type=int, default=1, help="ISA13/GS06 (default: 1)")
    build.add_argument("--reference", help="BHT03 reference (default: the control number)")
    build.add_argument("--usage", choices=("P", "T"), default="T", help="ISA15 (default: T, test)")
    build.add_argument(
        "--single-line", action="store_true", help="no line break after each segment"
    )
    build.set_defaults(func=_cmd_build)


def _iso_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError("expected a date YYYY-MM-DD") from e


def _cmd_parse(args: argparse.Namespace) -> int:
    return run_parse(args.file, args.service_type, sys.stdout, sys.stderr)


def run_parse(path: Path, service_type: str, out: TextIO, err: TextIO) -> int:
    """Print the normalized JSON of an X12 file; return the exit code (see module docstring)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        print(f"cannot read {path}: {e.strerror or e}", file=err)
        return EXIT_UNREADABLE
    try:
        interchange = parse_x12(data)
    except UnsupportedVersion as e:
        print(f"{path}: unsupported version: {e}", file=err)
        return EXIT_UNSUPPORTED_VERSION
    except X12Error as e:
        print(f"{path}: {e}", file=err)
        return EXIT_INVALID
    json.dump(_document(interchange, service_type), out, indent=2)
    out.write("\n")
    return EXIT_OK


def _document(
    interchange: Interchange[EligibilityInquiry] | Interchange[EligibilityResponse],
    service_type: str,
) -> dict[str, object]:
    transactions = interchange.transactions
    if all(isinstance(t, EligibilityInquiry) for t in transactions):
        return {"transaction_set": "270", "interchange": to_jsonable(interchange)}
    summaries = [
        {"control_number": t.control_number, "summary": to_jsonable(summarize(t, service_type))}
        for t in transactions
        if isinstance(t, EligibilityResponse)
    ]
    return {
        "transaction_set": "271",
        "interchange": to_jsonable(interchange),
        "summaries": summaries,
    }


def _cmd_build(args: argparse.Namespace) -> int:
    return run_build(args, datetime.now(), sys.stdout, sys.stderr)


def run_build(args: argparse.Namespace, now: datetime, out: TextIO, err: TextIO) -> int:
    """Print a 270 for the command-line fields; exit 2 when a field cannot be written."""
    control = int(args.control_number)
    inquiry = EligibilityInquiry(
        control_number=f"{control:04d}",
        reference=args.reference or str(control),
        created_date=now.date(),
        created_time=now.time().replace(second=0, microsecond=0),
        information_source=Entity(
            "PR", "2", args.payer_name, id_qualifier="PI", identifier=args.payer_id
        ),
        information_receiver=InformationReceiver(
            Entity("1P", "2", args.provider_name, id_qualifier="XX", identifier=args.provider_npi)
        ),
        subscriber=Member(
            entity=Entity(
                "IL",
                "1",
                args.last,
                first_name=args.first,
                middle_name=args.middle,
                id_qualifier="MI",
                identifier=args.member_id,
            ),
            birth_date=args.dob,
            gender=args.gender,
            dates=(DatePeriod("291", args.date or now.date()),),
        ),
        service_inquiries=(ServiceInquiry(service_types=tuple(args.service_types or ["30"])),),
    )
    interchange = interchange_for(
        [inquiry],
        sender_id=args.sender_id or args.provider_npi,
        receiver_id=args.receiver_id or args.payer_id,
        control_number=control,
        created=now,
        usage=args.usage,
    )
    try:
        text = build_270(interchange, line_breaks=not args.single_line)
    except X12Error as e:
        print(f"cannot build the 270: {e}", file=err)
        return EXIT_INVALID
    out.write(text if not args.single_line else text + "\n")
    return EXIT_OK
