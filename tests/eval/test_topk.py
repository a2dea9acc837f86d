"""Exact blocked top-k: parity with a naive full argsort, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modalign.eval import topk
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


# The threshold skip: after the first tile, only the GROUP-column groups whose maximum beats the
# row's running (k+1)-th score are merged (sparse), unless they hold more than 1 / _DENSE_SHARE
# of the tile (dense). _DENSE_SHARE = 0 forces the sparse merge on every tile after the first.
SPARSE_SETTINGS = [(64, 4), (8, 4), (8, 0), (1, 0)]


def integer_rows(rng: np.random.Generator, n: int, d: int, high: int) -> np.ndarray:
    """Integer entries in [-high, high]: every dot product is exact in float32 and float64."""
    return rng.integers(-high, high + 1, (n, d)).astype(np.float32)


@pytest.fixture
def merges(monkeypatch):
    """Count the sparse merges that ran (the real function still runs)."""
    calls = []
    real = topk._merge_sparse
    monkeypatch.setattr(topk, "_merge_sparse", lambda *a: calls.append(1) or real(*a))
    return calls


def search(monkeypatch, q, g, k, group, share, threads=1, **kw):
    """top_k_tensor with the given GROUP and _DENSE_SHARE, ``threads`` intra-op threads."""
    monkeypatch.setattr(topk, "GROUP", group)
    monkeypatch.setattr(topk, "_DENSE_SHARE", share)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # workers=1 takes the skip only with one intra-op thread
    try:
        s, i = top_k_tensor(torch.from_numpy(q), torch.from_numpy(g), k, **kw)
    finally:
        torch.set_num_threads(previous)
    return s.numpy(), i.numpy()


@pytest.mark.parametrize(("group", "share"), SPARSE_SETTINGS)
@pytest.mark.parametrize(("high", "k"), [(20, 10), (1, 10), (1, 1), (20, 150)])
def test_threshold_skip_matches_the_reference(monkeypatch, merges, group, share, high, k):
    # high=20: few ties (random data); high=1: most scores tied, also at the k-th place;
    # k=150 > tile=96; the last tile (1000 - 960 = 40 columns) is not a whole number of groups.
    rng = np.random.default_rng(high * 1000 + k)
    q, g = integer_rows(rng, 70, 6, high), integer_rows(rng, 1000, 6, high)
    s, i = search(monkeypatch, q, g, k, group, share, threads=2, block=32, tile=96, workers=2)
    rs, ri = reference(q, g, k)
    assert (i == ri).all()
    assert np.array_equal(s, rs.astype(np.float32))
    assert merges or share > 0  # forced: the pool workers (one intra-op thread) took the skip


@pytest.mark.parametrize(("group", "share"), SPARSE_SETTINGS)
def test_default_tiles_take_the_sparse_path_and_match(monkeypatch, merges, group, share):
    rng = np.random.default_rng(group)
    q, g = integer_rows(rng, 40, 8, 30), integer_rows(rng, 20_000, 8, 30)
    s, i = search(monkeypatch, q, g, 10, group, share, workers=1)
    rs, ri = reference(q, g, 10)
    assert (i == ri).all() and np.array_equal(s, rs.astype(np.float32))
    assert merges  # 5 tiles of 4,096: the later ones go sparse


@pytest.mark.parametrize(("group", "share"), SPARSE_SETTINGS)
@pytest.mark.parametrize(("n", "tile"), [(50, 7), (50, 64), (13, 4)])
def test_k_equal_to_the_gallery_size(monkeypatch, group, share, n, tile):
    # keep = k = N: no spare candidate, and the running k-th score stays -inf until the end
    rng = np.random.default_rng(n + tile)
    q, g = integer_rows(rng, 9, 3, 2), integer_rows(rng, n, 3, 2)
    s, i = search(monkeypatch, q, g, n, group, share, tile=tile)
    rs, ri = reference(q, g, n)
    assert (i == ri).all() and np.array_equal(s, rs.astype(np.float32))


@pytest.mark.parametrize(("group", "share"), SPARSE_SETTINGS)
def test_gallery_smaller_than_a_tile(monkeypatch, group, share):
    rng = np.random.default_rng(3)
    q, g = integer_rows(rng, 20, 5, 3), integer_rows(rng, 30, 5, 3)
    s, i = search(monkeypatch, q, g, 7, group, share)  # default tile 4,096 > 30 rows
    rs, ri = reference(q, g, 7)
    assert (i == ri).all() and np.array_equal(s, rs.astype(np.float32))


@pytest.mark.parametrize(("group", "share"), SPARSE_SETTINGS)
def test_float64_inputs_stay_float64(monkeypatch, group, share):
    rng = np.random.default_rng(4)
    q, g = rng.standard_normal((25, 7)), rng.standard_normal((700, 7))
    g[::7] = g[3]  # exact duplicates: ties at every place
    s, i = search(monkeypatch, q, g, 12, group, share, tile=50, workers=2)
    assert s.dtype == np.float64
    scores = q @ g.T  # numpy's float64 sums may differ from torch's in the last bit: use torch's
    full = (torch.from_numpy(q) @ torch.from_numpy(g).T).numpy()
    ri = np.stack([np.lexsort((np.arange(len(g)), -row))[:12] for row in full])
    assert (i == ri).all()
    np.testing.assert_allclose(s, np.take_along_axis(scores, ri, 1), rtol=0, atol=1e-12)


def test_a_worker_with_several_intra_op_threads_merges_densely(monkeypatch, merges):
    rng = np.random.default_rng(5)
    q, g = integer_rows(rng, 40, 8, 30), integer_rows(rng, 20_000, 8, 30)
    s, i = search(monkeypatch, q, g, 10, 8, 0, threads=2, workers=1)
    rs, ri = reference(q, g, 10)
    assert (i == ri).all() and np.array_equal(s, rs.astype(np.float32))
    assert not merges
