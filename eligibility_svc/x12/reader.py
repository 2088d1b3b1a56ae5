"""Parse 270 inquiries and 271 responses into the typed model."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, time
from typing import TypeVar

from eligibility_svc.x12 import elements
from eligibility_svc.x12.envelope import RawGroup, RawTransaction, read_envelope
from eligibility_svc.x12.errors import X12EnvelopeError, X12StructureError, describe_found
from eligibility_svc.x12.loops import build_hierarchy, read_inquiry_loops, read_response_loops
from eligibility_svc.x12.model import (
    EligibilityInquiry,
    EligibilityResponse,
    FunctionalGroup,
    Interchange,
)
from eligibility_svc.x12.tokenizer import Segment, TokenizedInterchange, tokenize

T = TypeVar("T")
_FUNCTIONAL_IDS = {"270": "HS", "271": "HB"}


def parse_270(data: bytes | str) -> Interchange[EligibilityInquiry]:
    """Parse an interchange of 270 eligibility inquiries; raises an `X12Error` subclass."""
    return _parse(tokenize(data), "270", _read_inquiry)


def parse_271(data: bytes | str) -> Interchange[EligibilityResponse]:
    """Parse an interchange of 271 eligibility responses; raises an `X12Error` subclass."""
    return _parse(tokenize(data), "271", _read_response)


def parse_x12(
    data: bytes | str,
) -> Interchange[EligibilityInquiry] | Interchange[EligibilityResponse]:
    """Parse a 270 or a 271, whichever the first ST01 names."""
    tokens = tokenize(data)
    if _first_set_id(tokens) == "270":
        return _parse(tokens, "270", _read_inquiry)
    return _parse(tokens, "271", _read_response)


def _first_set_id(tokens: TokenizedInterchange) -> str:
    for segment in tokens.segments:
        if segment.id == "ST":
            set_id = segment.get(1).strip(" ")
            if set_id in _FUNCTIONAL_IDS:
                return set_id
            raise elements.fail(
                segment, 1, f"expected transaction set 270 or 271, found {describe_found(set_id)}"
            )
    # No ST at all: let the envelope walker say precisely what is missing.
    read_envelope(tokens)
    raise X12EnvelopeError("expected a transaction set (ST)")


def _parse(
    tokens: TokenizedInterchange,
    set_id: str,
    read: Callable[[RawTransaction, list[str]], T],
) -> Interchange[T]:
    raw = read_envelope(tokens)
    warnings = list(raw.warnings)
    groups = tuple(_read_group(group, set_id, read, warnings) for group in raw.groups)
    return Interchange(raw.header, groups, tuple(warnings))


def _read_group(
    group: RawGroup,
    set_id: str,
    read: Callable[[RawTransaction, list[str]], T],
    warnings: list[str],
) -> FunctionalGroup[T]:
    expected_id = _FUNCTIONAL_IDS[set_id]
    if group.functional_id != expected_id:
        warnings.append(
            f"segment {group.gs.ordinal} (GS): element GS01 is not {expected_id} "
            f"(the functional group of a {set_id})"
        )
    transactions = []
    for transaction in group.transactions:
        if transaction.set_id != set_id:
            raise elements.fail(
                transaction.st,
                1,
                f"expected transaction set {set_id}, found {describe_found(transaction.set_id)}",
            )
        transactions.append(read(transaction, warnings))
    return FunctionalGroup(
        sender_code=group.sender_code,
        receiver_code=group.receiver_code,
        created_date=group.created_date,
        created_time=group.created_time,
        control_number=group.control_number,
        transactions=tuple(transactions),
    )


def _beginning(transaction: RawTransaction) -> tuple[Segment, str, date, time, str | None]:
    """BHT: the reference id (BHT03), creation date and time, optional transaction type."""
    if not transaction.body or transaction.body[0].id != "BHT":
        first = transaction.body[0] if transaction.body else transaction.se
        raise X12StructureError(
            "expected BHT (beginning of hierarchical transaction) right after ST",
            ordinal=first.ordinal,
            segment_id=first.id,
        )
    bht = transaction.body[0]
    elements.required_code(bht, 1, "the structure code 0022", ("0022",))
    return (
        bht,
        elements.required_text(bht, 3, "a reference identification"),
        elements.ccyymmdd(bht, 4),
        elements.hhmm(bht, 5),
        elements.code(bht, 6, "a transaction type code"),
    )


def _read_inquiry(transaction: RawTransaction, warnings: list[str]) -> EligibilityInquiry:
    _, reference, created_date, created_time, transaction_type = _beginning(transaction)
    loops = read_inquiry_loops(build_hierarchy(transaction.body[1:], transaction.se), warnings)
    return EligibilityInquiry(
        control_number=transaction.control_number,
        reference=reference,
        created_date=created_date,
        created_time=created_time,
        information_source=loops.source,
        information_receiver=loops.receiver,
        subscriber=loops.subscriber,
        service_inquiries=loops.service_inquiries,
        dependent=loops.dependent,
        transaction_type=transaction_type,
    )


def _read_response(transaction: RawTransaction, warnings: list[str]) -> EligibilityResponse:
    _, reference, created_date, created_time, transaction_type = _beginning(transaction)
    sources = read_response_loops(build_hierarchy(transaction.body[1:], transaction.se), warnings)
    return EligibilityResponse(
        control_number=transaction.control_number,
        reference=reference,
        created_date=created_date,
        created_time=created_time,
        sources=sources,
        transaction_type=transaction_type,
    )
