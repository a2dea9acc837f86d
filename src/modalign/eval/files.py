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
    try:
        data = dict(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read as .npz: {err}") from None
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
    ids = [str(i) for i in data["id"]] if "id" in data else [str(i) for i in range(n)]
    if len(ids) != n:
        raise DataError(f"{path}: array 'id' has {len(ids)} entries, expected {n}")
    emb = EmbeddingSet(
        {k: _normalise(path, k, v) for k, v in mods.items()},
        ids,
        extra.get("group"),
        extra.get("label"),
    )
    return emb, _prototypes(path, data, mods)


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
        n = v.shape[0]
    assert n is not None
    return n


def _int_array(path: Path, data: dict[str, np.ndarray], key: str, n: int) -> np.ndarray:
    v = data[key]
    if v.shape != (n,) or not np.issubdtype(v.dtype, np.integer):
        raise DataError(
            f"{path}: array {key!r} must be an integer ({n},) array, got {v.dtype} {v.shape}"
        )
    return v.astype(np.int64)


def _normalise(path: Path, key: str, v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float32)
    missing = np.isnan(v).all(axis=1)
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
    with np.load(path, allow_pickle=False) as data:
        for name in data.files:
            key = MetricKey.try_parse(name)
            if key is None or not isinstance(key.subject, Direction) or key.variant is not None:
                raise DataError(f"{path}: array {name!r} is not split/query_to_gallery/metric")
            head = (key.split, key.subject)
            _, values = out.setdefault(head, (np.array([]), {}))
            if key.metric == "ids":
                out[head] = (data[name], values)
            else:
                values[key.metric] = data[name]
    return out
