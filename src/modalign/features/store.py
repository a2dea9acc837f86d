"""Precomputed features per modality, with the ids they belong to, read without loading them whole.

Two on-disk forms:

* ``NAME.npy`` (float32/float16, shape (N, D)) with ``NAME.ids.json`` beside it (a JSON list of N
  string ids). The array is memory-mapped: only the rows a batch needs are read. Files written by
  modalign hold ``{"ids": [...], "array": {"fingerprint": ...}}`` instead: the two files are
  renamed into place one after the other, and a kill between the renames would leave a new array
  beside the old ids (of the same length, when the same items were re-embedded); the fingerprint
  of the array the ids were written for turns that into an error instead of silently mispaired rows.
* ``NAME.safetensors`` with one tensor ``features`` (N, D) and the ids as JSON in the metadata
  key ``ids``. safetensors files are memory-mapped by ``safe_open`` as well.

An id is whatever the manifest's cell for that modality holds (a path, a text, or any key), so the
manifest used to compute features is the same one used to train on them.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "text.npy"
    >>> write_features(path, ["a", "b"], np.ones((2, 3), dtype=np.float32))
    >>> store = FeatureStore.open(path)
    >>> store.dim, len(store), store.rows(["b"]).shape
    (3, 2, (1, 3))
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from modalign.errors import DataError
from modalign.io import atomic_path


def ids_path(npy_path: Path) -> Path:
    """The ids file that belongs to ``npy_path`` (``x.npy`` -> ``x.ids.json``)."""
    return npy_path.with_suffix(".ids.json")


class FeatureStore:
    """Read-only, memory-mapped features of one modality, looked up by id."""

    def __init__(
        self, path: Path, array: np.ndarray, ids: list[str], encoder: str | None = None
    ) -> None:
        self.path = path
        self.array = array  # (N, D), memory-mapped
        self.ids = ids
        self.encoder = encoder  # cache key of the encoder that wrote it (None: unknown)
        self.index = {key: i for i, key in enumerate(ids)}
        if len(self.index) != len(ids):
            seen: set[str] = set()
            dup = next(key for key in ids if key in seen or seen.add(key))  # type: ignore[func-returns-value]
            raise DataError(f"{path}: duplicate id {dup!r} in the feature ids")
        if array.ndim != 2 or array.shape[0] != len(ids):
            raise DataError(
                f"{path}: features have shape {array.shape} but there are {len(ids)} ids"
            )
        if array.shape[1] == 0:
            raise DataError(f"{path}: features have shape {array.shape}: no feature columns")
        if not np.issubdtype(array.dtype, np.floating):
            raise DataError(
                f"{path}: features must be floats (float16, float32 or float64), got {array.dtype}"
            )

    @classmethod
    def open(cls, path: str | Path) -> FeatureStore:
        """Open a ``.npy`` (with ``.ids.json``) or ``.safetensors`` feature file."""
        path = Path(path)
        if not path.exists():
            raise DataError(f"{path}: feature file not found")
        if path.suffix == ".npy":
            return cls._open_npy(path)
        if path.suffix == ".safetensors":
            return cls._open_safetensors(path)
        raise DataError(f"{path}: unknown feature file type (expected .npy or .safetensors)")

    @classmethod
    def _open_npy(cls, path: Path) -> FeatureStore:
        id_file = ids_path(path)
        if not id_file.exists():
            raise DataError(f"{path}: ids file {id_file.name} not found beside it")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, EOFError, OSError) as err:
            why = "the file is empty" if isinstance(err, EOFError) else _one_line(err)
            raise DataError(f"{path}: not a readable .npy array ({why})") from None
        if not isinstance(array, np.ndarray):  # np.load reads a .npz archive despite the suffix
            raise DataError(f"{path}: not a .npy array (an .npz archive?)")
        ids, fingerprint, encoder = _read_ids(id_file)
        if fingerprint is not None and fingerprint != array_fingerprint(array):
            raise DataError(
                f"{id_file}: these ids were written for another version of {path.name} (an "
                "interrupted write?); run the command that wrote them again"
            )
        return cls(path, array, ids, encoder)

    @classmethod
    def _open_safetensors(cls, path: Path) -> FeatureStore:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="np") as f:
                meta = f.metadata() or {}
                if "features" not in f.keys():  # noqa: SIM118 (safe_open is no dict)
                    raise DataError(f"{path}: no tensor named 'features'")
                array = f.get_tensor("features")
        except (SafetensorError, OSError, ValueError, TypeError) as err:
            raise DataError(
                f"{path}: not a readable .safetensors file ({_one_line(err)})"
            ) from None
        if "ids" not in meta:
            raise DataError(f"{path}: metadata has no 'ids' entry")
        return cls(path, array, _parse_ids(meta["ids"], path), meta.get("encoder"))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.array.shape[1])

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """Float32 (len(keys), D) features of ``keys``, in order."""
        try:
            positions = [self.index[key] for key in keys]
        except KeyError as err:
            raise DataError(f"{self.path}: no features for id {err.args[0]!r}") from None
        return self.take(np.asarray(positions, dtype=np.int64))

    def take(self, positions: np.ndarray) -> np.ndarray:
        """Float32 (len(positions), D) features of the rows at ``positions`` (from ``index``)."""
        order = np.argsort(positions)  # sorted reads are kinder to the page cache
        out = np.empty((len(positions), self.dim), dtype=np.float32)
        out[order] = self.array[positions[order]]
        return out


def array_fingerprint(array: np.ndarray) -> str:
    """A cheap content fingerprint of a C-ordered array: shape, dtype, first and last MiB.

    Enough to tell two versions of a feature file apart (re-embedding changes the first rows),
    without reading a multi-gigabyte memory-mapped array whole.
    """
    import hashlib

    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)  # no copy for C-ordered arrays
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((tuple(array.shape), array.dtype.str)).encode())
    h.update(flat[: 1 << 20].tobytes())
    h.update(flat[-(1 << 20) :].tobytes())
    return h.hexdigest()


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__


def _read_ids(path: Path) -> tuple[list[str], str | None, str | None]:
    """The ids of a ``.ids.json`` file, and the fingerprint of its array and the encoder's cache
    key where it records them."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the ids ({_one_line(err)})") from None
    data = _load_json(text, path)
    if isinstance(data, dict):
        array = data.get("array")
        fingerprint = array.get("fingerprint") if isinstance(array, dict) else None
        encoder = data.get("encoder")
        return (
            _check_ids(data.get("ids"), path),
            fingerprint,
            encoder if isinstance(encoder, str) else None,
        )
    return _check_ids(data, path), None, None


def _parse_ids(text: str, path: Path) -> list[str]:
    return _check_ids(_load_json(text, path), path)


def _load_json(text: str, path: Path) -> object:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise DataError(f"{path}: ids are not valid JSON ({_one_line(err)})") from None


def _check_ids(ids: object, path: Path) -> list[str]:
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DataError(f'{path}: ids must be a JSON list of strings (or {{"ids": [...]}})')
    return ids


def write_features(
    path: str | Path, ids: Sequence[str], features: np.ndarray, encoder: str | None = None
) -> None:
    """Write features and their ids atomically (array first, then the ids with the array's
    fingerprint: a kill between the two renames is detected when the store is opened).

    ``encoder`` is the cache key of the encoder that made them (it names its weights), recorded
    so that a model trained on these features can embed new raw items with the same encoder.
    """
    path = Path(path)
    features = np.ascontiguousarray(features, dtype=np.float32)
    if features.shape[0] != len(ids):
        raise DataError(f"{path}: {features.shape[0]} feature rows for {len(ids)} ids")
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        with atomic_path(path) as tmp:
            meta = {"ids": json.dumps(list(ids)), **({"encoder": encoder} if encoder else {})}
            save_file({"features": features}, str(tmp), metadata=meta)
        return
    if path.suffix != ".npy":
        raise DataError(f"{path}: unknown feature file type (expected .npy or .safetensors)")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, features)
    record: dict[str, object] = {
        "ids": list(ids),
        "array": {"fingerprint": array_fingerprint(features)},
    }
    if encoder:
        record["encoder"] = encoder
    with atomic_path(ids_path(path)) as tmp:
        tmp.write_text(json.dumps(record), encoding="utf-8")
