"""Envelope walker: ISA/GS/ST..SE/GE/IEA nesting, header values and version detection.

Trailer disagreements (SE01 counts, control numbers repeated in SE/GE/IEA) are reported as
warnings, not errors: real payers and the shared samples get them wrong while the content
is intact, and rejecting such a 271 would turn a valid answer into an outage.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, time

from eligibility_svc.x12 import codes, elements
from eligibility_svc.x12.errors import (
    UnsupportedVersion,
    X12EnvelopeError,
    describe_version,
)
from eligibility_svc.x12.model import InterchangeHeader
from eligibility_svc.x12.tokenizer import Segment, TokenizedInterchange

_ISA12_4010 = "00401"
_COUNT = re.compile(r"[0-9]{1,6}")
_CONTROL = re.compile(r"[0-9]{1,9}")


@dataclass(frozen=True)
class RawTransaction:
    """One ST..SE transaction set, still as segments."""

    set_id: str
    control_number: str
    version: str
    st: Segment
    body: tuple[Segment, ...]
    se: Segment


@dataclass(frozen=True)
class RawGroup:
    """One GS..GE functional group with its header values and raw transaction sets."""

    gs: Segment
    functional_id: str
    sender_code: str
    receiver_code: str
    created_date: date
    created_time: time
    control_number: int
    transactions: tuple[RawTransaction, ...]


@dataclass(frozen=True)
class RawInterchange:
    """The checked envelope of one interchange and the warnings collected so far."""

    header: InterchangeHeader
    groups: tuple[RawGroup, ...]
    warnings: tuple[str, ...]


class _Cursor:
    """Reads segments in order and reports end of data with the last segment's position."""

    def __init__(self, segments: tuple[Segment, ...]) -> None:
        self._segments = segments
        self._index = 1

    def take(self, expected: str) -> Segment:
        if self._index >= len(self._segments):
            last = self._segments[-1]
            raise X12EnvelopeError(
                f"expected {expected} after segment {last.ordinal} ({last.id}), found end of data"
            )
        segment = self._segments[self._index]
        self._index += 1
        return segment

    def remaining(self) -> tuple[Segment, ...]:
        return self._segments[self._index :]


def read_envelope(tokens: TokenizedInterchange) -> RawInterchange:
    """Check the envelope nesting and versions; split out the transaction sets."""
    isa = tokens.segments[0]
    header = _interchange_header(isa)
    warnings = list(tokens.warnings)
    cursor = _Cursor(tokens.segments)
    groups: list[RawGroup] = []
    while True:
        segment = cursor.take("GS (functional group header) or IEA (interchange trailer)")
        if segment.id == "IEA":
            iea = segment
            break
        if segment.id != "GS":
            raise X12EnvelopeError(
                "expected GS (functional group header) or IEA (interchange trailer)",
                ordinal=segment.ordinal,
                segment_id=segment.id,
            )
        groups.append(_read_group(segment, cursor, isa, warnings))
    extra = cursor.remaining()
    if extra:
        raise X12EnvelopeError(
            "expected nothing after the interchange trailer IEA",
            ordinal=extra[0].ordinal,
            segment_id=extra[0].id,
        )
    if not groups:
        raise X12EnvelopeError(
            "expected at least one functional group (GS) before IEA",
            ordinal=iea.ordinal,
            segment_id="IEA",
        )
    _check_count(iea, 1, len(groups), "functional groups", warnings)
    _check_control(iea, 2, isa.get(13).strip(" "), "ISA13", warnings)
    return RawInterchange(header, tuple(groups), tuple(warnings))


def _interchange_header(isa: Segment) -> InterchangeHeader:
    return InterchangeHeader(
        authorization_qualifier=_isa_field(isa, 1, "an authorization qualifier"),
        authorization=isa.get(2).rstrip(" "),
        security_qualifier=_isa_field(isa, 3, "a security qualifier"),
        security=isa.get(4).rstrip(" "),
        sender_qualifier=_isa_field(isa, 5, "a sender id qualifier"),
        sender_id=_isa_field(isa, 6, "the interchange sender id"),
        receiver_qualifier=_isa_field(isa, 7, "a receiver id qualifier"),
        receiver_id=_isa_field(isa, 8, "the interchange receiver id"),
        created_date=elements.yymmdd(isa, 9),
        created_time=elements.hhmm(isa, 10),
        control_number=elements.control_number(isa, 13, "the interchange control number"),
        acknowledgment_requested=elements.required_code(
            isa, 14, "acknowledgment requested 0 or 1", ("0", "1")
        )
        == "1",
        usage=elements.required_code(isa, 15, "usage indicator P or T", ("P", "T")),
    )


def _isa_field(isa: Segment, position: int, what: str) -> str:
    value = isa.get(position).strip(" ")
    if not value:
        raise elements.fail(isa, position, f"expected {what}, found nothing")
    return value


def _read_group(gs: Segment, cursor: _Cursor, isa: Segment, warnings: list[str]) -> RawGroup:
    group_version = gs.get(8).strip(" ")
    if group_version:
        check_version(group_version, gs, 8)
    transactions: list[RawTransaction] = []
    while True:
        segment = cursor.take("ST (transaction set header) or GE (group trailer)")
        if segment.id == "GE":
            ge = segment
            break
        if segment.id != "ST":
            raise X12EnvelopeError(
                "expected ST (transaction set header) or GE (group trailer)",
                ordinal=segment.ordinal,
                segment_id=segment.id,
            )
        transactions.append(_read_transaction(segment, cursor, group_version, isa, warnings))
    if not transactions:
        raise X12EnvelopeError(
            "expected at least one transaction set (ST) in the functional group",
            ordinal=ge.ordinal,
            segment_id="GE",
        )
    _check_count(ge, 1, len(transactions), "transaction sets", warnings)
    _check_control(ge, 2, gs.get(6).strip(" "), "GS06", warnings)
    return RawGroup(
        gs=gs,
        functional_id=elements.required_code(gs, 1, "a functional identifier code"),
        sender_code=elements.required_text(gs, 2, "the application sender code"),
        receiver_code=elements.required_text(gs, 3, "the application receiver code"),
        created_date=elements.ccyymmdd(gs, 4),
        created_time=elements.hhmm(gs, 5),
        control_number=elements.control_number(gs, 6, "the group control number"),
        transactions=tuple(transactions),
    )


def _read_transaction(
    st: Segment, cursor: _Cursor, group_version: str, isa: Segment, warnings: list[str]
) -> RawTransaction:
    st03 = st.get(3).strip(" ")
    if st03:
        check_version(st03, st, 3)
    version = st03 or group_version
    if not version:
        if isa.get(12).strip(" ") == _ISA12_4010:
            raise _unsupported_4010(_ISA12_4010, isa, 12)
        raise elements.fail(
            st, 3, f"expected the version {codes.VERSION_5010} in ST03 or GS08, found nothing"
        )
    set_id = elements.required_code(st, 1, "a transaction set identifier")
    control = elements.required_text(st, 2, "the transaction set control number")
    body: list[Segment] = []
    while True:
        segment = cursor.take(f"SE closing the transaction set started at segment {st.ordinal}")
        if segment.id == "SE":
            se = segment
            break
        if segment.id in ("ST", "GE", "GS", "IEA", "ISA"):
            raise X12EnvelopeError(
                f"expected SE closing the transaction set started at segment {st.ordinal}",
                ordinal=segment.ordinal,
                segment_id=segment.id,
            )
        body.append(segment)
    _check_count(se, 1, len(body) + 2, "segments", warnings)
    _check_control(se, 2, control, "ST02", warnings)
    return RawTransaction(set_id, control, version, st, tuple(body), se)


def check_version(version: str, segment: Segment, position: int) -> None:
    """Accept 005010X279(A1); name a 4010 file as such; reject anything else clearly."""
    if version in codes.ACCEPTED_5010_VERSIONS:
        return
    if version.startswith(codes.VERSION_4010_PREFIX):
        raise _unsupported_4010(version, segment, position)
    raise UnsupportedVersion(
        f"expected the 270/271 version {codes.VERSION_5010} (or 005010X279), "
        f"found {describe_version(version)}",
        version=version,
        is_4010=False,
        ordinal=segment.ordinal,
        segment_id=segment.id,
        element=segment.ref(position),
    )


def _unsupported_4010(version: str, segment: Segment, position: int) -> UnsupportedVersion:
    return UnsupportedVersion(
        f"this is an X12 4010 file ({describe_version(version)}); only HIPAA 5010 "
        f"{codes.VERSION_5010} 270/271 is supported",
        version=version,
        is_4010=True,
        ordinal=segment.ordinal,
        segment_id=segment.id,
        element=segment.ref(position),
    )


def _check_count(
    trailer: Segment, position: int, actual: int, what: str, warnings: list[str]
) -> None:
    stated = trailer.get(position).strip(" ")
    if _COUNT.fullmatch(stated) and int(stated) == actual:
        return
    said = f"says {int(stated)}" if _COUNT.fullmatch(stated) else "is not a count"
    warnings.append(
        f"segment {trailer.ordinal} ({trailer.id}): element {trailer.ref(position)} {said}; "
        f"there are {actual} {what}"
    )


def _check_control(
    trailer: Segment, position: int, header_value: str, header_ref: str, warnings: list[str]
) -> None:
    stated = trailer.get(position).strip(" ")
    same = stated == header_value or (
        _CONTROL.fullmatch(stated) is not None
        and _CONTROL.fullmatch(header_value) is not None
        and int(stated) == int(header_value)
    )
    if not same:
        warnings.append(
            f"segment {trailer.ordinal} ({trailer.id}): element {trailer.ref(position)} does "
            f"not match the control number in {header_ref}"
        )
