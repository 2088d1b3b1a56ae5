"""The tokenizer reads delimiters from ISA and tolerates the layouts real files use."""

from __future__ import annotations

import codecs

import pytest

from eligibility_svc.x12 import Delimiters, X12SyntaxError, parse_271, tokenize
from tests.unit.x12.documents import ISA, RESPONSE_271, edi


def test_delimiters_come_from_the_isa_segment() -> None:
    text = edi(RESPONSE_271).replace("*", "|").replace("^", "!").replace(":", ">")

    tokens = tokenize(text)

    assert tokens.delimiters == Delimiters(element="|", repetition="!", component=">", segment="~")
    assert tokens.segments[13].id == "EB"
    assert tokens.segments[13].elements == ("1", "IND", "30", "", "SILVER PLAN")


def test_segments_are_numbered_from_isa() -> None:
    tokens = tokenize(edi(RESPONSE_271))

    assert [(s.ordinal, s.id) for s in tokens.segments[:5]] == [
        (1, "ISA"),
        (2, "GS"),
        (3, "ST"),
        (4, "BHT"),
        (5, "HL"),
    ]
    assert tokens.segments[-1].ordinal == 18
    assert tokens.segments[-1].id == "IEA"


def test_newline_as_segment_terminator() -> None:
    tokens = tokenize(edi(RESPONSE_271, terminator="\n"))

    assert tokens.delimiters.segment == "\n"
    assert len(tokens.segments) == 18


def test_crlf_terminators_bom_indentation_and_trailing_spaces_give_the_same_result() -> None:
    plain = parse_271(edi(RESPONSE_271))
    messy = codecs.BOM_UTF8 + "".join(f"\t  {segment}~  \r\n" for segment in RESPONSE_271).encode()

    assert parse_271(messy) == plain


def test_utf16_with_byte_order_mark_is_decoded() -> None:
    data = codecs.BOM_UTF16_LE + edi(RESPONSE_271).encode("utf-16-le")

    assert parse_271(data) == parse_271(edi(RESPONSE_271))


def test_text_input_with_a_bom_character_is_accepted() -> None:
    assert parse_271("\ufeff" + edi(RESPONSE_271)) == parse_271(edi(RESPONSE_271))


def test_bytes_that_are_not_utf8_are_read_as_latin1_with_a_warning() -> None:
    data = edi(RESPONSE_271).replace("RIVERSIDE", "RIVERSID\u00c9").encode("latin-1")

    interchange = parse_271(data)

    receiver = interchange.transactions[0].sources[0].receivers[0].receiver
    assert receiver.entity.name == "RIVERSID\u00c9 CLINIC"
    assert interchange.warnings[0].endswith("is not valid UTF-8; the data was decoded as Latin-1")


def test_unpadded_isa_is_read_by_counting_separators() -> None:
    unpadded = "ISA*00**00**ZZ*SUBMITTER*ZZ*PAYER*260301*0930*^*00501*000000042*0*P*:"

    interchange = parse_271(edi((unpadded, *RESPONSE_271[1:])))

    assert interchange.header.sender_id == "SUBMITTER"
    assert interchange.warnings == (
        "segment 1 (ISA): is 70 characters long, not the fixed 106 "
        "(fields not padded to their fixed widths)",
    )


def test_repeats_and_components_split_lazily_even_when_isa11_equals_isa16() -> None:
    isa = ISA[:-1].replace("*^*00501", "*:*00501") + ":"
    segments = (isa, *RESPONSE_271[1:13], "EB*1*IND*30:98*HC:99213", *RESPONSE_271[14:])

    eb = tokenize(edi(segments)).segments[13]

    assert eb.repeats(3) == ("30", "98")
    assert eb.components(4) == ("HC", "99213")


def test_isa11_that_is_not_a_separator_disables_repetitions() -> None:
    isa = ISA.replace("*^*00501", "*U*00501")

    tokens = tokenize(edi((isa, *RESPONSE_271[1:])))

    assert tokens.delimiters.repetition is None
    assert tokens.segments[13].repeats(3) == ("30",)


def test_data_not_starting_with_isa_is_refused() -> None:
    with pytest.raises(X12SyntaxError) as caught:
        tokenize("GS*HB*A*B~")

    assert str(caught.value) == (
        "segment 1: expected the interchange header ISA at the start of the data"
    )


def test_isa_with_too_few_elements_is_refused() -> None:
    with pytest.raises(X12SyntaxError) as caught:
        tokenize("ISA*00*          *00*")

    assert str(caught.value) == "segment 1 (ISA): expected 16 elements, found 4"


def test_isa_ending_early_is_detected_before_the_next_segment() -> None:
    short_isa = "ISA*00*          *00*          *ZZ*SUBMITTER      *ZZ*PAYER          *260301"

    with pytest.raises(X12SyntaxError) as caught:
        tokenize(edi((short_isa, *RESPONSE_271[1:])))

    assert str(caught.value) == (
        "segment 1 (ISA): expected 16 elements before the segment terminator"
    )


def test_letter_as_element_separator_is_refused() -> None:
    with pytest.raises(X12SyntaxError) as caught:
        tokenize("ISAX00X")

    assert str(caught.value) == (
        "segment 1 (ISA): expected an element separator (not a letter, digit or space) after 'ISA'"
    )


def test_lowercase_segment_id_is_refused_with_its_ordinal() -> None:
    segments = (*RESPONSE_271[:3], "bht*0022*11*REF42*20260301*0930", *RESPONSE_271[4:])

    with pytest.raises(X12SyntaxError) as caught:
        tokenize(edi(segments))

    assert str(caught.value) == (
        "segment 4: expected a segment identifier (2-3 capital letters or digits), "
        "found a value of 3 characters"
    )


def test_missing_terminator_shows_up_as_a_line_break_inside_a_segment() -> None:
    text = edi(RESPONSE_271).replace("EB*1*IND*30**SILVER PLAN~", "EB*1*IND*30**SILVER PLAN\n")

    with pytest.raises(X12SyntaxError) as caught:
        tokenize(text)

    assert str(caught.value) == (
        "segment 14 (EB): found a line break or control character inside the segment; "
        "a segment terminator is probably missing"
    )
