"""Every legacy 4010 sample is recognised as 4010 and refused clearly, never misparsed."""

from __future__ import annotations

from pathlib import Path

import pytest

from eligibility_svc.x12 import UnsupportedVersion, parse_270, parse_271, parse_x12
from tests.unit.x12.samples import legacy_samples, requires_samples

pytestmark = requires_samples


@pytest.mark.parametrize("path", legacy_samples(), ids=lambda p: p.name)
def test_legacy_file_is_reported_as_4010(path: Path) -> None:
    with pytest.raises(UnsupportedVersion) as caught:
        parse_x12(path.read_bytes())

    error = caught.value
    assert error.is_4010 is True
    assert error.version in ("004010X092", "004010X092A1")
    assert (error.ordinal, error.segment_id, error.element) == (2, "GS", "GS08")
    assert str(error) == (
        f"segment 2 (GS): element GS08: this is an X12 4010 file ('{error.version}'); "
        "only HIPAA 5010 005010X279A1 270/271 is supported"
    )


def test_there_are_ten_legacy_samples() -> None:
    assert len(legacy_samples()) == 10


@pytest.mark.parametrize("path", legacy_samples(), ids=lambda p: p.name)
def test_type_specific_parsers_also_refuse_4010(path: Path) -> None:
    parse = parse_270 if path.name.startswith("270") else parse_271
    with pytest.raises(UnsupportedVersion, match="4010 file"):
        parse(path.read_bytes())
