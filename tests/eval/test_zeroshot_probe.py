"""Zero-shot, probes: numpy references and hand-computed tables."""

from __future__ import annotations

import numpy as np
import pytest

from modalign.eval.probe import cross_val_predictions, probe_metrics, stratified_folds
from modalign.eval.zeroshot import (
    classification_metrics,
    confusion_matrix,
    ensemble_prototypes,
    zero_shot_metrics,
)


def test_ensemble_is_mean_of_normalised_then_renormalised():
    rng = np.random.default_rng(0)
    t = rng.standard_normal((4, 3, 5))
    ref = np.stack(
        [np.mean([t[i, c] / np.linalg.norm(t[i, c]) for i in range(4)], axis=0) for c in range(3)]
    )
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert np.allclose(ensemble_prototypes(t), ref, atol=1e-6)
    assert np.allclose(
        ensemble_prototypes(t[0]), t[0] / np.linalg.norm(t[0], axis=1, keepdims=True), atol=1e-6
    )


def test_hand_computed_zero_shot_table():
    # prototypes e0, e1, e2. Items (label: ranked classes):
    #  x0 label 0: [0, 1, 2] top1 ok;  x1 label 1: [0, 1, 2] top1 wrong, top2 ok
    #  x2 label 2: [2, ...] ok;        x3 label 2: [1, 0, 2] wrong even at top2
    protos = np.eye(3, dtype=np.float32)
    x = np.array(
        [[0.9, 0.3, 0.1], [0.8, 0.5, 0.2], [0.1, 0.2, 0.9], [0.5, 0.8, 0.1]], dtype=np.float32
    )
    m = zero_shot_metrics(x, np.array([0, 1, 2, 2]), protos, ks=(1, 2))
    assert m["zero_shot_top1"] == pytest.approx(2 / 4)
    assert m["zero_shot_top2"] == pytest.approx(3 / 4)
    assert m["zero_shot_balanced_accuracy"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert confusion_matrix(np.array([0, 1, 2, 2]), np.array([0, 0, 2, 1]), 3).tolist() == [
        [1, 0, 0],
        [1, 0, 0],
        [0, 1, 1],
    ]


def test_balanced_accuracy_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    balanced_accuracy_score, top_k_accuracy_score = (
        metrics.balanced_accuracy_score,
        metrics.top_k_accuracy_score,
    )

    rng = np.random.default_rng(1)
    scores, y = rng.standard_normal((200, 7)), rng.integers(0, 7, 200)
    m = classification_metrics(y, scores, ks=(1, 3))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, scores.argmax(1)))
    assert m["top3"] == pytest.approx(top_k_accuracy_score(y, scores, k=3, labels=range(7)))


def test_knn_matches_numpy_majority_vote():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((60, 4))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = rng.integers(0, 3, 60)
    pred = cross_val_predictions(x, y, "knn", folds=3, k=5)
    folds = stratified_folds(y, 3, seed=0)  # scikit-learn's folds (test_probe.py checks)

    ref = np.empty_like(y)
    for tr, te in ((folds != f, folds == f) for f in range(3)):
        sims = x[te] @ x[tr].T
        nn = np.argsort(-sims, axis=1, kind="stable")[:, :5]
        votes = np.stack([np.bincount(y[tr][row], minlength=3) for row in nn])
        ref[te] = votes.argmax(1)
    assert (pred == ref).mean() > 0.95  # equal up to tie-breaking between equal vote counts


def test_probe_on_separable_data():
    rng = np.random.default_rng(3)
    centers = rng.standard_normal((4, 8)) * 3
    y = np.repeat(np.arange(4), 15)
    x = centers[y] + rng.standard_normal((60, 8)) * 0.3
    m = probe_metrics(x, y)
    assert m["linear_probe_accuracy"] == 1.0 and m["knn_accuracy"] == 1.0


def test_probe_needs_two_per_class():
    with pytest.raises(ValueError, match="at least 2"):
        probe_metrics(np.eye(3), np.array([0, 1, 1]))
