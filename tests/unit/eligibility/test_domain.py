"""Eligibility commands, outcomes and decisions: validation, serialization, waits, cache age."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from common.errors import InvalidArgument
from eligibility_svc.domain import (
    Amount,
    CheckError,
    CheckStatus,
    CoverageState,
    EncodedOutcome,
    ErrorKind,
    Outcome,
    PersonInput,
    Plan,
    RejectionInfo,
    RejectionLevel,
    ServiceBenefits,
    build_command,
    cached_answer_usable,
    decode_outcome,
    encode_outcome,
    failed,
    npi_is_valid,
    wait_seconds,
)

NOW = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


def command_fields(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "organization_id": "org-1",
        "patient_id": "pat-1",
        "payer_id": "SIMPAYER",
        "member_id": " sima 00001 ",
        "service_type": "",
        "service_date": "2026-03-02",
        "provider_npi": "",
        "appointment_id": "",
        "plan_id": "",
        "patient": PersonInput(family_name="Smith", given_name="John", birth_date="1980-01-15"),
        "subscriber": None,
        "max_cache_age_s": None,
        "max_wait_s": None,
    }
    return fields | changes


def test_valid_request_becomes_a_normalized_command() -> None:
    command = build_command(**command_fields())  # type: ignore[arg-type]
    assert command.member_id == "sima 00001"
    assert command.service_type == "30"
    assert command.service_date == date(2026, 3, 2)
    assert command.patient is not None
    assert (command.patient.family_name, command.patient.birth_date) == ("SMITH", date(1980, 1, 15))
    assert "sima" not in repr(command)
    assert "SMITH" not in repr(command)


def test_every_bad_field_is_named_at_once() -> None:
    with pytest.raises(InvalidArgument) as raised:
        build_command(
            **command_fields(  # type: ignore[arg-type]
                patient_id=" ",
                member_id="AB*12",
                service_type="ABC",
                service_date="2026-02-30",
                provider_npi="1234567890",
                max_wait_s=-1.0,
                patient=PersonInput(family_name="O~NEIL", birth_date="15/01/1980", sex="X"),
                subscriber=PersonInput(family_name="DOE"),
            )
        )
    fields = sorted(v.field for v in raised.value.violations)
    assert fields == [
        "max_wait",
        "member_id",
        "patient_demographics.birth_date",
        "patient_demographics.name.family_name",
        "patient_demographics.sex",
        "patient_id",
        "provider_npi",
        "service_date",
        "service_type_code",
    ]
    assert "AB*12" not in raised.value.message


def test_npi_check_digit() -> None:
    assert npi_is_valid("1234567893")
    assert not npi_is_valid("1234567890")
    assert not npi_is_valid("123456789")


def test_outcome_survives_encoding_exactly() -> None:
    outcome = Outcome(
        CheckStatus.ACTIVE,
        plan=Plan("GOLD", "G1", "ACME", "PR", date(2026, 1, 1), None),
        benefits=(
            ServiceBenefits(
                "98",
                CoverageState.COVERED,
                copayments=(Amount("IND", "Y", "27", Decimal("25.00"), None, True),),
                coinsurance=(Amount(percent=Decimal(".20")),),
                messages=("CALL FIRST",),
            ),
        ),
        rejections=(RejectionInfo(RejectionLevel.SUBSCRIBER, False, "72", "Invalid", "C"),),
        messages=("HELLO",),
        responded_at=NOW,
        exchange_id="e1",
    )
    decoded = decode_outcome(encode_outcome(outcome))
    assert decoded == outcome
    assert decoded.benefits[0].copayments[0].amount == Decimal("25.00")
    error = failed(ErrorKind.PAYER_TIMEOUT, "slow", retryable=True)
    assert decode_outcome(encode_outcome(error)).error == CheckError(
        ErrorKind.PAYER_TIMEOUT, "slow", True
    )


def test_encoded_outcome_keeps_the_bytes_it_was_read_from() -> None:
    outcome = Outcome(
        CheckStatus.INACTIVE,
        plan=Plan("GOLD", "G1", "ACME", "PR", None, date(2025, 12, 31)),
        responded_at=NOW,
        exchange_id="e2",
    )
    written = EncodedOutcome.of(outcome)
    assert written.data == encode_outcome(outcome)
    read = EncodedOutcome.decode(written.data)
    assert read.outcome == outcome
    assert read.data is written.data
    assert "GOLD" not in repr(read)
    with pytest.raises(ValueError, match="not an encoded outcome"):
        EncodedOutcome.decode(b'{"status": "ACTIVE"}')


def test_undecodable_data_is_a_value_error_without_content() -> None:
    with pytest.raises(ValueError, match=r"not an encoded outcome \(JSONDecodeError\)"):
        decode_outcome(b"SMITH JOHN")


def test_pending_is_never_an_outcome() -> None:
    with pytest.raises(ValueError, match="final"):
        Outcome(CheckStatus.PENDING)


@pytest.mark.parametrize(
    ("max_wait", "deadline_in", "expected"),
    [
        (None, None, 20.0),
        (1.0, None, 1.0),
        (None, 2.0, 1.98),
        (5.0, 2.0, 1.98),
        (0.5, 2.0, 0.5),
        (None, 0.01, 0.0),
    ],
)
def test_wait_is_bounded_by_max_wait_and_the_deadline(
    max_wait: float | None, deadline_in: float | None, expected: float
) -> None:
    wait = wait_seconds(
        max_wait_s=max_wait, deadline_in_s=deadline_in, default_wait_s=20.0, margin_s=0.02
    )
    assert wait == pytest.approx(expected)


def test_cached_answer_is_used_only_when_young_enough_and_final() -> None:
    answer = Outcome(CheckStatus.ACTIVE, responded_at=NOW - timedelta(hours=2))
    day = 86400.0
    assert cached_answer_usable(answer, NOW, None, day)
    assert cached_answer_usable(answer, NOW, 3 * 3600, day)
    assert not cached_answer_usable(answer, NOW, 3600, day)
    assert not cached_answer_usable(answer, NOW, 0, day)
    assert not cached_answer_usable(answer, NOW + timedelta(days=1), None, day)
    error = failed(ErrorKind.PAYER_TIMEOUT, "slow", retryable=True, responded_at=NOW)
    assert not cached_answer_usable(error, NOW, None, day)
