"""Retrieval metrics: numpy reference, hand-computed tables, peers (CLIP_benchmark, open_clip)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modalign.eval import retrieval
from modalign.eval.retrieval import (
    evaluate_retrieval,
    evaluate_retrieval_per_query,
    retrieval_metrics,
    retrieval_per_query,
    top_k,
    unique_present_rows,
)
from modalign.types import Direction, EmbeddingSet


def _normed(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def reference_metrics(q, g, qg, gg, ks):
    """Plain numpy: full score matrix, one full sort per query, negatives first among ties."""
    scores = q.astype(np.float64) @ g.astype(np.float64).T
    per = {f"{m}@{k}": [] for m in ("recall", "precision", "ndcg") for k in ks}
    per.update(mrr=[], map=[], rank=[])
    for i in range(len(q)):
        rel = gg == qg[i]
        order = np.lexsort((rel, -scores[i].astype(np.float32)))  # score desc, then negatives
        ranked_rel = rel[order]
        pos_ranks = np.flatnonzero(ranked_rel) + 1
        per["rank"].append(pos_ranks[0])
        per["mrr"].append(1.0 / pos_ranks[0])
        precisions = [np.mean(ranked_rel[:r]) for r in pos_ranks]
        per["map"].append(np.mean(precisions))
        for k in ks:
            per[f"recall@{k}"].append(float(ranked_rel[:k].any()))
            per[f"precision@{k}"].append(ranked_rel[:k].sum() / k)
            dcg = sum(1 / np.log2(r + 1) for r in pos_ranks if r <= k)
            idcg = sum(1 / np.log2(r + 1) for r in range(1, min(rel.sum(), k) + 1))
            per[f"ndcg@{k}"].append(dcg / idcg)
    out = {k: float(np.mean(v)) for k, v in per.items() if k != "rank"}
    out["mean_rank"] = float(np.mean(per["rank"]))
    out["median_rank"] = float(np.median(per["rank"]))
    return out


@pytest.mark.parametrize("chunk", [1, 7, None])
@pytest.mark.parametrize("n_groups", [40, 5])  # 5 groups of ~24: exercises the sort path
def test_matches_numpy_reference(chunk, n_groups):
    rng = np.random.default_rng(n_groups)
    q, g = _normed(rng, 50, 8), _normed(rng, 120, 8)
    qg, gg = rng.integers(0, n_groups, 50), rng.integers(0, n_groups, 120)
    gg[:n_groups] = np.arange(n_groups)  # every group has a gallery item
    ks = (1, 3, 10)
    ours = retrieval_metrics(q, g, qg, gg, ks=ks, chunk_size=chunk)
    ref = reference_metrics(q, g, qg, gg, ks)
    assert ours.keys() == ref.keys()
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], abs=1e-9), key


def test_sort_path_equals_pass_path(monkeypatch):
    rng = np.random.default_rng(0)
    q, g = _normed(rng, 30, 4), _normed(rng, 200, 4)
    qg, gg = rng.integers(0, 3, 30), rng.integers(0, 3, 200)
    a = retrieval_metrics(q, g, qg, gg, ks=(1, 5))
    monkeypatch.setattr(retrieval, "SORT_THRESHOLD", 10_000)
    b = retrieval_metrics(q, g, qg, gg, ks=(1, 5))
    assert a == pytest.approx(b, abs=1e-12)


def test_hand_computed_table():
    # Scores (rows: queries, columns: gallery g0..g3); positives marked *.
    # q0: g0*=0.9  g1=0.8  g2*=0.1  g3=0.5 -> positive ranks 1, 4
    # q1: g0=0.6  g1*=0.2  g2=0.7  g3=0.4 -> positive rank 4
    # q2: g0=0.5  g1=0.5  g2=0.1  g3*=0.5 -> tie: negatives ranked first (pessimistic) -> 3
    s = np.array(
        [[0.9, 0.8, 0.1, 0.5], [0.6, 0.2, 0.7, 0.4], [0.5, 0.5, 0.1, 0.5]], dtype=np.float32
    )
    q, g = s, np.eye(4, dtype=np.float32)  # q @ g.T == s
    qg, gg = np.array([0, 1, 3]), np.array([0, 1, 0, 3])
    m = retrieval_metrics(q, g, qg, gg, ks=(1, 2))
    expected = {
        "recall@1": 1 / 3,  # q0 only
        "recall@2": 1 / 3,
        "precision@1": 1 / 3,
        "precision@2": (1 / 2 + 0 + 0) / 3,
        "mrr": (1 + 1 / 4 + 1 / 3) / 3,
        "map": ((1 / 1 + 2 / 4) / 2 + 1 / 4 + 1 / 3) / 3,
        "mean_rank": (1 + 4 + 3) / 3,
        "median_rank": 3.0,
        "ndcg@1": (1 + 0 + 0) / 3,
        # q0 has 2 positives: ideal DCG@2 = 1 + 1/log2(3); it got only rank 1 in the top 2
        "ndcg@2": (1 / (1 + 1 / np.log2(3)) + 0 + 0) / 3,
    }
    assert m == pytest.approx(expected, abs=1e-12)


def test_matches_clip_benchmark_recall():
    zr = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")
    rng = np.random.default_rng(1)
    n_img, per_img = 40, 5
    img = _normed(rng, n_img, 16)
    txt_owner = np.repeat(np.arange(n_img), per_img)
    txt = img[txt_owner] + 0.9 * _normed(rng, n_img * per_img, 16)
    txt = (txt / np.linalg.norm(txt, axis=1, keepdims=True)).astype(np.float32)
    scores = torch.from_numpy(txt) @ torch.from_numpy(img).T  # CLIP_benchmark: texts x images
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(txt)), torch.from_numpy(txt_owner)] = True
    # COCO-style table: one row per caption, the image repeated on each row.
    emb = EmbeddingSet(
        {"image": img[txt_owner], "text": txt},
        ids=[str(i) for i in range(len(txt))],
        groups=txt_owner,
    )
    ours = evaluate_retrieval(emb, "test", ks=(1, 5, 10))
    assert ours["test/image_to_text/n_queries"] == n_img  # duplicates counted once
    for k in (1, 5, 10):
        t2i = (zr.recall_at_k(scores, positive, k) > 0).float().mean().item()
        i2t = (zr.recall_at_k(scores.T, positive.T, k) > 0).float().mean().item()
        assert ours[f"test/text_to_image/recall@{k}"] == pytest.approx(t2i)
        assert ours[f"test/image_to_text/recall@{k}"] == pytest.approx(i2t)


def test_matches_open_clip_formula():
    # open_clip_train/train.py get_clip_metrics (re-derived; importing open_clip needs torchvision):
    #   ranking = argsort(logits, descending); preds = where(ranking == arange)[1]
    #   mean_rank = preds.mean() + 1; median_rank = floor(median(preds)) + 1; R@k = mean(preds < k)
    rng = np.random.default_rng(2)
    a = _normed(rng, 60, 8)
    b = a + 0.8 * _normed(rng, 60, 8)
    b = (b / np.linalg.norm(b, axis=1, keepdims=True)).astype(np.float32)
    logits = torch.from_numpy(a) @ torch.from_numpy(b).T
    for name, lg in {"image_to_text": logits, "text_to_image": logits.T}.items():
        ranking = torch.argsort(lg, descending=True)
        preds = torch.where(ranking == torch.arange(60).view(-1, 1))[1].numpy()
        q, g = (a, b) if name == "image_to_text" else (b, a)
        ours = retrieval_metrics(q, g, ks=(1, 5, 10))
        assert ours["mean_rank"] == pytest.approx(preds.mean() + 1)
        assert np.floor(ours["median_rank"]) == np.floor(np.median(preds)) + 1
        for k in (1, 5, 10):
            assert ours[f"recall@{k}"] == pytest.approx(np.mean(preds < k))


def test_unique_rows_and_missing_modalities():
    x = np.array([[1, 0], [1, 0], [0, 1], [np.nan, np.nan]], dtype=np.float32)
    assert unique_present_rows(x, np.array([0, 0, 0, 1])).tolist() == [0, 2]
    assert unique_present_rows(x, np.array([0, 1, 2, 3])).tolist() == [0, 1, 2]
    y = np.array([[1, 0], [np.nan, np.nan], [0, 1], [0.6, 0.8]], dtype=np.float32)
    emb = EmbeddingSet({"a": x, "b": y}, ids=list("wxyz"))
    res = evaluate_retrieval_per_query(emb, ks=(1,))
    # a -> b: item x has no b, item z has no a: queries are w, y; gallery w, y, z
    rows, pq = res[Direction("a", "b")]
    assert rows.tolist() == [0, 2] and pq.n_gallery == 3
    assert res[Direction("b", "a")][0].tolist() == [0, 2]


def test_per_query_values_average_to_metrics():
    rng = np.random.default_rng(3)
    q, g = _normed(rng, 30, 4), _normed(rng, 30, 4)
    pq = retrieval_per_query(q, g, ks=(1, 5))
    m = retrieval_metrics(q, g, ks=(1, 5))
    for key, v in pq.values().items():
        if key != "median_rank":
            assert float(np.mean(v)) == pytest.approx(m[key])


def test_errors_are_clear():
    x = np.eye(2, dtype=np.float32)
    with pytest.raises(ValueError, match="no positive"):
        retrieval_metrics(x, x, np.array([0, 5]), np.array([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.full((2, 2), np.nan, np.float32), x)
    with pytest.raises(ValueError, match="dimension"):
        retrieval_metrics(np.eye(3, dtype=np.float32), x)
    with pytest.raises(ValueError, match="both"):
        retrieval_metrics(x, x, np.array([0, 1]), None)


def test_top_k_matches_full_sort():
    rng = np.random.default_rng(4)
    q, g = _normed(rng, 9, 5), _normed(rng, 50, 5)
    scores, idx = top_k(q, g, 4, chunk_size=2)
    full = np.argsort(-(q @ g.T), axis=1)[:, :4]
    assert (idx == full).all() and scores.shape == (9, 4)


def test_a_collapsed_space_scores_zero_not_perfect():
    same = np.ones((50, 8), dtype=np.float32) / np.sqrt(8)
    m = retrieval_metrics(same, same, ks=(1, 5))
    assert m["recall@1"] == 0.0 and m["recall@5"] == 0.0
    assert m["mean_rank"] == 50.0  # behind all 49 tied negatives
