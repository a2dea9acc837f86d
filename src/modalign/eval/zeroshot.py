"""Zero-shot classification of any modality against class prototypes in the shared space.

A class prototype is the embedding of the class's name (in a text-like modality) written into
prompt templates ("a photo of a {}."). Several templates are *ensembled*: each template's embedding
is L2-normalised, the normalised embeddings are averaged over templates, and the mean is
renormalised (CLIP's prompt ensembling). Items are classified by their most similar prototype.

Example:
    >>> protos = np.eye(3, dtype=np.float32)
    >>> x = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.9]], dtype=np.float32)
    >>> m = zero_shot_metrics(x, np.array([0, 1]), protos, ks=(1, 2))
    >>> m["zero_shot_top1"], m["zero_shot_top2"], m["zero_shot_balanced_accuracy"]
    (0.5, 1.0, 0.5)

References:
    Radford et al., 2021, "Learning Transferable Visual Models From Natural Language Supervision",
    section 3.1.4 (prompt engineering and ensembling).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ensemble_prototypes(class_embeddings: np.ndarray) -> np.ndarray:
    """Class prototypes (C, D) from (C, D) or per-template (T, C, D) embeddings.

    Args:
        class_embeddings: (C, D) prototypes, or (T, C, D) one embedding per template and class.

    Returns:
        float32 (C, D) unit-norm prototypes: mean over templates of normalised rows, renormalised.

    Example:
        >>> t = np.array([[[1.0, 0.0]], [[0.0, 3.0]]])  # 2 templates, 1 class
        >>> [round(float(v), 4) for v in ensemble_prototypes(t)[0]]
        [0.7071, 0.7071]
    """
    x = np.asarray(class_embeddings, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise ValueError(f"class embeddings must be (C, D) or (T, C, D), got shape {x.shape}")
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    mean = x.mean(axis=0)  # (C, D)
    return (mean / np.linalg.norm(mean, axis=-1, keepdims=True)).astype(np.float32)


def zero_shot_scores(x: np.ndarray, class_embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity (N, C) of items ``x`` (N, D) to the ensembled class prototypes."""
    return np.asarray(x, dtype=np.float32) @ ensemble_prototypes(class_embeddings).T


def classification_metrics(
    labels: np.ndarray, scores: np.ndarray, ks: Sequence[int] = (1, 5), prefix: str = ""
) -> dict[str, float]:
    """Top-k accuracy and balanced accuracy of class ``scores`` (N, C) against ``labels`` (N,).

    ``top{k}`` counts an item correct when its label is among its ``k`` best-scoring classes
    (``k`` is capped at C); balanced accuracy is the mean over the classes present in ``labels``
    of their top-1 recall.

    Example:
        >>> s = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
        >>> classification_metrics(np.array([0, 1, 1]), s, ks=(1,))
        {'top1': 0.6666666666666666, 'balanced_accuracy': 0.75}
    """
    labels = np.asarray(labels)
    order = np.argsort(-scores, axis=1, kind="stable")
    out = {}
    for k in ks:
        hit = (order[:, : min(k, scores.shape[1])] == labels[:, None]).any(axis=1)
        out[f"{prefix}top{k}"] = float(hit.mean())
    out[f"{prefix}balanced_accuracy"] = float(
        np.mean(list(per_class_accuracy(labels, order[:, 0]).values()))
    )
    return out


def per_class_accuracy(labels: np.ndarray, predictions: np.ndarray) -> dict[int, float]:
    """Top-1 recall of each class present in ``labels``: {class index: accuracy}.

    Example:
        >>> per_class_accuracy(np.array([0, 0, 1]), np.array([0, 1, 1]))
        {0: 0.5, 1: 1.0}
    """
    return {int(c): float((predictions[labels == c] == c).mean()) for c in np.unique(labels)}


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (C, C): row = true class, column = predicted class.

    Example:
        >>> confusion_matrix(np.array([0, 0, 1]), np.array([0, 1, 1]), 2).tolist()
        [[1, 1], [0, 1]]
    """
    out = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(out, (np.asarray(labels), np.asarray(predictions)), 1)
    return out


def zero_shot_metrics(
    x: np.ndarray, labels: np.ndarray, class_embeddings: np.ndarray, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Zero-shot ``zero_shot_top{k}`` and ``zero_shot_balanced_accuracy`` of items ``x`` (N, D).

    Args:
        x: (N, D) normalised embeddings of one modality (present rows only).
        labels: (N,) class indices into the prototypes.
        class_embeddings: (C, D) or (T, C, D); see :func:`ensemble_prototypes`.
        ks: top-k cut-offs.
    """
    scores = zero_shot_scores(x, class_embeddings)
    labels = np.asarray(labels)
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(
            f"labels must lie in [0, {scores.shape[1]}), got {labels.min()}..{labels.max()}"
        )
    return classification_metrics(labels, scores, ks, prefix="zero_shot_")
