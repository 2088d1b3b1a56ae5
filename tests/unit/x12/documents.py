"""Small hand-written 270/271 documents for tests that must not depend on the shared samples."""

from __future__ import annotations

ISA = (
    "ISA*00*          *00*          *ZZ*SUBMITTER      *ZZ*PAYER          "
    "*260301*0930*^*00501*000000042*0*P*:"
)

# Segment ordinals: 1 ISA, 2 GS, 3 ST, 4 BHT, 5 HL, 6 NM1, 7 HL, 8 NM1, 9 HL, 10 TRN,
# 11 NM1, 12 DMG, 13 DTP, 14 EB, 15 EB, 16 SE, 17 GE, 18 IEA.
RESPONSE_271 = (
    ISA,
    "GS*HB*PAYER*SUBMITTER*20260301*0930*42*X*005010X279A1",
    "ST*271*0001*005010X279A1",
    "BHT*0022*11*REF42*20260301*0930",
    "HL*1**20*1",
    "NM1*PR*2*ACME HEALTH PLAN*****PI*77777",
    "HL*2*1*21*1",
    "NM1*1P*2*RIVERSIDE CLINIC*****XX*1234567893",
    "HL*3*2*22*0",
    "TRN*2*TRACE42*9877281234",
    "NM1*IL*1*SMITH*JOHN****MI*W123456789",
    "DMG*D8*19630519*M",
    "DTP*346*D8*20260101",
    "EB*1*IND*30**SILVER PLAN",
    "EB*B*IND*98***27*25.00*****Y",
    "SE*14*0001",
    "GE*1*42",
    "IEA*1*000000042",
)

# Segment ordinals: 1 ISA, 2 GS, 3 ST, 4 BHT, 5 HL, 6 NM1, 7 HL, 8 NM1, 9 HL, 10 NM1,
# 11 DMG, 12 DTP, 13 EQ, 14 SE, 15 GE, 16 IEA.
INQUIRY_270 = (
    ISA,
    "GS*HS*SUBMITTER*PAYER*20260301*0930*42*X*005010X279A1",
    "ST*270*0001*005010X279A1",
    "BHT*0022*13*REF42*20260301*0930",
    "HL*1**20*1",
    "NM1*PR*2*ACME HEALTH PLAN*****PI*77777",
    "HL*2*1*21*1",
    "NM1*1P*2*RIVERSIDE CLINIC*****XX*1234567893",
    "HL*3*2*22*0",
    "NM1*IL*1*SMITH*JOHN****MI*W123456789",
    "DMG*D8*19630519*M",
    "DTP*291*D8*20260301",
    "EQ*30",
    "SE*12*0001",
    "GE*1*42",
    "IEA*1*000000042",
)

# Values that are PHI in the documents above and must never appear in an error message.
PHI_VALUES = ("SMITH", "JOHN", "W123456789", "19630519")


def edi(segments: tuple[str, ...] | list[str], terminator: str = "~") -> str:
    return "".join(segment + terminator for segment in segments)


def replaced(segments: tuple[str, ...], ordinal: int, segment: str) -> list[str]:
    """The document with the segment at `ordinal` (1 = ISA) replaced."""
    result = list(segments)
    result[ordinal - 1] = segment
    return result


def without(segments: tuple[str, ...], ordinal: int) -> list[str]:
    result = list(segments)
    del result[ordinal - 1]
    return result


def inserted(segments: tuple[str, ...], ordinal: int, segment: str) -> list[str]:
    """The document with `segment` inserted so that it gets `ordinal`."""
    result = list(segments)
    result.insert(ordinal - 1, segment)
    return result
