"""Round trips: whatever the builders accept, the parsers read back unchanged."""

from __future__ import annotations

from datetime import datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eligibility_svc.x12 import (
    Delimiters,
    EligibilityInquiry,
    EligibilityResponse,
    Interchange,
    build_270,
    build_271,
    interchange_for,
    parse_270,
    parse_271,
)
from tests.unit.x12.strategies import DELIMITER_SETS, inquiries, interchanges, responses

ROUND_TRIP = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@ROUND_TRIP
@given(interchanges(inquiries), st.sampled_from(DELIMITER_SETS), st.booleans())
def test_parse_270_of_build_270_is_identity(
    interchange: Interchange[EligibilityInquiry], delimiters: Delimiters, line_breaks: bool
) -> None:
    assert parse_270(build_270(interchange, delimiters, line_breaks=line_breaks)) == interchange


@ROUND_TRIP
@given(interchanges(responses, max_transactions=1), st.sampled_from(DELIMITER_SETS), st.booleans())
def test_parse_271_of_build_271_is_identity(
    interchange: Interchange[EligibilityResponse], delimiters: Delimiters, line_breaks: bool
) -> None:
    assert parse_271(build_271(interchange, delimiters, line_breaks=line_breaks)) == interchange


@ROUND_TRIP
@given(inquiries)
def test_single_inquiry_survives_the_default_envelope(inquiry: EligibilityInquiry) -> None:
    interchange = interchange_for(
        [inquiry],
        sender_id="CLINIC",
        receiver_id="PAYER",
        control_number=17,
        created=datetime(2026, 3, 1, 9, 30, 45, 123456),
    )

    parsed = parse_270(build_270(interchange))

    assert parsed.transactions == (inquiry,)
    assert parsed.warnings == ()
