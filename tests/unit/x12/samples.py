"""Access to the shared X12 sample files that sit beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parents[3].parent / "shared" / "data" / "x12"
LEGACY_DIR = DATA_DIR / "legacy_4010"

requires_samples = pytest.mark.skipif(
    not DATA_DIR.is_dir(), reason=f"shared X12 samples not found at {DATA_DIR}"
)


def sample(name: str) -> bytes:
    """The bytes of one sample, exactly as stored (BOMs, CRLF and indentation included)."""
    return (DATA_DIR / name).read_bytes()


def top_level_samples() -> list[Path]:
    return sorted(DATA_DIR.glob("*.edi")) if DATA_DIR.is_dir() else []


def legacy_samples() -> list[Path]:
    return sorted(LEGACY_DIR.glob("*.edi")) if LEGACY_DIR.is_dir() else []
