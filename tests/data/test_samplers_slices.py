"""The sliced fast path of ``UniqueGroupBatches`` yields exactly what its row-by-row loop yields."""

from __future__ import annotations

import numpy as np
import pytest

from modalign.data.samplers import UniqueGroupBatches


@pytest.mark.parametrize("n", [0, 5, 32, 100, 1001])
@pytest.mark.parametrize(("batch_size", "world"), [(32, 1), (32, 2), (7, 1), (2000, 1)])
def test_slices_equal_the_row_by_row_loop(n: int, batch_size: int, world: int) -> None:
    rows = np.random.default_rng(n).permutation(2 * n)[:n]  # not in order, not contiguous
    groups = np.arange(2 * n)  # every row its own group
    for rank in range(world):
        fast = UniqueGroupBatches(rows, groups, batch_size, seed=3, rank=rank, world_size=world)
        loop = UniqueGroupBatches(rows, groups, batch_size, seed=3, rank=rank, world_size=world)
        assert fast._slices
        loop._slices = False
        for epoch in range(3):
            fast.set_epoch(epoch)
            loop.set_epoch(epoch)
            assert len(fast) == len(loop)
            assert list(fast) == list(loop)
            assert all(type(r) is int for b in fast for r in b)


def test_shared_groups_or_negatives_keep_the_loop() -> None:
    rows = np.arange(10)
    assert not UniqueGroupBatches(rows, rows // 2, 4, seed=0)._slices
    assert not UniqueGroupBatches(rows, rows, 4, seed=0, negatives={1: [2]})._slices
