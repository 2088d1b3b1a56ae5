"""Slot ids, part of the slot inventory contract shared by availability and booking.

A slot id names a visit's first granule: `<provider id>_<start in UTC as YYYYMMDDTHHMMZ>`,
e.g. `5f0c..._20260301T1430Z`. Search hands it out; booking takes it back.
"""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime

SLOT_TIME_FORMAT = "%Y%m%dT%H%MZ"


def format_slot_id(provider_id: str, start_utc: int) -> str:
    """The slot id of `provider_id`'s granule starting at `start_utc` (unix seconds)."""
    return f"{provider_id}_{slot_time(start_utc)}"


# Results cluster on the same few thousand start instants (the next days' granules), so the
# formatted forms are cached: formatting is a good share of a search's own cost.
@functools.lru_cache(maxsize=1 << 16)
def slot_time(start_utc: int) -> str:
    """The time part of a slot id: the start in UTC as `YYYYMMDDTHHMMZ`."""
    return datetime.fromtimestamp(start_utc, UTC).strftime(SLOT_TIME_FORMAT)


def parse_slot_id(slot_id: str) -> tuple[str, datetime]:
    """(canonical provider id, start instant) of a slot id; ValueError if it is not one."""
    provider_id, sep, stamp = slot_id.rpartition("_")
    try:
        canonical = str(uuid.UUID(provider_id.strip())) if sep else None
    except ValueError:
        canonical = None
    if canonical is None:
        raise ValueError("not a slot id")
    return canonical, datetime.strptime(stamp, SLOT_TIME_FORMAT).replace(tzinfo=UTC)
