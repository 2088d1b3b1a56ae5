"""The derived document fields of the Elasticsearch backend (no cluster needed)."""

from __future__ import annotations

from availability_svc.elastic import _Granule, _run_lengths

P, Q = "provider-p", "provider-q"
A, B = "location-a", "location-b"
G = 900


def granule(provider: str, location: str, start: int) -> _Granule:
    return _Granule(provider, location, start, start + G)


def test_run_lengths_count_consecutive_open_granules_at_one_location() -> None:
    granules = [
        granule(P, A, 0),
        granule(P, A, G),
        granule(P, A, 2 * G),
        granule(P, A, 4 * G),  # a gap before it
        granule(P, B, 5 * G),  # another location: a new run
        granule(Q, B, 6 * G),  # another provider: a new run
        granule(Q, B, 7 * G),
    ]
    assert _run_lengths(granules) == [3, 2, 1, 1, 1, 2, 1]
