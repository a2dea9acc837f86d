"""The one type everything downstream of the model speaks: embeddings per modality.

Row ``i`` of every array is item ``i``. A row of NaN means the modality is missing for that item.
Rows that are present are L2-normalised. Optional ``groups`` mark items that are positives of each
other (several captions of one image); without groups, item ``i`` is positive only with item ``i``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from modalign.errors import DataError


@dataclass(frozen=True)
class EmbeddingSet:
    """Embeddings of N items in several modalities.

    Args:
        embeddings: modality name -> float32 array (N, D); NaN rows mark missing items.
        ids: N item ids.
        groups: optional int64 (N,) group id per item; equal ids are positives of each other.
        labels: optional int64 (N,) class label per item (zero-shot, probes).

    Example:
        >>> e = EmbeddingSet({"a": np.eye(2, dtype=np.float32), "b": np.eye(2, dtype=np.float32)}, ids=["x", "y"])
        >>> e.modalities, len(e)
        (['a', 'b'], 2)
        >>> e.present("a").tolist()
        [True, True]
    """

    embeddings: dict[str, np.ndarray]
    ids: list[str]
    groups: np.ndarray | None = None
    labels: np.ndarray | None = None
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.ids)
        for name, arr in self.embeddings.items():
            if arr.ndim != 2 or arr.shape[0] != n:
                raise DataError(f"embeddings[{name!r}] has shape {arr.shape}, expected ({n}, D)")
        for name, extra in (("groups", self.groups), ("labels", self.labels)):
            if extra is not None and extra.shape != (n,):
                raise DataError(f"{name} has shape {extra.shape}, expected ({n},)")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def modalities(self) -> list[str]:
        """Modality names, in insertion order."""
        return list(self.embeddings)

    def present(self, modality: str) -> np.ndarray:
        """Boolean (N,) mask of items that have ``modality``."""
        return ~np.isnan(self.embeddings[modality]).any(axis=1)

    def group_ids(self) -> np.ndarray:
        """Group id per item: ``groups`` if given, else each item its own group."""
        return self.groups if self.groups is not None else np.arange(len(self), dtype=np.int64)
