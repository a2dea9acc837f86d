"""Exact blocked top-k: parity with a naive full argsort, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modalign.eval.retrieval import top_k
from modalign.eval.topk import top_k_tensor


def reference(q: np.ndarray, g: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Full score matrix in float64, one stable sort per row: score descending, index ascending."""
    scores = q.astype(np.float64) @ g.astype(np.float64).T
    idx = np.stack([np.lexsort((np.arange(len(g)), -row))[:k] for row in scores])
    return np.take_along_axis(scores, idx, 1), idx


@pytest.mark.parametrize("tile", [1, 3, 7, 64])
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("k", [1, 4, 30])
def test_integer_scores_with_many_ties_match_the_reference_exactly(tile, workers, k):
    # Small integer entries: every dot product is exact in float32 whatever the summation
    # order, and most rows have many equal scores, also at the k-th place.
    rng = np.random.default_rng(k * 10 + tile)
    q = rng.integers(-1, 2, (37, 4)).astype(np.float32)
    g = rng.integers(-1, 2, (50, 4)).astype(np.float32)
    s, i = top_k_tensor(
        torch.from_numpy(q), torch.from_numpy(g), k, block=5, tile=tile, workers=workers
    )
    rs, ri = reference(q, g, k)
    assert (i.numpy() == ri).all()
    assert np.array_equal(s.numpy(), rs.astype(np.float32))


def test_random_unit_rows_match_the_reference():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((300, 16)).astype(np.float32)
    g = rng.standard_normal((2000, 16)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    s, i = top_k(q, g, 10, chunk_size=64)
    rs, ri = reference(q, g, 10)
    np.testing.assert_allclose(s, rs, atol=1e-5)
    # float32 products differ from float64 in the last bits: only near-equal scores may swap
    full = q.astype(np.float64) @ g.astype(np.float64).T
    swapped = i != ri
    assert swapped.mean() < 0.01
    gap = np.abs(np.take_along_axis(full, i, 1) - rs)[swapped]
    assert (gap < 1e-6).all()


def test_a_collapsed_space_returns_the_first_items_in_order():
    g = torch.ones(100, 3)
    _, i = top_k_tensor(g[:4], g, 5, tile=8, workers=2)
    assert i.tolist() == [[0, 1, 2, 3, 4]] * 4


def test_edges():
    g = torch.eye(3)
    s, i = top_k_tensor(g, g, 10)  # k above N returns N
    assert i.shape == (3, 3) and i[:, 0].tolist() == [0, 1, 2]
    s, i = top_k_tensor(torch.empty(0, 3), g, 2)
    assert s.shape == (0, 2)
    with pytest.raises(ValueError, match="k must be"):
        top_k_tensor(g, g, 0)
    with pytest.raises(ValueError, match="dimension"):
        top_k(np.eye(2, dtype=np.float32), np.eye(3, dtype=np.float32), 1)
