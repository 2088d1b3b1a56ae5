"""Path templates of `google.api.http` rules: parsing, matching URL paths, and ordering.

Grammar (from `google/api/http.proto`)::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

`*` matches exactly one non-empty path segment, `**` zero or more (only as the last segment).
`{field}` is short for `{field=*}`. A variable over one segment receives the fully
percent-decoded segment; a variable over several keeps `%2F` encoded so the slashes that
separate segments stay distinguishable from slashes inside them, as the specification asks.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import unquote

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Literals are URL path characters other than the template's own syntax.
_LITERAL = re.compile(r"[A-Za-z0-9\-._~!$&'()+,;=@%]+")
_ENCODED_SLASH = re.compile(r"%2[Ff]")


class TemplateError(ValueError):
    """A path template does not follow the `google.api.http` grammar; names the position."""


class SegmentKind(enum.IntEnum):
    """What one template segment matches; the order is the specificity (literal first)."""

    LITERAL = 0
    SINGLE = 1
    MULTI = 2


@dataclass(frozen=True)
class Segment:
    kind: SegmentKind
    literal: str = ""


@dataclass(frozen=True)
class Variable:
    """A field path bound to the template segments `[start, end)`."""

    field_path: str
    start: int
    end: int
    # The segments as written after `=` (or `*`), kept for documentation and OpenAPI.
    pattern: str

    @property
    def is_single_segment(self) -> bool:
        return self.end - self.start == 1 and self.pattern == "*"


@dataclass(frozen=True)
class PathTemplate:
    """A compiled template; `match` returns the bound variables or None."""

    source: str
    segments: tuple[Segment, ...]
    variables: tuple[Variable, ...]
    verb: str

    @property
    def specificity(self) -> tuple[tuple[int, ...], int, int]:
        """Sort key: smaller is more specific (literals before wildcards, left to right)."""
        kinds = tuple(int(segment.kind) for segment in self.segments)
        return kinds, 0 if self.verb else 1, -len(self.segments)

    @property
    def field_paths(self) -> frozenset[str]:
        return frozenset(variable.field_path for variable in self.variables)

    def match(self, raw_path: str) -> dict[str, str] | None:
        """Variables bound by `raw_path` (still percent-encoded, without query), or None."""
        if not raw_path.startswith("/"):
            return None
        path = raw_path[1:]
        if self.verb:
            suffix = ":" + self.verb
            if not path.endswith(suffix):
                return None
            path = path[: -len(suffix)]
        parts = path.split("/")
        if not self._segments_match(parts):
            return None
        return {variable.field_path: self._value(variable, parts) for variable in self.variables}

    def _segments_match(self, parts: list[str]) -> bool:
        has_multi = bool(self.segments) and self.segments[-1].kind is SegmentKind.MULTI
        fixed = len(self.segments) - 1 if has_multi else len(self.segments)
        if len(parts) < fixed or (not has_multi and len(parts) != fixed):
            return False
        for segment, part in zip(self.segments[:fixed], parts, strict=False):
            if not part:
                return False
            if segment.kind is SegmentKind.LITERAL and unquote(part) != segment.literal:
                return False
        # `**` takes the rest; it may be empty, but not contain empty segments ("a//b").
        return all(parts[fixed:]) or parts[fixed:] == [""]

    def _value(self, variable: Variable, parts: list[str]) -> str:
        if variable.is_single_segment:
            return unquote(parts[variable.start])
        end = len(parts) if self._reaches_multi(variable) else variable.end
        taken = [part for part in parts[variable.start : end] if part]
        # Multi-segment values keep encoded slashes encoded (see module docstring).
        return "/".join(_decode_keeping_slashes(part) for part in taken)

    def _reaches_multi(self, variable: Variable) -> bool:
        return variable.end == len(self.segments) and self.segments[-1].kind is SegmentKind.MULTI


def _decode_keeping_slashes(part: str) -> str:
    pieces = _ENCODED_SLASH.split(part)
    return "%2F".join(unquote(piece) for piece in pieces)


def parse_template(source: str) -> PathTemplate:
    """Compile `source`; raise `TemplateError` naming the offending position."""
    return _Parser(source).parse()


class _Parser:
    """A small recursive-descent parser over the template text."""

    def __init__(self, source: str) -> None:
        self._text = source
        self._pos = 0
        self._segments: list[Segment] = []
        self._variables: list[Variable] = []

    def parse(self) -> PathTemplate:
        self._expect("/")
        self._parse_segments(in_variable=False)
        verb = ""
        if self._peek(":"):
            self._pos += 1
            verb = self._literal()
        if self._pos != len(self._text):
            self._fail("unexpected character")
        self._check_multi_is_last()
        return PathTemplate(
            source=self._text,
            segments=tuple(self._segments),
            variables=tuple(self._variables),
            verb=verb,
        )

    def _parse_segments(self, *, in_variable: bool) -> None:
        while True:
            self._parse_segment(in_variable=in_variable)
            if not self._peek("/"):
                return
            self._pos += 1

    def _parse_segment(self, *, in_variable: bool) -> None:
        if self._text.startswith("**", self._pos):
            self._pos += 2
            self._segments.append(Segment(SegmentKind.MULTI))
        elif self._peek("*"):
            self._pos += 1
            self._segments.append(Segment(SegmentKind.SINGLE))
        elif self._peek("{"):
            if in_variable:
                self._fail("variables cannot be nested")
            self._parse_variable()
        else:
            self._segments.append(Segment(SegmentKind.LITERAL, unquote(self._literal())))

    def _parse_variable(self) -> None:
        self._pos += 1
        field_path = self._field_path()
        if field_path in {variable.field_path for variable in self._variables}:
            self._fail(f"field {field_path!r} is bound twice")
        start = len(self._segments)
        pattern_start = self._pos
        if self._peek("="):
            self._pos += 1
            pattern_start = self._pos
            self._parse_segments(in_variable=True)
            pattern = self._text[pattern_start : self._pos]
        else:
            self._segments.append(Segment(SegmentKind.SINGLE))
            pattern = "*"
        self._expect("}")
        self._variables.append(Variable(field_path, start, len(self._segments), pattern))

    def _field_path(self) -> str:
        idents = [self._ident()]
        while self._peek("."):
            self._pos += 1
            idents.append(self._ident())
        return ".".join(idents)

    def _ident(self) -> str:
        found = _IDENT.match(self._text, self._pos)
        if found is None:
            self._fail("expected a field name")
        self._pos = found.end()
        return found.group()

    def _literal(self) -> str:
        found = _LITERAL.match(self._text, self._pos)
        if found is None:
            self._fail("expected a literal segment")
        self._pos = found.end()
        return found.group()

    def _peek(self, char: str) -> bool:
        return self._text.startswith(char, self._pos)

    def _expect(self, char: str) -> None:
        if not self._peek(char):
            self._fail(f"expected {char!r}")
        self._pos += 1

    def _check_multi_is_last(self) -> None:
        for index, segment in enumerate(self._segments[:-1]):
            if segment.kind is SegmentKind.MULTI:
                raise TemplateError(
                    f"path template {self._text!r}: '**' must be the last segment "
                    f"(found at segment {index + 1})"
                )

    def _fail(self, reason: str) -> NoReturn:
        raise TemplateError(f"path template {self._text!r}: {reason} at offset {self._pos}")
