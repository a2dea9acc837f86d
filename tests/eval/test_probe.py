"""The linear and k-NN probes against scikit-learn (the independent reference) and numpy.

scikit-learn is a test dependency only (the ``dev`` extra); its tests skip without it. The
first-order optimality test and the no-import test run without it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modalign.eval.probe import (
    cross_val_predictions,
    fit_logistic,
    knn_predict,
    probe_metrics,
    stratified_folds,
)

DATASETS = ["balanced", "imbalanced", "two_class", "two_class_imbalanced", "wide"]


def _dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes on the unit sphere (the probes' usual input)."""
    rng = np.random.default_rng(DATASETS.index(name))
    sizes, dim, spread = {
        "balanced": ([24] * 10, 64, 4.0),
        "imbalanced": ([60, 25, 9, 5, 3], 32, 1.2),
        "two_class": ([40, 40], 48, 2.0),
        "two_class_imbalanced": ([70, 6], 16, 1.0),
        "wide": ([12] * 4, 300, 8.0),  # more dimensions than items: separable, C still binds
    }[name]
    y = np.repeat(np.arange(len(sizes)), sizes)
    y = y[rng.permutation(len(y))]
    x = rng.standard_normal((len(sizes), dim))[y] + spread * rng.standard_normal((len(y), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def _sklearn_logistic(x: np.ndarray, y: np.ndarray):
    linear_model = pytest.importorskip("sklearn.linear_model")
    return linear_model.LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(
        x.astype(np.float64), y
    )


@pytest.mark.parametrize("name", DATASETS)
def test_logistic_matches_sklearn(name):
    x, y = _dataset(name)
    ref = _sklearn_logistic(x, y)
    ours = fit_logistic(x, y, tol=1e-10)
    assert ours.coef.shape[::-1] == ref.coef_.shape  # (K, D); K = 1 for two classes
    assert np.allclose(ours.coef.numpy().T, ref.coef_, atol=2e-5)
    assert np.allclose(ours.intercept.numpy(), ref.intercept_, atol=2e-5)
    assert np.allclose(ours.predict_proba(x), ref.predict_proba(x), atol=1e-6)
    assert (ours.predict(x) == ref.predict(x)).all()


@pytest.mark.parametrize("name", DATASETS)
def test_logistic_gradient_vanishes(name):
    """First-order optimality of scikit-learn's objective, its gradient written in numpy."""
    x, y = _dataset(name)
    x64, m = x.astype(np.float64), fit_logistic(x, y)
    n, k = len(y), m.coef.shape[1]
    onehot = np.eye(y.max() + 1)[y][:, -k:]
    z = x64 @ m.coef.numpy() + m.intercept.numpy()
    if k == 1:
        p = 1 / (1 + np.exp(-z))
    else:
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
    grad_w = x64.T @ (p - onehot) / n + m.coef.numpy() / n  # C = 1
    grad_b = (p - onehot).mean(0)
    assert np.abs(grad_w).max() < 1e-5 and np.abs(grad_b).max() < 1e-5
    assert np.abs(grad_w).max() > 0  # a real fit, not zeros
    assert np.abs(m.coef.numpy()).max() > 0.1


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("name", DATASETS)
def test_folds_are_sklearns(name, seed):
    model_selection = pytest.importorskip("sklearn.model_selection")
    x, y = _dataset(name)
    y = np.array([7, 3, 42, 11, 5, 0, 9, 8, 1, 2])[y]  # labels neither sorted nor contiguous
    folds = min(5, int(np.unique(y, return_counts=True)[1].min()))
    splitter = model_selection.StratifiedKFold(folds, shuffle=True, random_state=seed)
    ref = np.empty(len(y), dtype=np.int64)
    for i, (_, test) in enumerate(splitter.split(x, y)):
        ref[test] = i
    assert (stratified_folds(y, folds, seed) == ref).all()


def _sklearn_oof(x: np.ndarray, y: np.ndarray, model) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictions (N,) and the gap (N,) between each item's two best probabilities."""
    model_selection = pytest.importorskip("sklearn.model_selection")
    folds = min(5, int(np.unique(y, return_counts=True)[1].min()))
    splitter = model_selection.StratifiedKFold(folds, shuffle=True, random_state=0)
    pred, x = np.empty_like(y), x.astype(np.float64)  # scikit-learn fits float32 in float32
    margin = np.empty(len(y))
    for train, test in splitter.split(x, y):
        fitted = model(len(train)).fit(x[train], y[train])
        pred[test] = fitted.predict(x[test])
        top2 = np.sort(fitted.predict_proba(x[test]), axis=1)[:, -2:]
        margin[test] = top2[:, 1] - top2[:, 0]
    return pred, margin


@pytest.mark.parametrize("name", DATASETS)
def test_cross_validated_linear_probe_equals_sklearns(name):
    pytest.importorskip("sklearn")
    from sklearn.linear_model import LogisticRegression

    x, y = _dataset(name)
    y = np.array([4, 9, 1, 6, 2, 8, 0, 3, 5, 7])[y]  # predictions come back as the labels
    ref, margin = _sklearn_oof(
        x, y, lambda n: LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000)
    )
    pred = cross_val_predictions(x, y, "linear")  # at the probe's tolerance, 1e-6
    # identical item by item, but for near ties (two classes within 1e-5 in probability: one
    # item of "balanced") that a fit to a finite tolerance may break the other way
    near_tie = margin < 1e-5
    assert near_tie.sum() <= 1
    assert (pred == ref)[~near_tie].all()
    assert 0.3 < (pred == y).mean() < 1.0  # neither trivial nor perfect: a test that can fail


@pytest.mark.parametrize("name", DATASETS)
def test_cross_validated_knn_equals_sklearns(name):
    pytest.importorskip("sklearn")
    from sklearn.neighbors import KNeighborsClassifier

    x, y = _dataset(name)
    ref, _ = _sklearn_oof(
        x,
        y,
        lambda n: KNeighborsClassifier(n_neighbors=min(10, n), metric="cosine", algorithm="brute"),
    )
    assert (cross_val_predictions(x, y, "knn") == ref).all()


def test_knn_tied_vote_goes_to_smallest_class():
    x_train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    y_train = np.array([1, 1, 0, 0])
    # two neighbours of each class among the 4: tie, class 0 wins
    assert knn_predict(x_train, y_train, np.array([[1.0, 1.0]]), 4, 2).tolist() == [0]
    assert knn_predict(x_train, y_train, np.array([[1.0, 0.2]]), 3, 2).tolist() == [1]


def test_probe_metrics_on_imbalanced_classes():
    x, y = _dataset("imbalanced")
    m = probe_metrics(x, y)
    pred = cross_val_predictions(x, y, "linear")
    assert m["linear_probe_accuracy"] == pytest.approx((pred == y).mean())
    per_class = [(pred[y == c] == c).mean() for c in np.unique(y)]
    assert m["linear_probe_balanced_accuracy"] == pytest.approx(np.mean(per_class))


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown probe model"):
        cross_val_predictions(np.eye(4), np.array([0, 0, 1, 1]), "svm")


def test_eval_with_labels_imports_neither_sklearn_nor_scipy(tmp_path: Path):
    """Nor torch's compiler stack: their imports cost more than a small evaluation itself (see
    modalign.eval.probe)."""
    x, y = _dataset("balanced")
    np.savez(
        tmp_path / "e.npz",
        image=x,
        text=x[::-1].copy(),
        label=y,
        classes=np.eye(10, x.shape[1], dtype=np.float32),
    )
    code = (
        "import sys, json; from modalign.cli import main; "
        f"rc = main(['eval', '--embeddings', {str(tmp_path / 'e.npz')!r}, '--out', "
        f"{str(tmp_path / 'out')!r}, '--bootstrap', '50']); "
        "print(json.dumps([rc, sorted(m for m in ('sklearn', 'scipy', 'torch._dynamo', 'sympy') "
        "if m in sys.modules)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rc, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    assert rc == 0 and heavy == []
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0 < metrics["all/image/linear_probe_accuracy"] <= 1
