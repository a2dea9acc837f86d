"""Diagnostics and bootstrap: numpy references, hand tables, sampling consistency."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from modalign.eval import diagnostics as dg
from modalign.eval.bootstrap import bootstrap_intervals, paired_bootstrap


def _normed(rng, n, d):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_similarity_samples_exact_when_small():
    rng = np.random.default_rng(0)
    a, b = _normed(rng, 12, 5), _normed(rng, 15, 5)
    ga, gb = rng.integers(0, 4, 12), rng.integers(0, 4, 15)
    s = dg.similarity_samples(a, b, ga, gb, max_pairs=10_000)
    full, pos = a @ b.T, ga[:, None] == gb[None, :]
    assert np.allclose(np.sort(s["positive"]), np.sort(full[pos]))
    assert np.allclose(np.sort(s["negative"]), np.sort(full[~pos]))
    st = dg.similarity_stats(s)
    assert st["alignment_score"] == pytest.approx(
        (full[pos].mean() - full[~pos].mean()) / full.std()
    )
    # Wang & Isola alignment is E||a - b||^2 over positives
    ii, jj = np.nonzero(pos)
    assert st["wang_isola_alignment"] == pytest.approx(
        np.mean(np.sum((a[ii] - b[jj]) ** 2, axis=1))
    )


def test_similarity_sampling_is_close_to_exact():
    rng = np.random.default_rng(1)
    a, b = _normed(rng, 300, 8), _normed(rng, 300, 8)
    g = np.arange(300) % 30
    exact = dg.similarity_stats(dg.similarity_samples(a, b, g, g, max_pairs=10**6))
    sampled = dg.similarity_stats(dg.similarity_samples(a, b, g, g, max_pairs=20_000))
    assert sampled["neg_sim_mean"] == pytest.approx(exact["neg_sim_mean"], abs=0.01)
    assert sampled["pos_sim_mean"] == pytest.approx(exact["pos_sim_mean"], abs=0.01)


def test_overlap_hand_table():
    s = {
        "positive": np.array([0.55, 0.55]),
        "negative": np.array([0.55, -0.55]),
        "all": np.zeros(2),
    }
    assert dg.similarity_stats(s, bins=4)["sim_overlap"] == pytest.approx(0.5)


def test_modality_gap_and_share():
    rng = np.random.default_rng(2)
    a = _normed(rng, 50, 6)
    shift = np.r_[0.3, np.zeros(5)]
    b = a + shift  # pure offset: the gap explains all of the partner distance
    r = dg.modality_gap(a, b, a, b)
    assert r["modality_gap"] == pytest.approx(0.3)
    assert r["gap_share"] == pytest.approx(1.0)
    noise = rng.standard_normal((50, 6))
    r2 = dg.modality_gap(a, a + noise, a, a + noise)
    d = -noise
    assert r2["gap_share"] == pytest.approx(np.sum(d.mean(0) ** 2) / np.mean(np.sum(d**2, 1)))


def test_uniformity_matches_definition():
    rng = np.random.default_rng(3)
    x = _normed(rng, 20, 4)
    sq = ((x[:, None] - x[None]) ** 2).sum(-1)
    off = ~np.eye(20, dtype=bool)
    assert dg.uniformity(x) == pytest.approx(np.log(np.exp(-2 * sq[off]).mean()))


def test_effective_rank_and_collapse():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((100, 32))
    s = np.linalg.svd(x, compute_uv=False)
    p = s / s.sum()
    assert dg.effective_rank(x)["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    collapsed = np.outer(rng.standard_normal(100), rng.standard_normal(32)) + 1e-6 * x
    st = dg.effective_rank(collapsed)
    assert st["effective_rank"] < 1.1
    assert "dimensional collapse" in (dg.collapse_warning(st) or "")
    assert dg.collapse_warning(dg.effective_rank(x)) is None


def test_hubness_skewness_matches_scipy():
    rng = np.random.default_rng(5)
    q, g = _normed(rng, 200, 3).astype(np.float32), _normed(rng, 150, 3).astype(np.float32)
    occ = dg.k_occurrence(q, g, k=5)
    ref = np.bincount(np.argsort(-(q @ g.T), axis=1)[:, :5].ravel(), minlength=150)
    assert (occ == ref).all()
    assert dg.hubness(q, g, k=5)["hubness_skew@5"] == pytest.approx(stats.skew(ref, bias=True))


def test_center_modalities_keeps_missing_rows():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [np.nan, np.nan]], dtype=np.float32)
    out = dg.center_modalities({"a": x})["a"]
    assert np.isnan(out[2]).all()
    assert np.allclose(out[:2], [[0.70710677, -0.70710677], [-0.70710677, 0.70710677]])


def test_bootstrap_interval_covers_normal_theory():
    rng = np.random.default_rng(6)
    v = (rng.random(2000) < 0.3).astype(float)
    lo, hi = bootstrap_intervals({"recall@1": v}, n_boot=2000)["recall@1"]
    se = np.sqrt(v.mean() * (1 - v.mean()) / len(v))
    assert lo == pytest.approx(v.mean() - 1.96 * se, abs=0.006)
    assert hi == pytest.approx(v.mean() + 1.96 * se, abs=0.006)


def test_paired_bootstrap_finds_real_and_ignores_null_differences():
    rng = np.random.default_rng(7)
    base = (rng.random(1000) < 0.5).astype(float)
    better = np.where(rng.random(1000) < 0.1, 1.0, base)  # strictly >= base, ~5% more hits
    same = base.copy()
    r = paired_bootstrap({"recall@1": base}, {"recall@1": better}, n_boot=1000)["recall@1"]
    assert r["significant"] == 1.0 and r["low"] > 0 and r["p_value"] < 0.01
    r0 = paired_bootstrap({"recall@1": base}, {"recall@1": same}, n_boot=500)["recall@1"]
    assert r0["diff"] == 0.0 and r0["significant"] == 0.0
    with pytest.raises(ValueError, match="same queries"):
        paired_bootstrap({"m": base}, {"m": base[:10]})
