"""The ``exact`` backend: every vector in memory, searched with the evaluation's exact top-k.

Search is :func:`modalign.eval.topk.top_k_tensor` (blocked queries, tiled gallery, reused
buffers, running top-k merge): exact results, lower label position first among equal scores,
extra memory O(block x tile) per worker. ``remove`` compacts the arrays. Saved as two ``.npy``
files (vectors and labels).

Example:
    >>> b = ExactBackend.build(np.array([7, 9]), np.eye(2, dtype=np.float32), {})
    >>> b.search(np.array([[0.0, 1.0]], dtype=np.float32), 1)[1].tolist()
    [[9]]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from modalign.eval.topk import top_k_tensor
from modalign.index.base import VectorBackend, as_labels, register_backend
from modalign.io import atomic_path


@register_backend("exact")
class ExactBackend(VectorBackend):
    """Exact inner-product search over (N, D) float32 vectors kept in memory."""

    def __init__(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self.labels = as_labels(labels)  # (N,)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (N, D)
        self._row = {int(lab): i for i, lab in enumerate(self.labels)}

    @classmethod
    def build(
        cls, labels: np.ndarray, vectors: np.ndarray, options: dict[str, Any]
    ) -> ExactBackend:
        return cls(labels, vectors)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        n = len(self.labels)
        self.labels = np.concatenate([self.labels, as_labels(labels)])
        self.vectors = np.concatenate([self.vectors, np.asarray(vectors, np.float32)])
        self._row.update({int(lab): n + i for i, lab in enumerate(as_labels(labels))})

    def remove(self, labels: np.ndarray) -> None:
        keep = ~np.isin(self.labels, as_labels(labels))
        self.__init__(self.labels[keep], self.vectors[keep])  # type: ignore[misc]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.labels) == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        scores, rows = top_k_tensor(q, torch.from_numpy(self.vectors), k)  # (Q, k') each
        return scores.numpy(), self.labels[rows.numpy()]

    def reconstruct(self, label: int) -> np.ndarray:
        return self.vectors[self._row[int(label)]].copy()

    def save(self, stem: Path) -> None:
        for suffix, array in ((".vectors.npy", self.vectors), (".labels.npy", self.labels)):
            with atomic_path(stem.with_name(stem.name + suffix)) as tmp, open(tmp, "wb") as f:
                np.save(f, array)

    @classmethod
    def load(cls, stem: Path) -> ExactBackend:
        vectors = np.load(stem.with_name(stem.name + ".vectors.npy"))
        return cls(np.load(stem.with_name(stem.name + ".labels.npy")), vectors)

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self) -> dict[str, Any]:
        return {"kind": "exact"}
