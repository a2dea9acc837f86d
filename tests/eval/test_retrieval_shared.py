"""Both retrieval directions from one score matrix equal ranking each direction on its own."""

from __future__ import annotations

import numpy as np
import pytest

from modalign.eval import retrieval
from modalign.eval.retrieval import (
    PerQueryRetrieval,
    evaluate_retrieval,
    evaluate_retrieval_per_query,
    pair_retrieval_per_query,
    retrieval_per_query,
    unique_present_rows,
)
from modalign.types import Direction, EmbeddingSet

FIELDS = ("first_rank", "average_precision", "hits", "ndcg", "n_positives", "n_gallery", "ks")


def two_pass(emb: EmbeddingSet, ks, chunk) -> dict[Direction, tuple[np.ndarray, PerQueryRetrieval]]:  # type: ignore[no-untyped-def]
    """The previous computation: every direction ranked on its own, one matmul each."""
    groups = emb.group_ids()
    keep = {m: unique_present_rows(emb.embeddings[m], groups) for m in emb.modalities}
    out = {}
    for qm in emb.modalities:
        for gm in emb.modalities:
            rows_g = keep[gm]
            rows_q = keep[qm][np.isin(groups[keep[qm]], groups[rows_g])]
            if qm == gm or len(rows_q) == 0:
                continue
            q, g = emb.embeddings[qm][rows_q], emb.embeddings[gm][rows_g]
            pq = retrieval_per_query(q, g, groups[rows_q], groups[rows_g], ks, chunk)
            out[Direction(qm, gm)] = (rows_q, pq)
    return out


def assert_same(ours, ref) -> None:  # type: ignore[no-untyped-def]
    assert list(ours) == list(ref)  # same directions, same order
    for d, (rows, pq) in ref.items():
        assert np.array_equal(ours[d][0], rows), d
        for f in FIELDS:
            assert np.array_equal(getattr(ours[d][1], f), getattr(pq, f)), (d, f)


def _normed(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _dataset(kind: str) -> EmbeddingSet:
    rng = np.random.default_rng(len(kind))
    n, d = 300, 16
    a = _normed(rng, n, d)
    b = _normed(rng, n, d) * 0.3 + a  # correlated, so ranks spread from 1 upwards
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    c = _normed(rng, n, d)
    if kind == "collapsed":  # every score ties: negatives rank before the positive
        a[:] = b[:] = c[:] = a[0]
    if kind == "duplicates":  # equal rows in different groups tie exactly
        a[100:150], b[100:150] = a[:50], b[:50]
    if kind == "missing":  # rows without one modality, queries with no positive on the other side
        a[rng.random(n) < 0.2] = np.nan
        b[rng.random(n) < 0.3] = np.nan
        c[:150] = np.nan
    groups = rng.permutation(n) if kind == "shuffled_groups" else None
    return EmbeddingSet({"a": a, "b": b, "c": c}, ids=[str(i) for i in range(n)], groups=groups)


@pytest.mark.parametrize("kind", ["plain", "collapsed", "duplicates", "missing", "shuffled_groups"])
@pytest.mark.parametrize("chunk", [1, 7, None])
def test_shared_matrix_equals_one_pass_per_direction(kind: str, chunk: int | None) -> None:
    emb = _dataset(kind)
    ks = (1, 3, 10)
    assert_same(evaluate_retrieval_per_query(emb, ks, chunk), two_pass(emb, ks, chunk))


def test_the_shared_matrix_is_used_once_per_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    real = retrieval._pair_ranks

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = real(*args, **kwargs)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(retrieval, "_pair_ranks", spy)
    monkeypatch.setattr(retrieval, "retrieval_per_query", None)  # the fallback must not run
    metrics = evaluate_retrieval(_dataset("plain"), "val", (1, 5))
    assert calls == [True, True, True]  # a-b, a-c, b-c: six directions from three matrices
    assert len({k.split("/")[1] for k in metrics}) == 6


def test_repeated_groups_fall_back_to_one_pass_per_direction() -> None:
    rng = np.random.default_rng(5)
    a, b = _normed(rng, 60, 8), _normed(rng, 60, 8)
    groups = np.repeat(np.arange(20), 3)  # three captions per image: several positives
    assert pair_retrieval_per_query(a, b, groups, groups) is None
    emb = EmbeddingSet({"a": a, "b": b}, ids=[str(i) for i in range(60)], groups=groups)
    assert_same(evaluate_retrieval_per_query(emb, (1, 5)), two_pass(emb, (1, 5), None))


def test_a_mismatched_positive_score_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    emb = _dataset("plain")
    real = retrieval._positive_scores
    monkeypatch.setattr(retrieval, "_positive_scores", lambda *a, **k: real(*a, **k) + 1e-3)
    assert (
        pair_retrieval_per_query(
            emb.embeddings["a"], emb.embeddings["b"], np.arange(300), np.arange(300)
        )
        is None
    )
    assert_same(evaluate_retrieval_per_query(emb, (1, 5)), two_pass(emb, (1, 5), None))


def test_ranks_match_a_numpy_count() -> None:
    """Independent reference: rank = 1 + negatives scoring at least the positive (float32 scores)."""
    emb = _dataset("missing")
    groups = emb.group_ids()
    for d, (rows, pq) in evaluate_retrieval_per_query(emb, (1,)).items():
        q = emb.embeddings[d.query]
        g_rows = unique_present_rows(emb.embeddings[d.gallery], groups)
        g = emb.embeddings[d.gallery][g_rows]
        scores = (q[rows].astype(np.float64) @ g.astype(np.float64).T).astype(np.float32)
        positive = groups[rows][:, None] == groups[g_rows][None, :]
        best = np.where(positive, scores, -np.inf).max(1, keepdims=True)
        expected = 1 + (np.where(positive, -np.inf, scores) >= best).sum(1)
        assert np.array_equal(pq.first_rank, expected), d
