"""Tolerant X12 tokenizer: delimiters from the ISA segment, then numbered segments."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from eligibility_svc.x12.errors import X12SyntaxError, describe_found

# The ISA has 16 elements; its element separator is the fourth character, the component
# separator is ISA16 itself and the segment terminator is the character right after it.
ISA_ELEMENT_COUNT = 16
ISA_FIXED_LENGTH = 106
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{1,2}")
# Indentation, CR/LF after terminators and trailing spaces surround segments in the wild.
# (Not str.isspace(): it also matches \x1c-\x1f, which real interchanges use as delimiters.)
_PADDING = " \t\r\n\x0b\x0c"
_CONTROL_CHAR = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Delimiters:
    """The four X12 delimiters; `repetition` is None when ISA11 holds no separator (4010)."""

    element: str = "*"
    repetition: str | None = "^"
    component: str = ":"
    segment: str = "~"

    def problems(self) -> list[str]:
        """What makes these delimiters unusable for writing (empty when they are fine)."""
        found: list[str] = []
        chars = {
            "element": self.element,
            "component": self.component,
            "segment": self.segment,
        }
        if self.repetition is not None:
            chars["repetition"] = self.repetition
        for name, char in chars.items():
            if len(char) != 1:
                found.append(f"{name} separator must be one character")
            elif char.isalnum() or char == " " or (char in _PADDING and name != "segment"):
                found.append(f"{name} separator must not be a letter, digit or space")
        if len(set(chars.values())) != len(chars):
            found.append("the four separators must all differ")
        return found


@dataclass(frozen=True)
class Segment:
    """One segment: its 1-based position from ISA, its id and its raw element strings."""

    ordinal: int
    id: str
    elements: tuple[str, ...]
    delimiters: Delimiters

    def get(self, position: int) -> str:
        """Element `position` (1-based, as in `EB01`); empty when absent."""
        if 1 <= position <= len(self.elements):
            return self.elements[position - 1]
        return ""

    def repeats(self, position: int) -> tuple[str, ...]:
        """The repetitions of a repeatable element (EB03, EQ01), empty ones dropped."""
        raw = self.get(position)
        separator = self.delimiters.repetition
        values = raw.split(separator) if separator else [raw]
        return tuple(value for value in values if value)

    def components(self, position: int) -> tuple[str, ...]:
        """The components of a composite element (EB13), trailing empty ones dropped."""
        parts = self.get(position).split(self.delimiters.component)
        while parts and not parts[-1]:
            parts.pop()
        return tuple(parts)

    def ref(self, position: int) -> str:
        """The element reference used in messages, e.g. `EB01`."""
        return f"{self.id}{position:02d}"


@dataclass(frozen=True)
class TokenizedInterchange:
    """The segments of one interchange (ISA first) and what the tokenizer had to tolerate."""

    delimiters: Delimiters
    segments: tuple[Segment, ...]
    warnings: tuple[str, ...]


def tokenize(data: bytes | str) -> TokenizedInterchange:
    """Split raw X12 into numbered segments, reading the delimiters from the ISA segment."""
    warnings: list[str] = []
    text = _decode(data, warnings).lstrip(_PADDING)
    if not text.startswith("ISA"):
        raise X12SyntaxError(
            "expected the interchange header ISA at the start of the data", ordinal=1
        )
    delimiters, isa_elements, body_start = _read_isa(text)
    if body_start != ISA_FIXED_LENGTH:
        warnings.append(
            f"segment 1 (ISA): is {body_start} characters long, not the fixed "
            f"{ISA_FIXED_LENGTH} (fields not padded to their fixed widths)"
        )
    isa = Segment(1, "ISA", isa_elements, delimiters)
    segments = [isa, *_split_body(text[body_start:], delimiters)]
    return TokenizedInterchange(delimiters, tuple(segments), tuple(warnings))


def _decode(data: bytes | str, warnings: list[str]) -> str:
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    for bom, encoding in ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(encoding)
            except UnicodeDecodeError as e:
                raise X12SyntaxError(
                    f"expected {encoding.upper()} text after its byte-order mark; "
                    f"byte {e.start} is not valid"
                ) from e
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        # Delimiters and codes are ASCII, so Latin-1 (which maps every byte) keeps the
        # structure intact; only non-ASCII letters in names might be rendered differently.
        warnings.append(f"byte {e.start} is not valid UTF-8; the data was decoded as Latin-1")
        return data.decode("latin-1")


def _read_isa(text: str) -> tuple[Delimiters, tuple[str, ...], int]:
    """Delimiters, the 16 ISA elements and where the next segment starts."""
    if len(text) < 4:
        raise X12SyntaxError(
            "expected the element separator after 'ISA', found end of data",
            ordinal=1,
            segment_id="ISA",
        )
    element = text[3]
    if element.isalnum() or element in _PADDING:
        raise X12SyntaxError(
            "expected an element separator (not a letter, digit or space) after 'ISA'",
            ordinal=1,
            segment_id="ISA",
        )
    # Locate the separator in front of ISA16 by counting rather than by fixed offsets, so
    # an ISA whose fields were not padded to their fixed widths is still readable.
    position = 3
    for count in range(1, ISA_ELEMENT_COUNT):
        position = text.find(element, position + 1)
        if position < 0:
            raise X12SyntaxError(
                f"expected {ISA_ELEMENT_COUNT} elements, found {count}",
                ordinal=1,
                segment_id="ISA",
            )
    if position + 2 >= len(text):
        raise X12SyntaxError(
            "expected the component separator ISA16 and a segment terminator, found end of data",
            ordinal=1,
            segment_id="ISA",
        )
    component, terminator = text[position + 1], text[position + 2]
    if terminator in text[:position]:
        # The 16th separator was found beyond the first terminator: the ISA is short.
        raise X12SyntaxError(
            f"expected {ISA_ELEMENT_COUNT} elements before the segment terminator",
            ordinal=1,
            segment_id="ISA",
        )
    elements = (*text[4:position].split(element), component)
    delimiters = Delimiters(
        element=element,
        repetition=_repetition_separator(elements[10], element, terminator),
        component=component,
        segment=terminator,
    )
    _check_read_delimiters(delimiters)
    return delimiters, elements, position + 3


def _repetition_separator(isa11: str, element: str, terminator: str) -> str | None:
    """ISA11 is the repetition separator in 5010; in 4010 it was a standards id such as 'U'."""
    if len(isa11) != 1 or isa11.isalnum() or isa11 in _PADDING or isa11 in (element, terminator):
        return None
    return isa11


def _check_read_delimiters(delimiters: Delimiters) -> None:
    component, terminator = delimiters.component, delimiters.segment
    if component.isalnum() or component in _PADDING:
        raise X12SyntaxError(
            "expected a component separator (not a letter, digit or space)",
            ordinal=1,
            segment_id="ISA",
            element="ISA16",
        )
    if terminator.isalnum() or terminator == " ":
        raise X12SyntaxError(
            "expected a segment terminator (not a letter, digit or space) right after ISA16",
            ordinal=1,
            segment_id="ISA",
        )
    if len({delimiters.element, component, terminator}) != 3:
        raise X12SyntaxError(
            "expected element separator, component separator (ISA16) and segment terminator "
            "to be three different characters",
            ordinal=1,
            segment_id="ISA",
        )


def _split_body(body: str, delimiters: Delimiters) -> list[Segment]:
    """The segments after ISA; ordinals continue from ISA = 1."""
    segments: list[Segment] = []
    for raw in body.split(delimiters.segment):
        piece = raw.strip(_PADDING)
        if not piece:
            continue
        ordinal = len(segments) + 2
        segments.append(_make_segment(piece, ordinal, delimiters))
    return segments


def _make_segment(piece: str, ordinal: int, delimiters: Delimiters) -> Segment:
    segment_id, *elements = piece.split(delimiters.element)
    if not _SEGMENT_ID.fullmatch(segment_id):
        raise X12SyntaxError(
            f"expected a segment identifier (2-3 capital letters or digits), "
            f"found {describe_found(segment_id)}",
            ordinal=ordinal,
        )
    allowed = {delimiters.element, delimiters.component, delimiters.repetition}
    if any(match.group() not in allowed for match in _CONTROL_CHAR.finditer(piece)):
        raise X12SyntaxError(
            "found a line break or control character inside the segment; "
            "a segment terminator is probably missing",
            ordinal=ordinal,
            segment_id=segment_id,
        )
    return Segment(ordinal, segment_id, tuple(elements), delimiters)
