"""Typed readers for X12 elements that raise located, PHI-free `X12ElementError`s."""

from __future__ import annotations

import re
from collections.abc import Collection
from datetime import date, time
from decimal import Decimal, InvalidOperation

from eligibility_svc.x12.errors import X12ElementError, describe_found
from eligibility_svc.x12.tokenizer import Segment

_DATE = re.compile(r"[0-9]{8}")
_TIME = re.compile(r"([0-9]{2})([0-9]{2})(?:([0-9]{2})([0-9]{1,2})?)?")
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
_CONTROL_NUMBER = re.compile(r"[0-9]{1,9}")
# X12 numeric (R) elements carry at most 18 digits; longer strings are not amounts.
_MAX_DIGITS = 18


def fail(segment: Segment, position: int, problem: str) -> X12ElementError:
    """An error located at one element of `segment`."""
    return X12ElementError(
        problem, ordinal=segment.ordinal, segment_id=segment.id, element=segment.ref(position)
    )


def text(segment: Segment, position: int) -> str | None:
    """Free text (names, ids): surrounding spaces dropped, None when absent."""
    value = segment.get(position).strip(" ")
    return value or None


def required_text(segment: Segment, position: int, what: str) -> str:
    value = text(segment, position)
    if value is None:
        raise fail(segment, position, f"expected {what}, found nothing")
    return value


def code(
    segment: Segment,
    position: int,
    what: str,
    allowed: Collection[str] | None = None,
) -> str | None:
    """An optional code; when `allowed` is given the value must be one of them."""
    value = text(segment, position)
    if value is not None and allowed is not None and value not in allowed:
        raise fail(segment, position, f"expected {what}, found {describe_found(value)}")
    return value


def required_code(
    segment: Segment,
    position: int,
    what: str,
    allowed: Collection[str] | None = None,
) -> str:
    value = code(segment, position, what, allowed)
    if value is None:
        raise fail(segment, position, f"expected {what}, found nothing")
    return value


def yes_no(segment: Segment, position: int, what: str) -> bool:
    return required_code(segment, position, what, ("Y", "N")) == "Y"


def ccyymmdd(segment: Segment, position: int, what: str = "a date CCYYMMDD") -> date:
    """A D8 date. The value is never echoed: it may be a birth date."""
    return parse_date(segment, position, segment.get(position).strip(" "), what)


def parse_date(segment: Segment, position: int, value: str, what: str) -> date:
    if _DATE.fullmatch(value):
        try:
            return date(int(value[:4]), int(value[4:6]), int(value[6:]))
        except ValueError:
            pass
    found = "nothing" if not value else "a value that is not a valid date"
    raise fail(segment, position, f"expected {what}, found {found}")


def yymmdd(segment: Segment, position: int) -> date:
    """The ISA09 date; the two-digit year is taken as 20YY (interchanges postdate 2000)."""
    value = segment.get(position).strip(" ")
    return parse_date(segment, position, f"20{value}" if len(value) == 6 else value, "YYMMDD")


def hhmm(segment: Segment, position: int) -> time:
    """A time HHMM, HHMMSS, HHMMSSD or HHMMSSDD (tenths or hundredths of a second)."""
    value = segment.get(position).strip(" ")
    match = _TIME.fullmatch(value)
    if match:
        hour, minute, second, fraction = match.groups()
        micro = 0 if fraction is None else int(fraction.ljust(6, "0"))
        try:
            return time(int(hour), int(minute), int(second or 0), micro)
        except ValueError:
            pass
    found = "nothing" if not value else "a value that is not a valid time"
    raise fail(segment, position, f"expected a time HHMM[SS[D[D]]], found {found}")


def number(segment: Segment, position: int, what: str) -> Decimal | None:
    """An optional X12 decimal (R) element such as EB07 monetary amount."""
    value = segment.get(position).strip(" ")
    if not value:
        return None
    digits = sum(char.isdigit() for char in value)
    if _NUMBER.fullmatch(value) and digits <= _MAX_DIGITS:
        try:
            return Decimal(value)
        except InvalidOperation:
            pass
    raise fail(segment, position, f"expected {what} (a decimal number), found a non-number")


def control_number(segment: Segment, position: int, what: str) -> int:
    """A numeric control number (ISA13, GS06): 1-9 digits."""
    value = segment.get(position).strip(" ")
    if not _CONTROL_NUMBER.fullmatch(value):
        found = describe_found(value) if value else "nothing"
        raise fail(segment, position, f"expected {what} (1-9 digits), found {found}")
    return int(value)
