"""Paired manifests: one row per item, one column per modality, read from CSV, JSONL or Parquet.

A modality cell holds a file path (relative to the manifest's folder, or absolute), an inline
text, or an id into a feature store. An empty cell means that modality is missing for the row.
Optional columns: ``id`` (defaults to the row number), ``group`` (rows sharing a group are all
positives of each other), ``split`` (``train``/``val``/``test``; otherwise a seeded split) and
``negatives`` (``|``-separated ids of rows that must score below the row's positives).
A modality column's name must fit in a metric key (see :func:`modalign.types.name_problem`):
``speech_to_text`` is refused, since ``speech_to_text_to_image`` would read two ways.

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
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modalign.errors import DataError
from modalign.types import name_problem

RESERVED_COLUMNS = ("id", "group", "split", "label", "negatives")
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
    negatives: list[str | None] | None = None  # "|"-separated ids (``modalign.data.samplers``)

    @property
    def modalities(self) -> list[str]:
        return list(self.cells)

    def __len__(self) -> int:
        return len(self.ids)

    def label_indices(self) -> tuple[list[str], np.ndarray | None]:
        """Class names of the ``label`` column (sorted) and each row's index into them (-1 for
        an empty label); ``([], None)`` without a label column.

        Example:
            >>> m = Manifest(Path("m.csv"), Path("."), ["a", "b", "c"], {"x": ["1", "2", "3"]},
            ...     labels=["dog", None, "cat"])
            >>> names, idx = m.label_indices()
            >>> names, idx.tolist()
            (['cat', 'dog'], [1, -1, 0])
        """
        if self.labels is None:
            return [], None
        names = sorted({x for x in self.labels if x is not None})
        index = {name: i for i, name in enumerate(names)}
        return names, np.array([index[x] if x is not None else -1 for x in self.labels], np.int64)

    def resolve(self, cell: str) -> Path:
        """The file a path cell points at (relative paths against the manifest's folder)."""
        path = Path(cell).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def where(self, index: int) -> str:
        """``file, row N (id X)`` for error messages; rows count from 1 after the header."""
        return f"{self.path}, row {index + 1} (id {self.ids[index]!r})"


def read_table(path: Path) -> dict[str, list[str | None]]:
    """Read a CSV, TSV, JSONL or Parquet table as columns of stripped strings (empty cells -> None).

    Raises:
        DataError: naming the file (and line or column) when it cannot be read as a manifest.
    """
    if not path.exists():
        raise DataError(f"{path}: manifest not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a manifest file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):  # the csv module: importing pandas costs a second a start
            sep = "\t" if suffix == ".tsv" else ","
            _check_header(path, sep)
            return _read_delimited(path, sep)
        elif suffix in (".jsonl", ".ndjson"):
            return _read_jsonl_table(path)
        elif suffix in (".parquet", ".pq"):
            import pandas as pd

            frame = pd.read_parquet(path)
        else:
            raise DataError(
                f"{path}: unknown manifest type {suffix!r} (use .csv, .tsv, .jsonl or .parquet)"
            )
    except (ValueError, OSError, csv.Error) as err:  # pyarrow's errors are ValueError/OSError
        why = " ".join(str(err).split())[:300]
        raise DataError(f"{path}: cannot parse manifest ({why})") from None
    return {str(name): [_as_text(v) for v in frame[name].tolist()] for name in frame.columns}


def _check_header(path: Path, sep: str) -> None:
    """Catch a manifest written with another delimiter, and duplicate column names, at the header."""
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: a byte-order mark is no name
        header = f.readline().rstrip("\r\n")
    if not header.strip():
        raise DataError(f"{path}: the first line (the header) is empty")
    names = next(csv.reader([header], delimiter=sep))
    if len(names) == 1:
        found = {d: header.count(d) for d in (",", ";", "\t", "|") if d != sep and d in header}
        if found:
            other = max(found, key=lambda d: found[d])
            shown = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}
            hint = (
                f"name it {'.tsv' if other == chr(9) else '.csv'}"
                if other in ",\t"
                else (f"rewrite it {shown[sep]}-separated")
            )
            raise DataError(
                f"{path}: the header {header[:80]!r} has one column: the file looks "
                f"{shown[other]}-separated, but a {path.suffix} manifest must be "
                f"{shown[sep]}-separated ({hint})"
            )
    seen = [n.strip() for n in names]
    if "" in seen:
        raise DataError(f"{path}: column {seen.index('') + 1} of the header has no name")
    dup = next((n for i, n in enumerate(seen) if n in seen[:i]), None)
    if dup is not None:
        raise DataError(f"{path}: column {dup!r} appears twice in the header")


def _read_delimited(path: Path, sep: str) -> dict[str, list[str | None]]:
    """A CSV/TSV table; a row with another number of fields than the header is an error."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=sep, strict=True)
        header = [name.strip() for name in next(reader)]
        columns: list[list[str | None]] = [[] for _ in header]
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line
            if len(row) != len(header):
                raise DataError(
                    f"{path}, line {reader.line_num}: {len(row)} fields, but the header has "
                    f"{len(header)} ({', '.join(header)})"
                )
            for column, cell in zip(columns, row, strict=True):
                column.append(cell.strip() or None)
    return dict(zip(header, columns, strict=True))


def _read_jsonl_table(path: Path) -> dict[str, list[str | None]]:
    """One JSON object per line; every line names its fields (a missing field is an empty cell)."""
    rows: list[dict[str, object]] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as err:
                why = getattr(err, "msg", "too deeply nested")
                raise DataError(f"{path}, line {number}: not valid JSON ({why})") from None
            if not isinstance(row, dict):
                raise DataError(
                    f"{path}, line {number}: expected a JSON object (one row), got {type(row).__name__}"
                )
            for key, value in row.items():
                if isinstance(value, dict | list):
                    raise DataError(
                        f"{path}, line {number}: field {key!r} holds a {type(value).__name__}; "
                        "cells must be text, numbers or null"
                    )
            rows.append(row)
    names = list(dict.fromkeys(k for row in rows for k in row))
    return {name: [_as_text(row.get(name)) for row in rows] for name in names}


def _as_text(value: object) -> str | None:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, bool):  # JSON true/false: as written, not "True"
        return str(value).lower()
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
        problem = name_problem(name)
        if problem is not None:
            raise DataError(f"{path}: column {name!r} cannot name a modality: it {problem}")
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
        negatives=frame.get("negatives"),
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
