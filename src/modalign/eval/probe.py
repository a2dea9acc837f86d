"""Supervised read-outs of frozen embeddings: a linear probe and k-nearest-neighbour accuracy.

Both are measured by stratified k-fold cross-validation over the labelled items of one modality
(no train/test split is needed, so any embeddings file can be probed); every item is predicted
exactly once, by a model that did not see it.

The linear probe is an L2-regularised logistic regression (multinomial for three or more
classes, binomial for two; the intercept is not penalised) fitted by L-BFGS with a strong-Wolfe
line search in torch, in float64, with the gradient written out. It minimises the objective of
scikit-learn's ``LogisticRegression(C=...)`` and the folds are those of scikit-learn's
``StratifiedKFold(shuffle=True)``, so the numbers are scikit-learn's (the tests check both
against it); scikit-learn itself is not imported: with the SciPy parts it pulls in, its import
took about 1.5 s, more than the rest of a small evaluation.

Example:
    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([rng.normal(1, 0.1, (20, 2)), rng.normal(-1, 0.1, (20, 2))])
    >>> y = np.repeat([0, 1], 20)
    >>> probe_metrics(x, y, folds=4)
    {'linear_probe_accuracy': 1.0, 'linear_probe_balanced_accuracy': 1.0, 'knn_accuracy': 1.0, 'knn_balanced_accuracy': 1.0}

References:
    Alain & Bengio, 2016, "Understanding intermediate layers using linear classifier probes";
    Wu et al., 2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination"
    (k-NN evaluation of embeddings); Nocedal & Wright, 2006, "Numerical Optimization", ch. 7
    (L-BFGS) and 3.1 (strong Wolfe conditions).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from modalign.eval.zeroshot import per_class_accuracy
from modalign.threads import step_threads, threads_for_flops

#: Inverse L2 strength of the linear probe (scikit-learn's ``C``; its default, as before).
PROBE_C = 1.0


def stratified_folds(y: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """The test fold (N,) of every item: scikit-learn's ``StratifiedKFold(folds, shuffle=True,
    random_state=seed)``, reproduced.

    Each class's items are dealt to the folds round-robin over the label-sorted items (so fold
    sizes differ by at most one per class), then each class's fold assignment is shuffled by
    ``np.random.RandomState(seed)``, classes in order of first appearance.

    Args:
        y: (N,) labels. folds: number of folds (at most the smallest class's count).
        seed: shuffling seed.

    Returns:
        int (N,) fold index in ``[0, folds)`` of each item.

    Example:
        >>> stratified_folds(np.array([0, 0, 1, 1, 1, 0]), 2).tolist()
        [1, 0, 1, 0, 1, 0]
    """
    _, first, inverse = np.unique(y, return_index=True, return_inverse=True)
    order = np.unique(first, return_inverse=True)[1]  # class rank by first appearance
    encoded = order[inverse.reshape(-1)]
    n_classes = len(first)
    dealt = np.sort(encoded)
    allocation = np.stack(  # (folds, C) items of each class in each fold
        [np.bincount(dealt[i::folds], minlength=n_classes) for i in range(folds)]
    )
    rng = np.random.RandomState(seed)
    test_fold = np.empty(len(encoded), dtype=np.int64)
    for c in range(n_classes):
        of_class = np.arange(folds).repeat(allocation[:, c])
        rng.shuffle(of_class)
        test_fold[encoded == c] = of_class
    return test_fold


@dataclass(frozen=True)
class LogisticModel:
    """A fitted logistic regression: ``coef`` (D, K) and ``intercept`` (K,) in float64.

    K is the number of classes, or 1 for two classes (the logit of the second class; the
    first's is 0), as scikit-learn stores them (transposed).
    """

    coef: torch.Tensor
    intercept: torch.Tensor

    def logits(self, x: np.ndarray) -> torch.Tensor:
        """Class logits (N, C) of items ``x`` (N, D) (C = 2 for a binomial model)."""
        z = torch.as_tensor(np.asarray(x, dtype=np.float64)) @ self.coef + self.intercept
        return torch.cat([torch.zeros_like(z), z], dim=1) if z.shape[1] == 1 else z

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) of items ``x`` (N, D)."""
        return torch.softmax(self.logits(x), dim=1).numpy()

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class index (N,) in ``[0, C)`` of items ``x`` (N, D): the largest logit."""
        return self.logits(x).argmax(dim=1).numpy()


class _LBFGS(torch.optim.LBFGS):
    """torch's L-BFGS, built without importing ``torch._dynamo``.

    ``Optimizer.add_param_group`` is wrapped by ``torch._disable_dynamo``, which imports the
    compiler stack (sympy and all: 1.8 s on a busy 2-core machine, more than the whole probe) the
    first time any optimizer is built. The wrapped function is called directly here; where a
    torch lacks it, the wrapper (and the import) is used.
    """

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        plain = getattr(torch.optim.Optimizer.add_param_group, "__wrapped__", None)
        if plain is None:
            super().add_param_group(param_group)
        else:
            plain(self, param_group)


def fit_logistic(
    x: np.ndarray, y: np.ndarray, c: float = PROBE_C, max_iter: int = 1000, tol: float = 1e-6
) -> LogisticModel:
    """L2-regularised logistic regression by L-BFGS (strong-Wolfe line search), deterministic.

    Minimises scikit-learn's objective divided by N, ``mean_i(-log p(y_i | x_i)) + ||W||^2 /
    (2 C N)`` (intercepts unpenalised), multinomial (softmax) for three or more classes and
    binomial (sigmoid, one weight vector) for two, from zero weights.

    Args:
        x: (N, D) features. y: (N,) class indices in ``[0, C)``, C >= 2.
        c: inverse regularisation strength. max_iter: L-BFGS iterations at most.
        tol: stop when the largest gradient entry falls below this (scikit-learn's default,
            which the probe used before, is 1e-4 on the same gradient; the tests use 1e-10).

    Returns:
        The :class:`LogisticModel`.

    Example:
        >>> x = np.array([[-2.0], [-1.0], [1.0], [2.0]])
        >>> m = fit_logistic(x, np.array([0, 0, 1, 1]))
        >>> m.predict(x).tolist(), round(float(m.coef[0, 0]), 4)
        ([0, 0, 1, 1], 1.0066)
    """
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))  # (N, D)
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64))
    n, dim = xt.shape
    n_classes = int(yt.max()) + 1
    k = 1 if n_classes == 2 else n_classes
    target = torch.nn.functional.one_hot(yt, n_classes).to(xt.dtype)[:, -k:]  # (N, K)
    coef = torch.zeros(dim, k, dtype=xt.dtype, requires_grad=True)
    intercept = torch.zeros(k, dtype=xt.dtype, requires_grad=True)
    ridge = 1.0 / (c * n)

    def closure() -> torch.Tensor:
        # the gradient in closed form (no autograd graph): d/dz of the mean log-loss is (P - Y)/N
        with torch.no_grad():
            z = xt @ coef + intercept  # (N, K)
            if k == 1:  # binomial: log(1 + e^z) - y z
                loss = (torch.nn.functional.softplus(z) - target * z).sum()
                resid = torch.sigmoid(z) - target
            else:
                loss = (torch.logsumexp(z, dim=1) - (target * z).sum(dim=1)).sum()
                resid = torch.softmax(z, dim=1) - target
            coef.grad = (xt.T @ resid) / n + ridge * coef  # (D, K)
            intercept.grad = resid.mean(dim=0)
            return loss / n + 0.5 * ridge * (coef * coef).sum()

    opt = _LBFGS(
        [coef, intercept],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tol,
        tolerance_change=0.0,  # stop on the gradient only, not on a small step
        history_size=10,  # as scikit-learn's L-BFGS-B (maxcor)
        line_search_fn="strong_wolfe",
    )
    with step_threads(threads_for_flops(2.0 * n * dim * k)):  # one thread for small fits
        opt.step(closure)
    return LogisticModel(coef.detach(), intercept.detach())


def knn_predict(
    x_train: np.ndarray, y_train: np.ndarray, x: np.ndarray, k: int, n_classes: int
) -> np.ndarray:
    """Majority vote (N,) of the ``k`` most cosine-similar training items of each row of ``x``.

    Neighbours are ranked by similarity (ties: the earlier training item first); a tied vote
    goes to the smallest class index, as in scikit-learn's ``KNeighborsClassifier``.

    Args:
        x_train: (M, D) items. y_train: (M,) class indices in ``[0, n_classes)``.
        x: (N, D) queries. k: neighbours (at most M).

    Returns:
        int (N,) predicted class index of each query.

    Example:
        >>> knn_predict(np.eye(3), np.array([0, 1, 1]), np.array([[1.0, 0.1, 0.0]]), 1, 2).tolist()
        [0]
    """
    a = x_train / np.maximum(np.linalg.norm(x_train, axis=1, keepdims=True), 1e-12)
    b = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    neighbours = np.argsort(-(b @ a.T), axis=1, kind="stable")[:, :k]  # (N, k)
    votes = np.zeros((len(x), n_classes), dtype=np.int64)
    np.add.at(votes, (np.arange(len(x))[:, None], y_train[neighbours]), 1)
    return votes.argmax(axis=1)


#: Out-of-fold predictor of each probe model: (x_train, y_train, x_test, k, n_classes) -> (N,).
FOLD_PREDICTORS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray, int, int], np.ndarray]] = {
    "linear": lambda xs, ys, xt, k, c: fit_logistic(xs, ys).predict(xt),
    "knn": lambda xs, ys, xt, k, c: knn_predict(xs, ys, xt, min(k, len(ys)), c),
}


def cross_val_predictions(
    x: np.ndarray, y: np.ndarray, model: str, folds: int = 5, k: int = 10, seed: int = 0
) -> np.ndarray:
    """Out-of-fold class predictions (N,) of a ``"linear"`` or ``"knn"`` model.

    The folds are stratified (:func:`stratified_folds`); ``folds`` is lowered to the size of the
    smallest class (at least 2). k-NN uses cosine similarity and a majority vote.
    """
    if model not in FOLD_PREDICTORS:
        raise ValueError(f"unknown probe model {model!r}; use 'linear' or 'knn'")
    y = np.asarray(y)
    classes, encoded = np.unique(y, return_inverse=True)
    encoded = encoded.reshape(-1)
    smallest = int(np.bincount(encoded).min())
    if smallest < 2:
        raise ValueError("every class needs at least 2 labelled items for cross-validation")
    test_fold = stratified_folds(encoded, min(folds, smallest), seed)
    pred = np.empty_like(encoded)
    for fold in range(int(test_fold.max()) + 1):
        test = test_fold == fold
        predict = FOLD_PREDICTORS[model]
        pred[test] = predict(x[~test], encoded[~test], x[test], k, len(classes))
    return classes[pred]


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
    out = {}
    # the largest product, a fold's (N, D) x (D, C) logits or (N, D) x (D, N) similarities: one
    # thread for a few hundred items (each L-BFGS iteration is a handful of tiny products)
    flops = 2.0 * len(x) * x.shape[1] * max(len(x), len(np.unique(y)))
    with step_threads(threads_for_flops(flops), blas=True):
        for name, model in (("linear_probe", "linear"), ("knn", "knn")):
            pred = cross_val_predictions(x, y, model, folds, k, seed)
            out[f"{name}_accuracy"] = float((pred == y).mean())
            out[f"{name}_balanced_accuracy"] = float(
                np.mean(list(per_class_accuracy(y, pred).values()))
            )
    return out
