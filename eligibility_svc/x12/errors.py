"""The X12 error tree: every failure of the codec is one of these, located and PHI-free.

    X12Error                    base (a `common.errors.MedschedError`, INVALID_ARGUMENT)
    ├── X12SyntaxError          bytes cannot be split into segments (ISA, delimiters, ids)
    ├── X12EnvelopeError        ISA/GS/ST..SE/GE/IEA nesting or header elements are wrong
    ├── X12StructureError       HL hierarchy or a segment is out of place in its loop
    ├── X12ElementError         an element is missing or holds a value of the wrong kind
    ├── UnsupportedVersion      not 005010X279(A1): e.g. a 4010 (004010X092A1) file
    └── X12BuildError           a model value cannot be written as X12 (builders only)

Messages name the segment by its ordinal (1 = ISA) and id, the element by its reference
(`EB01`) and what was expected. Element *values* appear only when they look like short codes
(`'ZZ'`), never otherwise: a shifted element could put a name, birth date or member id into
a code position, and those must not reach logs through an exception message.
"""

from __future__ import annotations

import re

from common.errors import MedschedError

# Values short enough to be X12 codes (EB01 'ZZ', HL03 '24', DTP01 '291', BHT01 '0022').
# Anything longer is described by its length only, so PHI never lands in a message.
_SHOWABLE_VALUE = re.compile(r"[A-Z0-9]{1,2}|[0-9]{3,4}")
_SHOWABLE_VERSION = re.compile(r"[0-9]{6}X[0-9]{3}[A-Z0-9]{0,2}|[0-9]{5}")


def describe_found(value: str) -> str:
    """How an error message may refer to a found element value without leaking PHI."""
    if value == "":
        return "nothing"
    if _SHOWABLE_VALUE.fullmatch(value):
        return f"'{value}'"
    return f"a value of {len(value)} characters"


def describe_version(value: str) -> str:
    """Like `describe_found`, but version identifiers (`004010X092A1`) are shown in full."""
    if _SHOWABLE_VERSION.fullmatch(value):
        return f"'{value}'"
    return describe_found(value)


class X12Error(MedschedError):
    """A located X12 problem: segment ordinal and id, element reference, and what is wrong.

    `problem` reads as a phrase ("expected an eligibility code, found 'ZZ'"); the message
    prefixes it with the location: "segment 14 (EB): element EB01: expected ...".
    """

    grpc_code_name = "INVALID_ARGUMENT"

    def __init__(
        self,
        problem: str,
        *,
        ordinal: int | None = None,
        segment_id: str | None = None,
        element: str | None = None,
    ) -> None:
        self.problem = problem
        self.ordinal = ordinal
        self.segment_id = segment_id
        self.element = element
        super().__init__(_locate(problem, ordinal, segment_id, element))


def _locate(problem: str, ordinal: int | None, segment_id: str | None, element: str | None) -> str:
    parts: list[str] = []
    if ordinal is not None:
        parts.append(f"segment {ordinal}" + (f" ({segment_id})" if segment_id else ""))
    if element is not None:
        parts.append(f"element {element}")
    parts.append(problem)
    return ": ".join(parts)


class X12SyntaxError(X12Error):
    """The data cannot be split into segments: no ISA, unusable delimiters, bad segment ids."""


class X12EnvelopeError(X12Error):
    """The ISA/GS/ST..SE/GE/IEA envelope is incomplete, misnested or has a wrong header."""


class X12StructureError(X12Error):
    """A segment is out of place in its loop, or the HL hierarchy is inconsistent."""


class X12ElementError(X12Error):
    """An element is missing or its value is not of the expected kind (code, date, number)."""


class UnsupportedVersion(X12Error):
    """The interchange is not 005010X279(A1); `is_4010` tells a legacy 004010X092 file apart."""

    def __init__(
        self,
        message: str,
        *,
        version: str,
        is_4010: bool,
        ordinal: int | None = None,
        segment_id: str | None = None,
        element: str | None = None,
    ) -> None:
        self.version = version
        self.is_4010 = is_4010
        super().__init__(message, ordinal=ordinal, segment_id=segment_id, element=element)


class X12BuildError(X12Error):
    """A model value cannot be written as X12; the message names the model field, not values."""

    def __init__(self, field_path: str, problem: str) -> None:
        super().__init__(f"{field_path}: {problem}")
        # Set after the base constructor, which stores the whole message as `problem`.
        self.field_path = field_path
        self.problem = problem
