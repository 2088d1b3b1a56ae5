"""The per-granule versions that make applying slot events idempotent."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from availability_svc.projection import GranuleVersions


def numbers(*values: int) -> npt.NDArray[np.int64]:
    return np.asarray(values, dtype=np.int64)


def test_snapshot_rows_of_one_provider_from_several_locations_merge_sorted() -> None:
    versions = GranuleVersions()
    versions.add_snapshot(7, numbers(30, 10), numbers(3, 1))
    versions.add_snapshot(7, numbers(20), numbers(2))
    versions.seal()
    assert versions.current(7, numbers(10, 20, 30, 40)).tolist() == [1, 2, 3, 0]
    assert versions.current(8, numbers(10)).tolist() == [0]
    assert len(versions) == 3


def test_recording_updates_known_granules_and_inserts_new_ones_in_order() -> None:
    versions = GranuleVersions()
    versions.add_snapshot(1, numbers(10, 20), numbers(1, 1))
    versions.seal()
    versions.record(1, numbers(25, 5, 20), numbers(1, 4, 2))
    assert versions.current(1, numbers(5, 10, 20, 25)).tolist() == [4, 1, 2, 1]
    versions.record(2, numbers(3), numbers(9))
    assert versions.current(2, numbers(3, 4)).tolist() == [9, 0]


def test_pruning_forgets_only_the_past() -> None:
    versions = GranuleVersions()
    versions.add_snapshot(1, numbers(1, 2, 3, 4), numbers(5, 6, 7, 8))
    versions.seal()
    versions.prune_before(3)
    assert versions.current(1, numbers(1, 2, 3, 4)).tolist() == [0, 0, 7, 8]
    assert len(versions) == 2
