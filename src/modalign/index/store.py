"""An index of items of several modalities in one space: add, remove, search, save, load.

Items have a unique string id, a modality and metadata (``source``: the file it came from,
``caption``: a text, or anything JSON); their vectors live in one :class:`VectorBackend` per
modality (each trained on its own modality's data), under int64 labels that are never reused.
A search asks every modality's backend (or the one ``modality`` names) for its top k and merges
them by score.

**On disk** an index is a folder::

    INDEX/CURRENT          {"generation": "gen-000003"}   (replaced atomically)
    INDEX/gen-000003/      index.json (format, backend, options, dim, model_id, run, modalities)
                           items.jsonl (id, modality, label, metadata), one backend file set per
                           modality
    INDEX/.lock            held (filelock) while the folder is written or read

A save writes a complete new generation folder beside the current one, fsyncs it, then points
``CURRENT`` at it with one atomic rename and deletes the old one: a kill at any moment leaves
the previous index readable (tested with SIGKILL).

Example:
    >>> idx = Index(backend="exact", model_id="m1")
    >>> idx.add(["a", "b"], "image", np.eye(2, dtype=np.float32), [{"source": "a.png"}, {}])
    >>> idx.add(["t"], "text", np.array([[0.6, 0.8]], dtype=np.float32))
    >>> [(h.id, round(h.score, 2)) for h in idx.search(np.array([[0.0, 1.0]]), 2)[0]]
    [('b', 1.0), ('t', 0.8)]
    >>> [h.id for h in idx.search(np.array([[0.0, 1.0]]), 2, modality="image")[0]]
    ['b', 'a']
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout

from modalign.errors import DataError
from modalign.index.base import BACKENDS, Hit, VectorBackend, normalize_rows
from modalign.io import _fsync_dir, write_json_atomic

FORMAT = 1
LOCK_TIMEOUT_S = 60.0


@dataclass
class Item:
    """One indexed item: its id, modality, backend label and metadata."""

    id: str
    modality: str
    label: int
    metadata: dict[str, Any] = field(default_factory=dict)


class Index:
    """Items of several modalities with their vectors; see the module docstring.

    Args:
        backend: a name in :data:`modalign.index.base.BACKENDS` (``exact``, ``flat``, ``ivf``, ...).
        model_id: fingerprint of the model whose embeddings the index holds.
        run: the run folder the model came from (so search can embed text and file queries).
        options: backend options (``nlist``, ``nprobe``, ``M``, ...).
    """

    def __init__(
        self,
        backend: str = "exact",
        model_id: str = "",
        run: str | None = None,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.backend_cls: type[VectorBackend] = BACKENDS.get(backend)
        self.backend = backend
        self.model_id = model_id
        self.run = run
        self.options = dict(options or {})
        self.dim: int | None = None
        self.items: dict[str, Item] = {}
        self.backends: dict[str, VectorBackend] = {}
        self._by_label: dict[int, Item] = {}
        self._next_label = 0

    def __len__(self) -> int:
        return len(self.items)

    @property
    def modalities(self) -> list[str]:
        """Modalities with at least one item, sorted."""
        return sorted(m for m, b in self.backends.items() if len(b))

    def add(
        self,
        ids: Sequence[str],
        modality: str,
        vectors: np.ndarray,
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Add items of one modality.

        Args:
            ids: (N,) unique ids, new to the index. modality: their modality.
            vectors: (N, D) embeddings (normalised here). metadata: N mappings (or None).

        Raises:
            DataError: duplicate or existing ids, wrong shapes, zero or non-finite rows.
        """
        ids = [str(i) for i in ids]
        meta = [dict(m) for m in metadata] if metadata is not None else [{} for _ in ids]
        x = self._checked_vectors(vectors, len(ids), len(meta))
        self._check_new_ids(ids)
        labels = np.arange(self._next_label, self._next_label + len(ids), dtype=np.int64)
        if modality in self.backends:
            self.backends[modality].add(labels, x)
        else:
            self.backends[modality] = self.backend_cls.build(labels, x, self.options)
        self._next_label += len(ids)
        for i, lab, m in zip(ids, labels.tolist(), meta, strict=True):
            item = Item(i, modality, lab, m)
            self.items[i] = item
            self._by_label[lab] = item

    def _checked_vectors(self, vectors: np.ndarray, n_ids: int, n_meta: int) -> np.ndarray:
        try:
            x = normalize_rows(vectors, "vectors")
        except ValueError as err:
            raise DataError(str(err)) from None
        if len(x) != n_ids or n_meta != n_ids:
            raise DataError(f"{n_ids} ids, {len(x)} vector rows and {n_meta} metadata entries")
        if self.dim is not None and x.shape[1] != self.dim:
            raise DataError(f"vectors have dimension {x.shape[1]}; the index holds {self.dim}")
        self.dim = int(x.shape[1])
        return x

    def _check_new_ids(self, ids: list[str]) -> None:
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise DataError(f"id {dup!r} appears twice in what is being added")
        old = next((i for i in ids if i in self.items), None)
        if old is not None:
            raise DataError(f"id {old!r} is already in the index (remove it first)")

    def remove(self, ids: Sequence[str]) -> None:
        """Remove items by id (each backend drops their vectors). Unknown ids are a DataError."""
        missing = [i for i in ids if i not in self.items]
        if missing:
            raise DataError(f"id {missing[0]!r} is not in the index")
        by_modality: dict[str, list[int]] = {}
        for i in dict.fromkeys(ids):
            item = self.items.pop(i)
            del self._by_label[item.label]
            by_modality.setdefault(item.modality, []).append(item.label)
        for modality, labels in by_modality.items():
            self.backends[modality].remove(np.asarray(labels, np.int64))

    def vector(self, item_id: str) -> np.ndarray:
        """The stored vector (D,) of an item (approximate for compressed backends)."""
        item = self.item(item_id)
        return self.backends[item.modality].reconstruct(item.label)

    def item(self, item_id: str) -> Item:
        """The item with this id; a DataError naming it otherwise."""
        try:
            return self.items[item_id]
        except KeyError:
            raise DataError(f"id {item_id!r} is not in the index") from None

    def check_model(self, model_id: str) -> None:
        """Refuse query vectors embedded by another model than the index's."""
        if self.model_id and model_id != self.model_id:
            raise DataError(
                f"the query was embedded by model {model_id!r} but the index holds model "
                f"{self.model_id!r}; embed the query with the index's run"
            )

    def search(
        self,
        queries: np.ndarray,
        k: int,
        modality: str | None = None,
        model_id: str | None = None,
    ) -> list[list[Hit]]:
        """The k best items for each query, best first, optionally of one modality.

        Args:
            queries: (Q, D) query embeddings (normalised here). k: results per query (>= 1).
            modality: only items of this modality. model_id: the queries' model; when given it
                must be the index's.

        Returns:
            Q lists of up to k :class:`Hit`, scores descending.
        """
        if model_id is not None:
            self.check_model(model_id)
        if k < 1:
            raise DataError(f"k must be at least 1, got {k}")
        try:
            q = normalize_rows(queries, "query")
        except ValueError as err:
            raise DataError(str(err)) from None
        if self.dim is not None and q.shape[1] != self.dim:
            raise DataError(f"queries have dimension {q.shape[1]}; the index holds {self.dim}")
        if modality is not None and modality not in self.backends:
            known = ", ".join(self.modalities) or "none"
            raise DataError(f"no items of modality {modality!r} in the index (has: {known})")
        names = [modality] if modality else self.modalities
        parts = [self.backends[m].search(q, k) for m in names]  # each (Q, k_m) scores, labels
        return [self._merge(parts, r, k) for r in range(len(q))]

    def _merge(self, parts: list[tuple[np.ndarray, np.ndarray]], row: int, k: int) -> list[Hit]:
        hits = [
            Hit(self._by_label[lab].id, self._by_label[lab].modality, float(s))
            for scores, labels in parts
            for s, lab in zip(scores[row].tolist(), labels[row].tolist(), strict=True)
            if lab >= 0 and lab in self._by_label
        ]
        return sorted(hits, key=lambda h: -h.score)[:k]  # stable: backend order among ties

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the index as a new generation in ``folder``, atomically (module docstring)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with _lock(folder):
            number = _current_number(folder) + 1
            tmp = folder / f".tmp-gen-{number:06d}-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            self._write_generation(tmp)
            _fsync_dir(tmp)
            final = folder / f"gen-{number:06d}"
            shutil.rmtree(final, ignore_errors=True)  # left by a kill before CURRENT moved
            os.replace(tmp, final)
            _fsync_dir(folder)
            write_json_atomic(folder / "CURRENT", {"generation": final.name})
            _remove_stale(folder, keep=final.name)
        return folder

    def _write_generation(self, gen: Path) -> None:
        names = {m: f"modality-{i}" for i, m in enumerate(sorted(self.backends))}
        for modality, stem in names.items():
            self.backends[modality].save(gen / stem)
        write_json_atomic(
            gen / "index.json",
            {
                "format": FORMAT,
                "backend": self.backend,
                "options": self.options,
                "dim": self.dim,
                "model_id": self.model_id,
                "run": self.run,
                "next_label": self._next_label,
                "modalities": names,
                "n_items": len(self.items),
            },
        )
        with open(gen / "items.jsonl", "w", encoding="utf-8") as f:
            for it in self.items.values():
                f.write(
                    json.dumps(
                        {
                            "id": it.id,
                            "modality": it.modality,
                            "label": it.label,
                            "metadata": it.metadata,
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
            f.flush()
            os.fsync(f.fileno())

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Index:
        """Read the current generation of an index folder."""
        folder = Path(folder)
        if not (folder / "CURRENT").is_file():
            raise DataError(f"{folder} is not an index folder (no CURRENT file)")
        with _lock(folder):
            gen = folder / json.loads((folder / "CURRENT").read_text())["generation"]
            head = json.loads((gen / "index.json").read_text())
            if head.get("format") != FORMAT:
                raise DataError(f"{gen / 'index.json'}: unknown index format {head.get('format')}")
            index = cls(head["backend"], head["model_id"], head["run"], head["options"])
            index.dim, index._next_label = head["dim"], head["next_label"]
            for modality, stem in head["modalities"].items():
                index.backends[modality] = index.backend_cls.load(gen / stem)
            index._read_items(gen / "items.jsonl")
        return index

    def _read_items(self, path: Path) -> None:
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                item = Item(row["id"], row["modality"], int(row["label"]), row["metadata"])
                self.items[item.id] = item
                self._by_label[item.label] = item


def _lock(folder: Path) -> Any:
    class _Lock(FileLock):
        def __enter__(self) -> Any:
            try:
                return super().__enter__()
            except Timeout:
                raise DataError(
                    f"{folder} is locked by another process (file {self.lock_file})"
                ) from None

    return _Lock(str(folder / ".lock"), timeout=LOCK_TIMEOUT_S)


def _current_number(folder: Path) -> int:
    if not (folder / "CURRENT").is_file():
        return 0
    name = json.loads((folder / "CURRENT").read_text())["generation"]
    return int(name.split("-")[1])


def _remove_stale(folder: Path, keep: str) -> None:
    """Delete older generations and temporary folders left by killed saves."""
    for p in folder.iterdir():
        if (
            p.is_dir()
            and p.name != keep
            and (p.name.startswith("gen-") or p.name.startswith(".tmp-gen-"))
        ):
            shutil.rmtree(p, ignore_errors=True)
