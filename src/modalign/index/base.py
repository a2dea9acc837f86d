"""What an index is made of: the query-encoder protocol, vector backends and their registry.

An :class:`~modalign.index.store.Index` keeps items (id, modality, metadata) and, per modality,
one :class:`VectorBackend` holding that modality's vectors under int64 labels. Backends are
registered by name in :data:`BACKENDS` (``exact`` here, ``flat``, ``ivf``, ``hnsw`` and ``ivfpq``
in :mod:`modalign.index.faiss`); a new one subclasses :class:`VectorBackend`::

    @BACKENDS.register("mine")
    class MyBackend(VectorBackend):
        @classmethod
        def build(cls, labels, vectors, options): ...
        ...

Scores are inner products of L2-normalised rows (cosine similarity); larger is better.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np

from modalign.registry import Registry

InputKind = Literal["text", "file", "array"]


@runtime_checkable
class QueryEncoder(Protocol):
    """A trained model as search needs it: raw items of any modality in, unit vectors out.

    ``modalign.model.load.load(run_dir)`` returns one; tests build a small real one.

    Attributes:
        modalities: the modalities it encodes.
        model_id: a fingerprint of the weights; an index built with one model refuses queries
            embedded by another.
    """

    modalities: list[str]
    model_id: str

    def input_kind(self, modality: str) -> InputKind:
        """``"text"`` (strings), ``"file"`` (file paths) or ``"array"`` ((N, F) features)."""
        ...

    def encode(
        self, modality: str, items: Any, batch_size: int = ..., progress: bool = ...
    ) -> np.ndarray:
        """(N, D) float32 unit rows for ``items`` (texts, file paths or an (N, F) array)."""
        ...


@dataclass(frozen=True)
class Hit:
    """One search result: the item's id and modality and its score (cosine, higher is better)."""

    id: str
    modality: str
    score: float


B = TypeVar("B", bound="VectorBackend")


class VectorBackend(ABC):
    """One modality's vectors under int64 labels: build, add, remove, search, save, load.

    ``search`` returns (Q, k') scores and labels, best first; rows with fewer than k' results are
    padded with label -1 (an approximate index may find fewer than k).
    """

    @classmethod
    @abstractmethod
    def build(cls: type[B], labels: np.ndarray, vectors: np.ndarray, options: dict[str, Any]) -> B:
        """A backend over (N, D) ``vectors`` (training on them where the backend needs it)."""

    @abstractmethod
    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        """Add (N, D) ``vectors`` under int64 ``labels`` (N,)."""

    @abstractmethod
    def remove(self, labels: np.ndarray) -> None:
        """Drop the vectors under ``labels``."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, D) queries -> (scores float32 (Q, k'), labels int64 (Q, k')), k' = min(k, len)."""

    @abstractmethod
    def reconstruct(self, label: int) -> np.ndarray:
        """The stored vector (D,) of ``label`` (approximate for compressed backends)."""

    @abstractmethod
    def save(self, stem: Path) -> None:
        """Write to files named ``stem`` + a suffix (the caller makes the write atomic)."""

    @classmethod
    @abstractmethod
    def load(cls: type[B], stem: Path) -> B:
        """Read what :meth:`save` wrote under ``stem``."""

    @abstractmethod
    def __len__(self) -> int: ...

    def describe(self) -> dict[str, Any]:
        """Parameters worth recording (kind, list counts, probes, ...)."""
        return {}


BACKENDS: Registry[type[VectorBackend]] = Registry("index backend")


def register_backend(name: str) -> Callable[[type[B]], type[B]]:
    """Register a :class:`VectorBackend` subclass under ``name`` (typed wrapper of the registry)."""
    return BACKENDS.register(name)  # type: ignore[return-value]


def normalize_rows(x: np.ndarray, what: str) -> np.ndarray:
    """float32 (N, D) copy of ``x`` with unit rows; a zero or non-finite row is a ValueError.

    Example:
        >>> normalize_rows(np.array([[3.0, 4.0]]), "vectors").tolist()
        [[0.6000000238418579, 0.800000011920929]]
    """
    x = np.array(x, dtype=np.float32, ndmin=2, copy=True)
    if x.ndim != 2:
        raise ValueError(f"{what} must be 2-D (rows, dim), got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    bad = np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0))
    if len(bad):
        raise ValueError(f"{what} row {int(bad[0])} is zero or not finite")
    x /= norms
    return x


def as_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """int64 (N,) labels."""
    return np.ascontiguousarray(np.asarray(labels, dtype=np.int64).ravel())
