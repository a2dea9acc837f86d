"""Files of the evaluation: embeddings from anywhere (.npz) and per-query results (per_query.npz).

**Embeddings .npz.** One float array (N, D) per modality, named by the modality; row i of every
array is item i; a row of NaN marks the modality missing for item i. Optional arrays:
``group`` (N,) ints (rows with equal values are positives of each other), ``label`` (N,) ints
(class indices, for zero-shot and probes; -1 = unlabelled) with their names in ``label_names``
(C,) strings, ``id`` (N,) strings, and class
prototypes ``classes`` (C, D) or per-template (T, C, D) in the shared space (for zero-shot).
Rows are L2-normalised on load. A modality name must fit in a metric key (see
:func:`~modalign.types.name_problem`: no ``/``, ``~``, ``_to_``, ``_vs_``).

**per_query.npz.** For each split and retrieval direction, arrays named by the flat
:class:`~modalign.types.MetricKey` of metric ``ids`` (the query item ids, e.g.
``test/image_to_text/ids``) and of each per-query metric (float per query, e.g.
``test/image_to_text/recall@1``), which ``modalign compare`` pairs up by id.

**eval_complete.json.** ``modalign eval`` writes its outputs (metrics.json, intervals.json,
per_query.npz, report.html) as one unit: it deletes this marker first and writes it last, with the
SHA-256 of every output. Readers (``modalign compare``) call :func:`check_evaluation`, so outputs
of an interrupted evaluation, or files mixed from two, are refused instead of read.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "e.npz"
    >>> np.savez(p, image=np.eye(2), text=np.eye(2) * 3, group=np.array([0, 1]))
    >>> emb, protos = load_embeddings_npz(p)
    >>> emb.modalities, emb.embeddings["text"][0].tolist(), protos is None
    (['image', 'text'], [1.0, 0.0], True)
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from modalign.errors import DataError
from modalign.eval.retrieval import PerQueryRetrieval
from modalign.io import atomic_path
from modalign.types import Direction, EmbeddingSet, MetricKey, name_problem

RESERVED = {"group", "label", "id", "classes", "label_names"}


def load_embeddings_npz(path: str | os.PathLike[str]) -> tuple[EmbeddingSet, np.ndarray | None]:
    """Read and validate an embeddings .npz; returns the set and the class prototypes (or None).

    Raises:
        DataError: naming the file, array and row of any problem.
    """
    path = Path(path)
    data = _read_npz(path)
    mods = {k: v for k, v in data.items() if k not in RESERVED}
    if not mods:
        raise DataError(
            f"{path}: no embedding arrays (one (N, D) float array per modality expected)"
        )
    n = _check_modalities(path, mods)
    extra = {k: _int_array(path, data, k, n) for k in ("group", "label") if k in data}
    if len(mods) < 2 and "label" not in extra:
        raise DataError(
            f"{path}: one modality ({', '.join(mods)}) and no 'label' array: nothing to measure "
            "(retrieval needs two modalities; zero-shot and probes need labels)"
        )
    ids = _ids(path, data, n)
    emb = EmbeddingSet(
        {k: _normalise(path, k, v) for k, v in mods.items()},
        ids,
        extra.get("group"),
        extra.get("label"),
    )
    return emb, _prototypes(path, data, mods)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz, read whole; any failure is one ``DataError`` naming the file."""
    if not path.is_file():
        what = "is a folder, not an .npz file" if path.is_dir() else "not found"
        raise DataError(f"{path}: {what}")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DataError(f"{path}: a single .npy array, not an .npz archive of named arrays")
        with npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        why = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        if "allow_pickle" in why:
            why = "it holds object arrays (pickled Python objects), which are not read"
        raise DataError(f"{path}: cannot read as .npz ({why})") from None


def _ids(path: Path, data: dict[str, np.ndarray], n: int) -> list[str]:
    if "id" not in data:
        return [str(i) for i in range(n)]
    ids = [str(i) for i in np.asarray(data["id"]).reshape(-1)]
    if data["id"].ndim != 1 or len(ids) != n:
        raise DataError(f"{path}: array 'id' has shape {data['id'].shape}, expected ({n},)")
    seen: dict[str, int] = {}
    for i, key in enumerate(ids):
        if key in seen:
            raise DataError(
                f"{path}: array 'id' row {i}: duplicate id {key!r} (first at row {seen[key]})"
            )
        seen[key] = i
    return ids


def _check_modalities(path: Path, mods: dict[str, np.ndarray]) -> int:
    n = None
    widths = {k: v.shape[-1] for k, v in mods.items() if v.ndim == 2}
    if len(set(widths.values())) > 1:
        raise DataError(f"{path}: embeddings of one space must share a width, got {widths}")
    for k, v in mods.items():
        problem = name_problem(k)
        if problem is not None:
            raise DataError(f"{path}: array {k!r} cannot name a modality: it {problem}")
        if v.ndim != 2 or not np.issubdtype(v.dtype, np.floating):
            raise DataError(
                f"{path}: array {k!r} must be a float (N, D) array, got {v.dtype} {v.shape}"
            )
        if n is not None and v.shape[0] != n:
            raise DataError(f"{path}: array {k!r} has {v.shape[0]} rows but others have {n}")
        if v.shape[0] == 0 or v.shape[1] == 0:
            raise DataError(f"{path}: array {k!r} has shape {v.shape}: no rows or no columns")
        n = v.shape[0]
    assert n is not None
    return n


def _int_array(path: Path, data: dict[str, np.ndarray], key: str, n: int) -> np.ndarray:
    v = data[key]
    if v.shape != (n,) or not np.issubdtype(v.dtype, np.integer):
        raise DataError(
            f"{path}: array {key!r} must be an integer ({n},) array, got {v.dtype} {v.shape}"
        )
    if key == "label" and (v < -1).any():
        row = int(np.flatnonzero(v < -1)[0])
        raise DataError(
            f"{path}: array 'label' row {row} is {int(v[row])}: labels are class indices >= 0 "
            "(-1 marks an unlabelled item)"
        )
    return v.astype(np.int64)


def _normalise(path: Path, key: str, v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float32)
    missing = np.isnan(v).all(axis=1)
    if missing.all():
        raise DataError(f"{path}: array {key!r} is all NaN: every item misses this modality")
    bad = ~missing & ~np.isfinite(v).all(axis=1)
    if bad.any():
        raise DataError(
            f"{path}: array {key!r} row {int(np.flatnonzero(bad)[0])} mixes numbers with NaN/inf (a missing item must be all NaN)"
        )
    norm = np.linalg.norm(np.nan_to_num(v), axis=1)
    zero = ~missing & (norm == 0)
    if zero.any():
        raise DataError(
            f"{path}: array {key!r} row {int(np.flatnonzero(zero)[0])} is all zeros (cannot be normalised)"
        )
    return v / np.where(missing, 1.0, norm)[:, None]


def _prototypes(
    path: Path, data: dict[str, np.ndarray], mods: dict[str, np.ndarray]
) -> np.ndarray | None:
    if "classes" not in data:
        return None
    if not np.issubdtype(data["classes"].dtype, np.floating):
        raise DataError(f"{path}: array 'classes' must be floats, got {data['classes'].dtype}")
    c = data["classes"].astype(np.float32)
    dims = {v.shape[1] for v in mods.values()}
    if c.ndim not in (2, 3) or c.shape[-1] not in dims or not np.isfinite(c).all():
        raise DataError(
            f"{path}: array 'classes' must be finite (C, D) or (T, C, D) with D in {sorted(dims)}, got {c.shape}"
        )
    return c


def save_embeddings_npz(
    path: str | os.PathLike[str], emb: EmbeddingSet, label_names: list[str] | None = None
) -> None:
    """Write ``emb`` as an embeddings .npz (the format :func:`load_embeddings_npz` reads),
    atomically."""
    arrays: dict[str, np.ndarray] = {m: v.astype(np.float32) for m, v in emb.embeddings.items()}
    arrays["id"] = np.asarray(emb.ids, dtype=str)
    if emb.groups is not None:
        arrays["group"] = emb.groups
    if emb.labels is not None:
        arrays["label"] = emb.labels
    if label_names:
        arrays["label_names"] = np.asarray(label_names, dtype=str)
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]


#: (split, direction): the unit of per-query results.
PerQueryKey = tuple[str, Direction]


def save_per_query(
    path: str | os.PathLike[str], results: dict[PerQueryKey, tuple[list[str], PerQueryRetrieval]]
) -> None:
    """Write per-query retrieval values under the flat keys of metric ``ids`` and each metric."""
    arrays: dict[str, np.ndarray] = {}
    for (split, direction), (ids, pq) in results.items():
        arrays[MetricKey(split, direction, "ids").flatten()] = np.asarray(ids, dtype=str)
        arrays.update({MetricKey(split, direction, m).flatten(): v for m, v in pq.values().items()})
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)  # type: ignore[arg-type]


def load_per_query(
    path: str | os.PathLike[str],
) -> dict[PerQueryKey, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Read :func:`save_per_query`'s file: (split, direction) -> (ids, metric -> values)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: not found (run `modalign eval` on it first)")
    out: dict[PerQueryKey, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
    for name, value in _read_npz(path).items():
        key = MetricKey.try_parse(name)
        if key is None or not isinstance(key.subject, Direction) or key.variant is not None:
            raise DataError(f"{path}: array {name!r} is not a per-query result of `modalign eval`")
        head = (key.split, key.subject)
        _, values = out.setdefault(head, (np.array([]), {}))
        if key.metric == "ids":
            out[head] = (value, values)
        else:
            values[key.metric] = value
    return out


EVAL_MARKER = "eval_complete.json"
EVAL_OUTPUTS = ("metrics.json", "intervals.json", "per_query.npz", "report.html")


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def begin_evaluation(folder: Path) -> None:
    """Drop the completion marker and the outputs a new evaluation replaces (not metrics.json,
    which it merges into): until ``finish_evaluation``, the folder holds no complete-looking one."""
    (folder / EVAL_MARKER).unlink(missing_ok=True)
    for name in EVAL_OUTPUTS[1:]:
        (folder / name).unlink(missing_ok=True)


def finish_evaluation(folder: Path) -> None:
    """Write the marker last: the names and digests of the outputs that are there now."""
    from modalign.io import write_json_atomic

    files = {n: file_digest(folder / n) for n in EVAL_OUTPUTS if (folder / n).is_file()}
    write_json_atomic(folder / EVAL_MARKER, {"files": files})


def check_evaluation(folder: Path, name: str) -> Path:
    """``folder/name`` if a finished ``modalign eval`` wrote it; a ``DataError`` otherwise.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "per_query.npz").write_bytes(b"x")
        >>> check_evaluation(d, "per_query.npz")
        Traceback (most recent call last):
        ...
        modalign.errors.DataError: ... has no finished evaluation (no eval_complete.json: ...
    """
    import json

    marker = folder / EVAL_MARKER
    if not marker.is_file():
        raise DataError(
            f"{folder}: has no finished evaluation (no {EVAL_MARKER}: `modalign eval` was "
            "interrupted or never run); run `modalign eval` on it again"
        )
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
        expected = files[name]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(f"{marker}: lists no {name}; run `modalign eval` again") from None
    path = folder / name
    if not path.is_file() or file_digest(path) != expected:
        raise DataError(
            f"{path}: does not match the evaluation recorded in {EVAL_MARKER} (changed or "
            "replaced since); run `modalign eval` again"
        )
    return path
