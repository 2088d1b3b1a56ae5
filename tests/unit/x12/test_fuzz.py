"""Mutated real samples: the parser either succeeds or raises an X12Error, nothing else."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eligibility_svc.x12 import X12Error, parse_x12
from tests.unit.x12.documents import INQUIRY_270, RESPONSE_271, edi
from tests.unit.x12.samples import legacy_samples, top_level_samples

# The embedded documents keep this test meaningful when the shared folder is absent.
SEEDS = [
    edi(RESPONSE_271).encode(),
    edi(INQUIRY_270).encode(),
    *(path.read_bytes() for path in top_level_samples()),
    *(path.read_bytes() for path in legacy_samples()),
]
# Whole PHI values from the samples; an error message may never repeat them.
PHI_VALUES = ("SMITH", "JOHN", "ROBERT", "MARY", "W123456789", "11122333301", "19630519")
DELIMITER_BYTES = b"*~^:|>\n\r "


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(
            st.sampled_from(["flip", "byte", "truncate", "delete", "insert", "swap", "copy"])
        )
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[at] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[at:]
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 40))]
        elif kind == "insert":
            data[at:at] = draw(
                st.binary(min_size=1, max_size=8) | st.sampled_from([b"*", b"~", b"^", b":", b"\n"])
            )
        elif kind == "swap":
            first, second = draw(
                st.lists(st.sampled_from(DELIMITER_BYTES), min_size=2, max_size=2, unique=True)
            )
            data = bytearray(
                bytes(data)
                .replace(bytes([first]), b"\0")
                .replace(bytes([second]), bytes([first]))
                .replace(b"\0", bytes([second]))
            )
        else:
            end = draw(st.integers(at, min(len(data), at + 60)))
            target = draw(st.integers(0, len(data)))
            data[target:target] = data[at:end]
    return bytes(data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_mutated_samples_raise_only_x12_errors_without_phi(data: bytes) -> None:
    try:
        parse_x12(data)
    except X12Error as error:
        message = str(error)
        assert not any(value in message for value in PHI_VALUES), message


def test_every_truncation_of_the_samples_is_handled() -> None:
    refused = 0
    for seed in SEEDS:
        for end in range(0, len(seed), 7):
            try:
                parse_x12(seed[:end])
            except X12Error:
                refused += 1
            else:
                # Only a cut inside the IEA trailer can leave a complete interchange.
                assert b"IEA" in seed[:end]
    assert refused > 0
