"""Unit tests for JSON logging and its PHI guard (common.log)."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg.errors
import pytest
from opentelemetry.sdk.trace import TracerProvider

from common.log import REDACTED, configure_logging, format_exception, sanitize_extra

MEMBER_ID = "XJH123456789"
PSYCOPG_MESSAGE = (
    'duplicate key value violates unique constraint "patients_member_id_key"\n'
    f"DETAIL:  Key (member_id)=({MEMBER_ID}) already exists."
)


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    """JSON logging into a buffer; the root logger is restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buffer = io.StringIO()
    handler = configure_logging("booking", level="DEBUG", stream=buffer)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def only_line(buffer: io.StringIO) -> dict[str, Any]:
    [line] = lines(buffer)
    return line


def duplicate_member_error() -> psycopg.errors.UniqueViolation:
    return psycopg.errors.UniqueViolation(PSYCOPG_MESSAGE)


def test_record_is_one_json_object_with_the_documented_fields(output: io.StringIO) -> None:
    appointment_id = uuid.UUID("6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b")

    logging.getLogger("booking_svc.service").info(
        "appointment booked", extra={"appointment_id": appointment_id, "duration_ms": 41}
    )

    assert output.getvalue().count("\n") == 1
    line = only_line(output)
    assert set(line) == {"ts", "level", "logger", "msg", "service", "extra"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])
    assert line["level"] == "INFO"
    assert line["logger"] == "booking_svc.service"
    assert line["msg"] == "appointment booked"
    assert line["service"] == "booking"
    assert line["extra"] == {"appointment_id": str(appointment_id), "duration_ms": 41}


def test_message_arguments_are_interpolated(output: io.StringIO) -> None:
    logging.getLogger("t").warning("relay behind by %d rows", 12)

    assert only_line(output)["msg"] == "relay behind by 12 rows"


def test_level_threshold_filters_records() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    buffer = io.StringIO()
    handler = configure_logging("booking", level="warning", stream=buffer)
    try:
        logging.getLogger("t").info("not shown")
        logging.getLogger("t").error("shown")
    finally:
        root.removeHandler(handler)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)

    assert [line["msg"] for line in lines(buffer)] == ["shown"]


def test_configuring_twice_replaces_the_handler(output: io.StringIO) -> None:
    second = io.StringIO()
    handler = configure_logging("booking", stream=second)

    logging.getLogger("t").info("once")

    assert output.getvalue() == ""
    assert [line["msg"] for line in lines(second)] == ["once"]
    assert sum(h is handler for h in logging.getLogger().handlers) == 1


def test_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log level 'LOUD' is not one of"):
        configure_logging("booking", level="LOUD", stream=io.StringIO())


def test_trace_and_span_ids_appear_inside_a_span(output: io.StringIO) -> None:
    tracer = TracerProvider().get_tracer("test")

    with tracer.start_as_current_span("book") as span:
        logging.getLogger("t").info("inside")
        context = span.get_span_context()
    logging.getLogger("t").info("outside")

    inside, outside = lines(output)
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert len(inside["trace_id"]) == 32
    assert "trace_id" not in outside
    assert "span_id" not in outside


def test_unknown_extra_fields_are_redacted(output: io.StringIO) -> None:
    logging.getLogger("t").info(
        "patient updated",
        extra={
            "patient_id": "pat-17",
            "family_name": "Okafor",
            "reason": "chest pain",
            "member_id": MEMBER_ID,
            "contact": {"email": "a@example.org"},
            "status": "BOOKED",
        },
    )

    line = only_line(output)
    assert line["extra"] == {
        "patient_id": "pat-17",
        "family_name": REDACTED,
        "reason": REDACTED,
        "member_id": REDACTED,
        "contact": REDACTED,
        "status": "BOOKED",
    }
    text = output.getvalue()
    for phi in ("Okafor", "chest pain", MEMBER_ID, "a@example.org"):
        assert phi not in text


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("slot_ids", ["s1", "s2"], ["s1", "s2"]),
        ("slot_ids", [{"x": 1}], REDACTED),
        ("lag_seconds", 2.5, 2.5),
        ("lag_seconds", "2.5 behind for Ana", REDACTED),
        ("retry_count", True, REDACTED),
        ("method", "/medsched.booking.v1.Booking/Book", "/medsched.booking.v1.Booking/Book"),
        ("method", ["x"], REDACTED),
        ("subscriber_id", "S-991", REDACTED),
        ("date_of_birth", "1980-01-02", REDACTED),
        ("phone_number_id", "p-1", REDACTED),
    ],
)
def test_extra_values_are_checked_by_name_and_type(name: str, value: object, expected: Any) -> None:
    assert sanitize_extra(name, value) == expected


def test_psycopg_error_detail_never_reaches_the_output(output: io.StringIO) -> None:
    try:
        raise duplicate_member_error()
    except psycopg.errors.UniqueViolation:
        logging.getLogger("booking_svc.store").exception("insert failed")

    line = only_line(output)
    assert MEMBER_ID not in output.getvalue()
    assert "DETAIL" not in output.getvalue()
    assert line["exc_type"] == "psycopg.errors.UniqueViolation"
    assert line["exc"].startswith("Traceback (most recent call last):\n")
    assert "test_psycopg_error_detail_never_reaches_the_output" in line["exc"]
    assert line["exc"].endswith("psycopg.errors.UniqueViolation (SQLSTATE 23505)")


def test_psycopg_error_chained_under_a_domain_error_is_reduced(output: io.StringIO) -> None:
    try:
        try:
            raise duplicate_member_error()
        except psycopg.errors.UniqueViolation as e:
            raise RuntimeError("could not register patient pat-17") from e
    except RuntimeError:
        logging.getLogger("t").exception("register failed")

    exc = only_line(output)["exc"]
    assert MEMBER_ID not in output.getvalue()
    assert "psycopg.errors.UniqueViolation (SQLSTATE 23505)\n" in exc
    assert "The above exception was the direct cause of the following exception:" in exc
    assert exc.endswith("RuntimeError: could not register patient pat-17")


def test_psycopg_error_in_the_implicit_context_is_reduced(output: io.StringIO) -> None:
    try:
        try:
            raise duplicate_member_error()
        except psycopg.errors.UniqueViolation:
            raise LookupError("no patient pat-17")  # noqa: B904 (the implicit chain is the point)
    except LookupError:
        logging.getLogger("t").exception("failed")

    exc = only_line(output)["exc"]
    assert MEMBER_ID not in exc
    assert "psycopg.errors.UniqueViolation (SQLSTATE 23505)\n" in exc
    assert "During handling of the above exception, another exception occurred:" in exc
    assert exc.endswith("LookupError: no patient pat-17")


def test_suppressed_context_is_left_out(output: io.StringIO) -> None:
    try:
        try:
            raise duplicate_member_error()
        except psycopg.errors.UniqueViolation:
            raise LookupError("no patient pat-17") from None
    except LookupError:
        logging.getLogger("t").exception("failed")

    exc = only_line(output)["exc"]
    assert "UniqueViolation" not in exc
    assert exc.endswith("LookupError: no patient pat-17")


def test_psycopg_error_inside_an_exception_group_is_reduced(output: io.StringIO) -> None:
    try:
        raise ExceptionGroup("tasks failed", [duplicate_member_error(), KeyError("slot-3")])
    except ExceptionGroup:
        logging.getLogger("t").exception("task group failed")

    exc = only_line(output)["exc"]
    assert MEMBER_ID not in exc
    assert "| psycopg.errors.UniqueViolation (SQLSTATE 23505)" in exc
    assert "| KeyError: 'slot-3'" in exc


def test_psycopg_error_passed_as_message_argument_is_reduced(output: io.StringIO) -> None:
    logging.getLogger("t").error("insert failed: %s", duplicate_member_error())

    assert only_line(output)["msg"] == (
        "insert failed: psycopg.errors.UniqueViolation (SQLSTATE 23505)"
    )


def test_other_exception_messages_are_kept() -> None:
    try:
        raise TimeoutError("eligibility call exceeded 1.5 s")
    except TimeoutError as e:
        text = format_exception(e)

    assert text.endswith("TimeoutError: eligibility call exceeded 1.5 s")


def test_formatting_failure_does_not_print_the_arguments(
    output: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    # pytest's own capture handler re-raises formatting errors, so this logger does not
    # propagate to the root and only our handler sees the record.
    buffer = io.StringIO()
    handler = configure_logging("booking", stream=buffer)
    logging.getLogger().removeHandler(handler)
    isolated = logging.getLogger("tests.unit.common.test_log.isolated")
    isolated.propagate = False
    isolated.addHandler(handler)
    try:
        isolated.info("two values %s %s", "Okafor")
    finally:
        isolated.removeHandler(handler)
        isolated.propagate = True

    line = only_line(buffer)
    assert line["msg"] == "log record could not be formatted"
    assert re.search(r"test_log\.py:\d+$", line["source"])
    assert "Okafor" not in buffer.getvalue()
    assert "Okafor" not in capsys.readouterr().err
