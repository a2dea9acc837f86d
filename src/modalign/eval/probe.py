"""Supervised read-outs of frozen embeddings: a linear probe and k-nearest-neighbour accuracy.

Both are measured by stratified k-fold cross-validation over the labelled items of one modality
(no train/test split is needed, so any embeddings file can be probed); every item is predicted
exactly once, by a model that did not see it.

Example:
    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([rng.normal(1, 0.1, (20, 2)), rng.normal(-1, 0.1, (20, 2))])
    >>> y = np.repeat([0, 1], 20)
    >>> probe_metrics(x, y, folds=4)
    {'linear_probe_accuracy': 1.0, 'linear_probe_balanced_accuracy': 1.0, 'knn_accuracy': 1.0, 'knn_balanced_accuracy': 1.0}

References:
    Alain & Bengio, 2016, "Understanding intermediate layers using linear classifier probes";
    Wu et al., 2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination"
    (k-NN evaluation of embeddings).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modalign.eval.zeroshot import per_class_accuracy
from modalign.threads import step_threads

# scikit-learn is imported where a probe runs: importing it (and the SciPy parts it pulls in)
# costs about 1.5 s, more than a whole evaluation of a few hundred unlabelled rows.


def cross_val_predictions(
    x: np.ndarray, y: np.ndarray, model: str, folds: int = 5, k: int = 10, seed: int = 0
) -> np.ndarray:
    """Out-of-fold class predictions (N,) of a ``"linear"`` or ``"knn"`` model.

    The folds are stratified; ``folds`` is lowered to the size of the smallest class (at least 2).
    k-NN uses cosine similarity (Euclidean distance on normalised rows) and a majority vote.
    """
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y)
    smallest = int(np.bincount(np.unique(y, return_inverse=True)[1]).min())
    if smallest < 2:
        raise ValueError("every class needs at least 2 labelled items for cross-validation")
    splitter = StratifiedKFold(n_splits=min(folds, smallest), shuffle=True, random_state=seed)
    pred = np.empty_like(y)
    for train, test in splitter.split(x, y):
        clf = _model(model, k, len(train))
        pred[test] = clf.fit(x[train], y[train]).predict(x[test])
    return pred


def _model(model: str, k: int, n_train: int) -> Any:
    """An unfitted scikit-learn classifier (``LogisticRegression`` or ``KNeighborsClassifier``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    if model == "linear":
        return LogisticRegression(max_iter=2000, C=1.0)
    if model == "knn":
        return KNeighborsClassifier(n_neighbors=min(k, n_train), metric="cosine", algorithm="brute")
    raise ValueError(f"unknown probe model {model!r}; use 'linear' or 'knn'")


def probe_metrics(
    x: np.ndarray, y: np.ndarray, folds: int = 5, k: int = 10, seed: int = 0
) -> dict[str, float]:
    """Cross-validated accuracy and balanced accuracy of a linear probe and of k-NN.

    Args:
        x: (N, D) embeddings of one modality. y: (N,) int labels.
        folds: cross-validation folds. k: neighbours for k-NN. seed: fold shuffling.

    Returns:
        ``{"linear_probe_accuracy", "linear_probe_balanced_accuracy", "knn_accuracy",
        "knn_balanced_accuracy"}``.
    """
    import sklearn.linear_model  # noqa: F401 (loads SciPy's BLAS before the limit below)
    import torch

    out = {}
    # SciPy's BLAS, loaded with scikit-learn after a caller limited the others, follows torch's
    # intra-op setting (one thread for a small evaluation: 10x less time than two on a busy
    # machine; the fits are the same up to rounding)
    with step_threads(torch.get_num_threads(), blas=True):
        for name, model in (("linear_probe", "linear"), ("knn", "knn")):
            pred = cross_val_predictions(x, y, model, folds, k, seed)
            out[f"{name}_accuracy"] = float((pred == y).mean())
            out[f"{name}_balanced_accuracy"] = float(
                np.mean(list(per_class_accuracy(y, pred).values()))
            )
    return out
