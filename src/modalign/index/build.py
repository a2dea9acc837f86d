"""Fill an index from a manifest through a trained run: every item of every modality.

Each modality's cells are embedded by the run's model in chunks (``chunk`` items at a
time, a progress bar over chunks) into a temporary memory-mapped array, so the memory the build
needs beyond the index itself is one chunk; the backend is then built (trained, for FAISS
backends) over all of that modality's vectors at once. Item ids are ``{row id}:{modality}``;
metadata holds the row id, the source file (file modalities) or the caption (text modalities).
A modality given a feature store (the features the run trained on) is embedded from it, not
from its raw files again.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from modalign.data.manifest import Manifest
from modalign.errors import DataError
from modalign.features.store import FeatureStore
from modalign.index.store import Index


def item_id(row_id: str, modality: str) -> str:
    """The index id of a manifest row's item of ``modality``."""
    return f"{row_id}:{modality}"


def add_manifest(
    index: Index,
    model: Any,
    manifest: Manifest,
    features: Mapping[str, FeatureStore] | None = None,
    chunk: int = 4096,
) -> dict[str, int]:
    """Embed and add every filled cell of the manifest's model modalities; counts per modality."""
    if index.model_id and index.model_id != model.model_id:
        raise DataError(
            f"the index holds embeddings of model {index.model_id}, not {model.model_id}"
        )
    index.model_id = model.model_id
    counts = {}
    features = dict(features or {})
    for m in [m for m in manifest.modalities if m in model.modalities]:
        store = features.get(m)  # items its store lacks (unreadable when embedded) are left out
        rows = [
            i for i, c in enumerate(manifest.cells[m])
            if c is not None and (store is None or c in store.index)
        ]  # fmt: skip
        if rows:
            vectors = _embed_chunks(model, manifest, m, rows, features, chunk)
            ids = [item_id(manifest.ids[r], m) for r in rows]
            index.add(ids, m, vectors, [_metadata(model, manifest, m, r) for r in rows])
        counts[m] = len(rows)
    return counts


def _embed_chunks(
    model: Any,
    manifest: Manifest,
    modality: str,
    rows: list[int],
    features: dict[str, FeatureStore],
    chunk: int,
) -> np.ndarray:
    kind = "array" if modality in features else model.input_kind(modality)
    if kind == "array" and modality not in features:
        raise DataError(f"modality {modality!r} takes features: give its feature file")
    tmp = Path(tempfile.mkdtemp(prefix="modalign-index-")) / "vectors.npy"
    out = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=np.float32, shape=(len(rows), model.embed_dim)
    )
    for start in tqdm(range(0, len(rows), chunk), desc=f"index {modality}", leave=False):
        cells = [manifest.cells[modality][r] or "" for r in rows[start : start + chunk]]
        if kind == "array":
            items: Any = features[modality].rows(cells)
        elif kind == "file":
            items = [str(manifest.resolve(c)) for c in cells]
        else:
            items = cells
        out[start : start + len(cells)] = model.encode(modality, items, progress=False)
    out.flush()
    return out


def _metadata(model: Any, manifest: Manifest, modality: str, row: int) -> dict[str, Any]:
    cell = manifest.cells[modality][row] or ""
    meta: dict[str, Any] = {"row": manifest.ids[row]}
    kind = model.input_kind(modality)
    if kind == "file":
        meta["source"] = str(manifest.resolve(cell))
    elif kind == "text":
        meta["caption"] = cell
    return meta
