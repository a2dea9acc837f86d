"""Temporal features per modality on disk, and paired rows of a manifest read from them.

On-disk form (one file per modality): an ``.npz`` holding

* ``features``: float array (N, T, F): N items, T steps (frames, segments; 1 for a text), F
  features per step;
* ``ids``: (N,) unicode strings, unique, the keys that a manifest's cells for that modality hold.

Numpy reads it without pickle. A manifest (CSV/TSV/JSONL/Parquet, see
:mod:`modalign.data.manifest`) pairs items: one row per sample, one column per modality whose
cell is an id in that modality's file, optional ``label`` and ``split`` columns.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "audio.npz"
    >>> write_sequences(path, ["a", "b"], np.zeros((2, 5, 3), dtype=np.float32))
    >>> seq = read_sequences(path)
    >>> seq.features.shape, seq.rows(["b"]).shape
    ((2, 5, 3), (1, 5, 3))
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modalign.data.manifest import read_table
from modalign.errors import DataError
from modalign.io import atomic_path


@dataclass(frozen=True)
class SequenceFile:
    """Temporal features of one modality: ``features`` (N, T, F) float32 and their ``ids``."""

    path: Path
    ids: list[str]
    features: np.ndarray

    @property
    def steps(self) -> int:
        return int(self.features.shape[1])

    @property
    def dim(self) -> int:
        return int(self.features.shape[2])

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """Features of the given ids, (len(keys), T, F); DataError names an unknown id."""
        index = {k: i for i, k in enumerate(self.ids)}
        missing = next((k for k in keys if k not in index), None)
        if missing is not None:
            raise DataError(f"{self.path}: no item with id {missing!r}")
        return self.features[[index[k] for k in keys]]


def write_sequences(path: str | Path, ids: Sequence[str], features: np.ndarray) -> None:
    """Write (N, T, F) features and their N ids as an ``.npz``, atomically."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 3 or features.shape[0] != len(ids):
        raise DataError(f"{path}: features {features.shape} must be (N={len(ids)}, T, F)")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, features=features, ids=np.asarray([str(i) for i in ids]))


def read_sequences(path: str | Path) -> SequenceFile:
    """Read and check a sequence file written by :func:`write_sequences` (or by hand)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: sequence file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            fields = set(data.files)
            for name in ("features", "ids"):
                if name not in fields:
                    raise DataError(f"{path}: field {name!r} missing (fields: {sorted(fields)})")
            features, ids = data["features"], data["ids"]
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz ({err})") from None
    if features.ndim != 3 or not np.issubdtype(features.dtype, np.number):
        raise DataError(
            f"{path}: field 'features' must be a numeric (N, T, F) array, got {features.dtype} {features.shape}"
        )
    if ids.ndim != 1 or ids.dtype.kind not in "US" or len(ids) != len(features):
        raise DataError(
            f"{path}: field 'ids' must be {len(features)} strings, got {ids.dtype} {ids.shape}"
        )
    keys = [str(k) for k in ids.tolist()]
    if len(set(keys)) != len(keys):
        raise DataError(f"{path}: field 'ids' has duplicates")
    features = features.astype(np.float32, copy=False)
    if not np.isfinite(features).all():
        row = int(np.argwhere(~np.isfinite(features))[0, 0])
        raise DataError(f"{path}: field 'features' has a non-finite value in item {keys[row]!r}")
    return SequenceFile(path, keys, features)


@dataclass(frozen=True)
class PairedRows:
    """Rows of a manifest with their cells per modality, labels and splits (None where absent)."""

    path: Path
    ids: list[str]
    cells: dict[str, list[str | None]]
    labels: list[str | None] | None
    splits: list[str | None] | None

    def rows_with(self, modality: str) -> np.ndarray:
        """Indices (int64) of rows whose cell for ``modality`` is filled."""
        return np.array(
            [i for i, c in enumerate(self.cells[modality]) if c is not None], dtype=np.int64
        )

    def features(self, modality: str, store: SequenceFile, rows: np.ndarray) -> np.ndarray:
        """(len(rows), T, F) features of ``rows`` of this manifest from ``store``."""
        keys = [self.cells[modality][i] for i in rows]
        bad = next((i for i, k in zip(rows, keys, strict=True) if k is None), None)
        if bad is not None:
            raise DataError(
                f"{self.path}, row {bad + 1} (id {self.ids[bad]!r}): field {modality!r} is empty"
            )
        try:
            return store.rows([str(k) for k in keys])
        except DataError as err:
            key = next(str(k) for k in keys if str(k) not in set(store.ids))
            row = rows[keys.index(key)]
            raise DataError(
                f"{self.path}, row {row + 1} (id {self.ids[row]!r}): field {modality!r} = {key!r} is not in {store.path}"
            ) from err


def read_paired(
    path: str | Path, modalities: Sequence[str], label_column: str | None = "label"
) -> PairedRows:
    """Read a manifest's id, modality, label and split columns (the label may be absent)."""
    path = Path(path)
    table = read_table(path)
    n = len(next(iter(table.values()), []))
    if n == 0:
        raise DataError(f"{path}: manifest has no rows")
    for m in modalities:
        if m not in table:
            raise DataError(f"{path}: no column {m!r} (columns: {', '.join(table)})")
    ids = [str(i) if i is not None else str(r) for r, i in enumerate(table.get("id", [None] * n))]
    labels = table.get(label_column) if label_column else None
    return PairedRows(path, ids, {m: table[m] for m in modalities}, labels, table.get("split"))


def open_stores(features: Mapping[str, str | Path]) -> dict[str, SequenceFile]:
    """Read every modality's sequence file: modality -> :class:`SequenceFile`."""
    return {m: read_sequences(p) for m, p in features.items()}
