"""Run frozen encoders over a manifest into feature stores, with a resumable on-disk cache.

Each modality's distinct cells are embedded once. Results go to a cache folder per encoder
(``cache_dir/<modality>/<hash of encoder.cache_key()>/``, which includes the weights hash) as
shards written atomically every ``shard_size`` items, keyed by item: a file cell by its resolved
path, size and modification time, a text cell by the text. A re-run, or a run killed half way and
started again, only computes what no complete shard holds; a half-written shard is a ``.tmp``
file that is never read. The feature store (``out[modality]``) is then written from the cache
(atomically, ids last) with the manifest's cells as ids, ready for the ``precomputed`` encoder.

Items that an encoder cannot read here (``ItemSkipped``, e.g. SVGs without a rasteriser) are left
out of the store, not cached (a later run with the missing library retries them), and counted.

Example:
    >>> import tempfile, pathlib
    >>> from modalign.data.manifest import read_manifest
    >>> from modalign.encoders.features import PrecomputedEncoder
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "m.csv").write_text("text\\nhello\\nworld\\n")
    >>> class Lengths(PrecomputedEncoder):
    ...     input_kind = "raw"
    ...     def load(self, cell): return torch.tensor([float(len(cell))])
    >>> out = embed_manifest(read_manifest(d / "m.csv"), {"text": Lengths("text", 1)}, {"text": d / "t.npy"}, progress=False)
    >>> out["text"].n_items, out["text"].n_computed
    (2, 2)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from modalign.data.manifest import Manifest
from modalign.encoders.base import Encoder
from modalign.encoders.common import ItemSkipped
from modalign.errors import ConfigError, DataError
from modalign.features.cache import FeatureCache, digest, file_key
from modalign.features.store import write_features

log = logging.getLogger(__name__)

#: ``skipped`` reason of items whose file could not be read (with ``skip_unreadable=True``).
UNREADABLE = "unreadable"


@dataclass(frozen=True)
class EmbedResult:
    """What ``embed_manifest`` did for one modality.

    Attributes:
        path: the feature store written. n_items: distinct cells in it. n_cached: of those, found
        in the cache. n_computed: computed in this run. skipped: reason -> count of items left
        out. seconds: wall time for this modality.
    """

    modality: str
    path: Path
    n_items: int
    n_cached: int
    n_computed: int
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class _LoadDataset(torch.utils.data.Dataset[tuple[int, Any]]):
    """Loads item ``i`` with ``encoder.load``; an ``ItemSkipped`` is returned, not raised."""

    def __init__(self, encoder: Encoder, sources: Sequence[str]) -> None:
        self.encoder, self.sources = encoder, sources

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        try:
            return i, self.encoder.load(self.sources[i])
        except ItemSkipped as skip:
            return i, skip
        except (
            DataError
        ) as err:  # re-raised (or counted) by the main process, without a worker traceback
            return i, ItemSkipped(UNREADABLE, str(err))


class _Collate:
    """Batches loaded items with ``encoder.collate``, setting skipped ones aside."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder

    def __call__(
        self, items: Sequence[tuple[int, Any]]
    ) -> tuple[list[int], list[tuple[int, ItemSkipped]], Any]:
        ok = [(i, x) for i, x in items if not isinstance(x, ItemSkipped)]
        skipped = [(i, x) for i, x in items if isinstance(x, ItemSkipped)]
        batch = self.encoder.collate([x for _, x in ok]) if ok else None
        return [i for i, _ in ok], skipped, batch


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # loaders decode; the main process's threads run the model


def item_keys(
    cells: Sequence[str], encoder: Encoder, resolve: Callable[[str], Path]
) -> tuple[list[str], list[str]]:
    """Sources to load and cache keys: file cells by resolved path + size + mtime, texts by text."""
    if not encoder.reads_files:
        return list(cells), [digest("text\0" + c) for c in cells]
    sources, keys = [], []
    for cell in cells:
        path = resolve(cell).resolve()
        try:
            keys.append(file_key(path))
        except OSError:
            raise DataError(f"file {str(path)!r} (manifest cell {cell!r}) not found") from None
        sources.append(str(path))
    return sources, keys


def embed_cells(
    cells: Sequence[str],
    encoder: Encoder,
    cache: FeatureCache,
    resolve: Callable[[str], Path] = Path,
    batch_size: int = 32,
    num_workers: int | None = None,
    shard_size: int = 256,
    progress: bool = True,
    skip_unreadable: bool = False,
) -> tuple[list[str], np.ndarray, int, dict[str, int]]:
    """Features of distinct ``cells`` through the cache: (ids kept, (N, D) rows, n_cached, skipped)."""
    sources, keys = item_keys(cells, encoder, resolve)
    rows = cache.read()
    todo = [i for i, k in enumerate(keys) if k not in rows]
    n_cached = len(cells) - len(todo)
    skipped: dict[str, int] = {}
    if todo:
        workers = (
            (min(2, os.cpu_count() or 1) if encoder.reads_files else 0)
            if num_workers is None
            else num_workers
        )
        loader = torch.utils.data.DataLoader(
            _LoadDataset(encoder, [sources[i] for i in todo]),
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=_Collate(encoder),
            worker_init_fn=_one_thread if workers else None,
        )
        pending_keys: list[str] = []
        pending_rows: list[np.ndarray] = []
        bar = tqdm(
            total=len(todo), desc=f"embed {encoder.modality}", unit="item", disable=not progress
        )
        encoder.eval()
        for positions, skips, batch in loader:
            for _, skip in skips:
                if skip.reason == UNREADABLE and not skip_unreadable:
                    raise DataError(
                        f"{skip} (skip such items with skip_unreadable=True / --skip-unreadable)"
                    )
                if skip.reason == UNREADABLE:
                    log.warning("skipping %s", skip)
                skipped[skip.reason] = skipped.get(skip.reason, 0) + 1
            if batch is not None:
                with torch.inference_mode():
                    feats = encoder(batch).float().cpu().numpy()  # (B, D)
                pending_keys += [keys[todo[p]] for p in positions]
                pending_rows += list(feats)
            if len(pending_keys) >= shard_size:
                cache.write(pending_keys, np.stack(pending_rows))
                rows.update(zip(pending_keys, pending_rows, strict=True))
                pending_keys, pending_rows = [], []
            bar.update(len(positions) + len(skips))
        bar.close()
        if pending_keys:
            cache.write(pending_keys, np.stack(pending_rows))
            rows.update(zip(pending_keys, pending_rows, strict=True))
    kept = [i for i, k in enumerate(keys) if k in rows]
    array = (
        np.stack([rows[keys[i]] for i in kept])
        if kept
        else np.zeros((0, encoder.output_dim), np.float32)
    )
    return [cells[i] for i in kept], array, n_cached, skipped


def embed_manifest(
    manifest: Manifest,
    encoders: Mapping[str, Encoder],
    out: Mapping[str, str | Path],
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    shard_size: int = 256,
    progress: bool = True,
    skip_unreadable: bool = False,
) -> dict[str, EmbedResult]:
    """Embed every modality of ``encoders`` over the manifest into the feature store ``out[modality]``.

    Args:
        manifest: from ``read_manifest``; file cells are resolved against its folder.
        encoders: modality -> frozen raw encoder (``input_kind == "raw"``, ``frozen``).
        out: modality -> feature file (``.npy`` with ``.ids.json`` beside it, or ``.safetensors``).
        cache_dir: cache root; default ``<folder of the first output>/cache``.
        batch_size: items per forward pass. num_workers: DataLoader workers (default: 2 for
            file-reading encoders on a machine with 2+ cores, 0 for inline texts).
        shard_size: items per cache shard (how much work a kill can lose).
        progress: show a tqdm progress bar per modality.
        skip_unreadable: leave out (and count) files that cannot be decoded, instead of raising
            the ``DataError`` that names the first one.

    Returns:
        modality -> ``EmbedResult`` (path, counts, skipped items by reason, seconds).
    """
    missing = [m for m in encoders if m not in out]
    if missing:
        raise ConfigError(f"no output feature file for modality {missing[0]!r}")
    root = (
        Path(cache_dir)
        if cache_dir is not None
        else Path(next(iter(out.values()))).parent / "cache"
    )
    results: dict[str, EmbedResult] = {}
    for modality, encoder in encoders.items():
        _check_encoder(modality, encoder, manifest)
        start = time.perf_counter()
        cells = list(dict.fromkeys(c for c in manifest.cells[modality] if c is not None))
        key = encoder.cache_key()
        cache = FeatureCache(root / modality / digest(key)[:16], key)
        ids, array, n_cached, skipped = embed_cells(
            cells,
            encoder,
            cache,
            manifest.resolve,
            batch_size,
            num_workers,
            shard_size,
            progress,
            skip_unreadable,
        )
        path = Path(out[modality])
        write_features(path, ids, array)
        if skipped:
            log.warning("%s: skipped %d item(s): %s", modality, sum(skipped.values()), skipped)
        results[modality] = EmbedResult(
            modality,
            path,
            len(ids),
            n_cached,
            len(ids) - n_cached,
            skipped,
            time.perf_counter() - start,
        )
    return results


def _check_encoder(modality: str, encoder: Encoder, manifest: Manifest) -> None:
    if modality not in manifest.cells:
        raise DataError(f"{manifest.path}: no column {modality!r} to embed")
    if encoder.input_kind != "raw":
        raise ConfigError(
            f"encoder for {modality!r} reads features, not raw items: nothing to embed"
        )
    if not encoder.frozen:
        raise ConfigError(
            f"encoder {type(encoder).__name__} for {modality!r} is trainable (frozen: false): its features "
            "change during training, so they cannot be precomputed"
        )
