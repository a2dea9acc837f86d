"""Cross-modal generalisation: a classifier trained on one modality's codes, tested on another's.

The evaluation of CMG: the unified representation is frozen; a classifier is fitted on the
time-pooled quantised features of modality A (with labels) and applied to modality B's, whose
labels are never used for training. Beside it: the same classifier fitted on B's own labelled
train rows (an upper bound) and the majority class of A's train labels (chance).

Example:
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 20)
    >>> feats = {"a": y[:, None] + 0.1 * rng.normal(size=(40, 2)), "b": y[:, None] + 0.1 * rng.normal(size=(40, 2))}
    >>> rows = transfer_direction(feats, {"a": y, "b": y}, {"a": np.arange(40) % 2 == 0, "b": np.arange(40) % 2 == 0}, "a", "b")
    >>> [(r["kind"], r["accuracy"]) for r in rows]
    [('cross_modal', 1.0), ('upper_bound', 1.0), ('chance', 0.5)]

References:
    Xia et al. "Achieving Cross Modal Generalization with Multimodal Unified Representation",
    NeurIPS 2023.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modalign.quantize.model import UnifiedModel


def encode_items(
    model: UnifiedModel, modality: str, features: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Quantise items of one modality with a trained model (no codebook update).

    Args:
        model: a trained model in eval mode. modality: one of its modalities.
        features: (N, T, F) raw features (as in training). batch_size: items per forward.

    Returns:
        ((N, T', D) float32 quantised features, (N, T') int64 codes); T' is T, or 1 for FCID.
    """
    model.eval()
    device = model.codebook.embedding.device
    quantized, codes = [], []
    with torch.no_grad():
        for start in range(0, len(features), batch_size):
            x = torch.as_tensor(features[start : start + batch_size], dtype=torch.float32)
            q, c = model.encode(modality, x.to(device))
            quantized.append(q.cpu().numpy())
            codes.append(c.cpu().numpy())
    return np.concatenate(quantized).astype(np.float32), np.concatenate(codes).astype(np.int64)


def pooled_features(quantized: np.ndarray, dimensions: np.ndarray | None = None) -> np.ndarray:
    """Mean over time of the quantised features, restricted to TOC's dimensions if given.

    Args:
        quantized: (N, T, D). dimensions: (K,) kept dimensions or None for all.

    Returns:
        (N, K) or (N, D).

    Example:
        >>> pooled_features(np.arange(8.0).reshape(1, 2, 4), np.array([0, 3])).tolist()
        [[2.0, 5.0]]
    """
    pooled = quantized.mean(axis=1)
    return pooled if dimensions is None else pooled[:, dimensions]


def probe_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, seed: int = 0
) -> float:
    """Accuracy on (test_x, test_y) of a logistic regression fitted on standardised train_x.

    Example:
        >>> x = np.array([[0.0], [1.0], [0.1], [0.9]]); y = np.array([0, 1, 0, 1])
        >>> probe_accuracy(x, y, x, y)
        1.0
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(train_y)) < 2:
        return float(np.mean(test_y == train_y[0]))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    clf.fit(train_x, train_y)
    return float(np.mean(clf.predict(test_x) == test_y))


def chance_accuracy(train_y: np.ndarray, test_y: np.ndarray) -> float:
    """Accuracy of always answering the most frequent train label.

    Example:
        >>> chance_accuracy(np.array([1, 1, 2]), np.array([1, 2, 2, 2]))
        0.25
    """
    values, counts = np.unique(train_y, return_counts=True)
    return float(np.mean(test_y == values[np.argmax(counts)]))


def transfer_direction(
    features: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    train: Mapping[str, np.ndarray],
    source: str,
    target: str,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Cross-modal accuracy source -> target, the labelled-target upper bound, and chance.

    Args:
        features: modality -> (N_m, K) pooled code features. labels: modality -> (N_m,) labels.
        train: modality -> (N_m,) bool, True for train rows (the rest are test rows).
        source, target: the modality trained on and the one tested on.

    Returns:
        Three dicts with keys direction, kind (cross_modal | upper_bound | chance), accuracy,
        n_train, n_test.
    """
    xs, ys, tr_s = features[source], labels[source], train[source]
    xt, yt, tr_t = features[target], labels[target], train[target]
    direction = f"{source}_to_{target}"
    results = [
        (
            "cross_modal",
            probe_accuracy(xs[tr_s], ys[tr_s], xt[~tr_t], yt[~tr_t], seed),
            int(tr_s.sum()),
        ),
        (
            "upper_bound",
            probe_accuracy(xt[tr_t], yt[tr_t], xt[~tr_t], yt[~tr_t], seed),
            int(tr_t.sum()),
        ),
        ("chance", chance_accuracy(ys[tr_s], yt[~tr_t]), int(tr_s.sum())),
    ]
    return [
        {
            "direction": direction,
            "kind": kind,
            "accuracy": acc,
            "n_train": n,
            "n_test": int((~tr_t).sum()),
        }
        for kind, acc, n in results
    ]


def write_transfer_report(path: str | Path, rows: Sequence[Mapping[str, Any]], title: str) -> None:
    """A self-contained HTML report: the accuracy table and a bar chart per direction."""
    from modalign.report.html import Section, figure_html, subplots, table_html, write_report

    directions = list(dict.fromkeys(str(r["direction"]) for r in rows))
    kinds = ["cross_modal", "upper_bound", "chance"]
    table = table_html(
        [[r["direction"], r["kind"], r["accuracy"], r["n_train"], r["n_test"]] for r in rows],
        ["direction", "classifier", "accuracy", "train rows", "test rows"],
    )
    fig, (ax,) = subplots(1, figsize=(6, 3.2))
    width = 0.8 / len(kinds)
    for k, kind in enumerate(kinds):
        acc = [
            next(
                (float(r["accuracy"]) for r in rows if r["direction"] == d and r["kind"] == kind),
                np.nan,
            )
            for d in directions
        ]
        ax.bar(np.arange(len(directions)) + k * width, acc, width, label=kind.replace("_", " "))
    ax.set_xticks(np.arange(len(directions)) + width, directions)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend()
    note = (
        "<p class='note'>cross modal: classifier fitted on the source modality's codes (with labels), "
        "tested on the target modality's test rows, whose labels are never used for fitting. "
        "upper bound: fitted on the target's own labelled train rows. chance: the most frequent "
        "source train label.</p>"
    )
    write_report(
        path,
        title,
        [Section("Cross-modal generalisation", note + table + figure_html(fig, "accuracy"))],
    )
