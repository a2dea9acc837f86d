"""Paired manifests: one row per item, one column per modality, read from CSV, JSONL or Parquet.

A modality cell holds a file path (relative to the manifest's folder, or absolute), an inline
text, or an id into a feature store. An empty cell means that modality is missing for the row.
Optional columns: ``id`` (defaults to the row number), ``group`` (rows sharing a group are all
positives of each other) and ``split`` (``train``/``val``/``test``; otherwise a seeded split).

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "pairs.csv"
    >>> _ = path.write_text("id,image,text\\na,cat.png,a cat\\nb,,a dog\\n")
    >>> m = read_manifest(path)
    >>> m.modalities, m.ids, m.cells["image"]
    (['image', 'text'], ['a', 'b'], ['cat.png', None])
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modalign.errors import DataError

RESERVED_COLUMNS = ("id", "group", "split", "label")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Manifest:
    """A read and checked manifest.

    Attributes:
        path: the manifest file. base_dir: folder that relative paths are resolved against.
        ids: N unique row ids. cells: modality -> N cells (None where missing).
        groups: optional int64 (N,) group ids (group names are mapped to integers in order of
            first appearance). splits: optional N split names. labels: optional N class names.
    """

    path: Path
    base_dir: Path
    ids: list[str]
    cells: dict[str, list[str | None]]
    groups: np.ndarray | None = None
    splits: list[str] | None = None
    labels: list[str | None] | None = None

    @property
    def modalities(self) -> list[str]:
        return list(self.cells)

    def __len__(self) -> int:
        return len(self.ids)

    def resolve(self, cell: str) -> Path:
        """The file a path cell points at (relative paths against the manifest's folder)."""
        path = Path(cell).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def where(self, index: int) -> str:
        """``file, row N (id X)`` for error messages; rows count from 1 after the header."""
        return f"{self.path}, row {index + 1} (id {self.ids[index]!r})"


def read_table(path: Path) -> dict[str, list[str | None]]:
    """Read a CSV, JSONL or Parquet table as columns of stripped strings (empty cells -> None).

    CSV and TSV go through the ``csv`` module (importing pandas costs about a second per start);
    JSONL and Parquet through pandas.
    """
    if not path.exists():
        raise DataError(f"{path}: manifest not found")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return read_csv_columns(path, "\t" if suffix == ".tsv" else ",")
    if suffix not in (".jsonl", ".ndjson", ".parquet", ".pq"):
        raise DataError(
            f"{path}: unknown manifest type {suffix!r} (use .csv, .tsv, .jsonl or .parquet)"
        )
    import pandas as pd

    try:
        if suffix in (".jsonl", ".ndjson"):
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            frame = pd.read_parquet(path)
    except (ValueError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: cannot parse manifest ({err})") from None
    return {str(name): [_as_text(v) for v in frame[name].tolist()] for name in frame.columns}


def read_csv_columns(path: Path, sep: str = ",") -> dict[str, list[str | None]]:
    """Columns of a CSV/TSV file with a header row, read as pandas' ``read_csv(dtype=str,
    keep_default_na=False)`` reads them.

    Blank lines are skipped, short rows are padded with empty cells, repeated column names get
    ``.1``, ``.2`` suffixes and unnamed ones ``Unnamed: i``. A row with more cells than the
    header, or a quote left open, is an error (pandas would silently shift every column of a file
    whose first row is one cell too long).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "m.csv"
        >>> _ = path.write_text('id,text,text\\na," two, words ",\\n\\nb\\n')
        >>> read_csv_columns(path)
        {'id': ['a', 'b'], 'text': ['two, words', None], 'text.1': [None, None]}
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=sep, strict=True)
            rows = [r for r in reader if r and not (len(r) == 1 and not r[0].strip())]
    except (csv.Error, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot parse manifest ({err})") from None
    if not rows:
        raise DataError(f"{path}: cannot parse manifest (No columns to parse from file)")
    names = _column_names(rows[0])
    columns: list[list[str | None]] = [[] for _ in names]
    for i, row in enumerate(rows[1:]):
        if len(row) > len(names):
            raise DataError(
                f"{path}: cannot parse manifest (row {i + 1} has {len(row)} fields, the header {len(names)})"
            )
        for j, column in enumerate(columns):
            column.append(_as_text(row[j]) if j < len(row) else None)
    return dict(zip(names, columns, strict=True))


def _column_names(header: list[str]) -> list[str]:
    """pandas' column names: ``Unnamed: i`` for empty ones, ``name.k`` for repeats."""
    names = [name or f"Unnamed: {i}" for i, name in enumerate(header)]
    taken: set[str] = set()
    out = []
    for name in names:
        new, k = name, 1
        while new in taken or (new != name and new in names):
            new, k = f"{name}.{k}", k + 1
        taken.add(new)
        out.append(new)
    return out


def _as_text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    out = str(value).strip()
    return out or None


def read_manifest(path: str | Path, modalities: Sequence[str] | None = None) -> Manifest:
    """Read and check a manifest.

    Args:
        path: a .csv, .tsv, .jsonl or .parquet file.
        modalities: columns to read as modalities; default every non-reserved column.

    Returns:
        A ``Manifest``. Raises ``DataError`` naming the file, row and field on bad input.
    """
    path = Path(path)
    frame = read_table(path)
    if not frame or not next(iter(frame.values())):
        raise DataError(f"{path}: manifest has no rows")
    names = (
        list(modalities)
        if modalities is not None
        else [c for c in list(frame) if c not in RESERVED_COLUMNS]
    )
    for name in names:
        if name not in frame:
            raise DataError(f"{path}: no column {name!r} (columns: {', '.join(list(frame))})")
    if not names:
        raise DataError(f"{path}: no modality columns (only {', '.join(list(frame))})")
    ids = _read_ids(frame, path)
    cells = {name: frame[name] for name in names}
    return Manifest(
        path=path,
        base_dir=path.parent.resolve(),
        ids=ids,
        cells=cells,
        groups=_read_groups(frame),
        splits=_read_splits(frame, path, ids),
        labels=frame.get("label"),
    )


def _read_ids(frame: dict[str, list[str | None]], path: Path) -> list[str]:
    if "id" not in frame:
        return [str(i) for i in range(len(next(iter(frame.values()))))]
    ids = list(frame["id"])
    seen: dict[str, int] = {}
    for i, key in enumerate(ids):
        if key is None:
            raise DataError(f"{path}, row {i + 1}: field 'id' is empty")
        if key in seen:
            raise DataError(
                f"{path}, row {i + 1}: duplicate id {key!r} (first at row {seen[key] + 1})"
            )
        seen[key] = i
    return [str(key) for key in ids]


def _read_groups(frame: dict[str, list[str | None]]) -> np.ndarray | None:
    if "group" not in frame:
        return None
    codes: dict[str, int] = {}
    out = np.empty(len(frame["group"]), dtype=np.int64)
    for i, value in enumerate(frame["group"]):
        key = value if value is not None else f"\0row{i}"  # an empty group is a group of its own
        out[i] = codes.setdefault(key, len(codes))
    return out


def _read_splits(
    frame: dict[str, list[str | None]], path: Path, ids: list[str]
) -> list[str] | None:
    if "split" not in frame:
        return None
    splits = list(frame["split"])
    for i, value in enumerate(splits):
        if value not in SPLITS:
            raise DataError(
                f"{path}, row {i + 1} (id {ids[i]!r}): field 'split' is {value!r}, expected one of {', '.join(SPLITS)}"
            )
    return [str(s) for s in splits]


def assign_splits(manifest: Manifest, fractions: dict[str, float], seed: int) -> list[str]:
    """Split names per row: the manifest's own, or a seeded split that keeps groups together.

    The split of a row depends only on its group (or id) and the seed, through a hash, so adding
    rows to a manifest does not move existing rows between splits.

    Example:
        >>> m = Manifest(Path("m.csv"), Path("."), [str(i) for i in range(1000)], {"a": ["x"] * 1000})
        >>> s = assign_splits(m, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
        >>> sorted(set(s)), 700 < s.count("train") < 900
        (['test', 'train', 'val'], True)
    """
    if manifest.splits is not None:
        return manifest.splits
    keys = [str(g) for g in manifest.groups] if manifest.groups is not None else manifest.ids
    names = [name for name in SPLITS if fractions.get(name, 0.0) > 0]
    edges = np.cumsum([fractions[name] for name in names])
    edges = edges / edges[-1]
    out = []
    for key in keys:
        u = _hash_unit(f"{seed}:{key}")
        out.append(names[int(np.searchsorted(edges, u, side="right"))] if u < 1 else names[-1])
    return out


def _hash_unit(text: str) -> float:
    import hashlib

    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64
