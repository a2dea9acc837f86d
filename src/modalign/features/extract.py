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
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from modalign import distributed
from modalign.data.manifest import Manifest
from modalign.encoders.base import Encoder
from modalign.encoders.common import ItemSkipped
from modalign.errors import ConfigError, DataError
from modalign.features.cache import FeatureCache, digest, file_key
from modalign.features.store import write_features
from modalign.io import hold_folder

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


def plan_batches(
    todo: Sequence[int], sources: Sequence[str], encoder: Encoder, batch_size: int
) -> list[list[int]]:
    """Cut the items to compute into batches, longest first when the encoder can tell lengths.

    Sorting by length (as ``SentenceTransformer.encode`` does) puts texts of similar length
    together, so a batch pads little. The batches are the same however many processes share
    them, so a distributed run computes exactly what a single process would.

    Example:
        >>> class Texts(Encoder):
        ...     def item_length(self, cell): return len(cell)
        >>> plan_batches([0, 1, 2], ["a", "ccc", "bb"], Texts("text", 1), batch_size=2)
        [[1, 2], [0]]
    """
    lengths = [encoder.item_length(sources[i]) for i in todo]
    order = list(todo)
    if all(n is not None for n in lengths):
        order = [todo[j] for j in np.argsort([-n for n in lengths], kind="stable")]  # type: ignore[operator]
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


class _ShardWriter:
    """Collects computed rows and writes them to the cache every ``shard_size`` items."""

    def __init__(self, cache: FeatureCache, shard_size: int) -> None:
        self.cache, self.shard_size = cache, shard_size
        self.keys: list[str] = []
        self.values: list[np.ndarray] = []

    def add(self, keys: Sequence[str], values: np.ndarray) -> None:
        self.keys += keys
        self.values += list(values)
        if len(self.keys) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if self.keys:
            self.cache.write(self.keys, np.stack(self.values))
            self.keys, self.values = [], []


def _count_skips(
    skips: Sequence[tuple[int, ItemSkipped]], skipped: dict[str, int], skip_unreadable: bool
) -> None:
    for _, skip in skips:
        if skip.reason == UNREADABLE and not skip_unreadable:
            raise DataError(
                f"{skip} (skip such items with skip_unreadable=True / --skip-unreadable)"
            )
        if skip.reason == UNREADABLE:
            log.warning("skipping %s", skip)
        skipped[skip.reason] = skipped.get(skip.reason, 0) + 1


def _compute(
    encoder: Encoder,
    sources: Sequence[str],
    keys: Sequence[str],
    batches: list[list[int]],
    writer: _ShardWriter,
    num_workers: int | None,
    progress: bool,
    skip_unreadable: bool,
) -> dict[str, int]:
    """Run ``encoder`` over ``batches`` of item positions into ``writer``; skipped items by reason."""
    workers = (
        (min(2, os.cpu_count() or 1) if encoder.reads_files else 0)
        if num_workers is None
        else num_workers
    )
    loader = torch.utils.data.DataLoader(
        _LoadDataset(encoder, sources),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_Collate(encoder),
        worker_init_fn=_one_thread if workers else None,
        generator=torch.Generator(),  # its workers' seed: not a draw from the run's generator
    )
    skipped: dict[str, int] = {}
    total = sum(len(b) for b in batches)
    bar = tqdm(total=total, desc=f"embed {encoder.modality}", unit="item", disable=not progress)
    encoder.eval()
    for positions, skips, batch in loader:
        _count_skips(skips, skipped, skip_unreadable)
        if batch is not None:
            with torch.inference_mode():
                feats = encoder(batch).float().cpu().numpy()  # (B, D)
            writer.add([keys[p] for p in positions], feats)
        bar.update(len(positions) + len(skips))
    writer.flush()
    bar.close()
    return skipped


def embed_cells(
    cells: Sequence[str],
    encoder: Encoder,
    cache: FeatureCache,
    resolve: Callable[[str], Path] = Path,
    batch_size: int | None = None,
    num_workers: int | None = None,
    shard_size: int = 256,
    progress: bool = True,
    skip_unreadable: bool = False,
) -> tuple[list[str], np.ndarray, int, dict[str, int]]:
    """Features of distinct ``cells`` through the cache: (ids kept, (N, D) rows, n_cached, skipped).

    Under ``torchrun`` every process takes every ``world_size``-th batch of the missing items and
    writes its own cache shards; after a barrier the first process reads the whole cache, the
    others get the ids and a (0, D) array (they write nothing). ``batch_size`` defaults to the
    encoder's ``preferred_batch_size``.
    """
    sources, keys = item_keys(cells, encoder, resolve)
    distributed.barrier()  # nobody lists the cache while another process is already filling it
    done = cache.keys()
    # ... and nobody adds to it before every process has listed it: a process listing late would
    # see another's new shard, plan other batches, and its share of the old plan went missing
    distributed.barrier()
    todo = [i for i, k in enumerate(keys) if k not in done]
    batches = plan_batches(todo, sources, encoder, batch_size or encoder.preferred_batch_size)
    mine = batches[distributed.rank() :: distributed.world_size()]
    skipped, error = {}, None
    try:
        bar = progress and distributed.rank() == 0
        writer = _ShardWriter(cache, shard_size)
        skipped = _compute(encoder, sources, keys, mine, writer, num_workers, bar, skip_unreadable)
    except DataError as err:
        if not distributed.is_distributed():
            raise
        error = str(err)  # raised below on every process, so that none waits for it forever
    skipped = _merge_processes(skipped, error)
    if distributed.rank() != 0:
        done = cache.keys()
        kept = [i for i, k in enumerate(keys) if k in done]
        return (
            [cells[i] for i in kept],
            np.zeros((0, encoder.output_dim), np.float32),
            len(cells) - len(todo),
            skipped,
        )
    rows = cache.read()
    kept = [i for i, k in enumerate(keys) if k in rows]
    array = (
        np.stack([rows[keys[i]] for i in kept])
        if kept
        else np.zeros((0, encoder.output_dim), np.float32)
    )
    return [cells[i] for i in kept], array, len(cells) - len(todo), skipped


def _merge_processes(skipped: dict[str, int], error: str | None) -> dict[str, int]:
    """Once every process has computed its share: skip counts summed, any process's error raised."""
    distributed.barrier()  # every process's shards are on disk
    reports = distributed.all_gather_objects((skipped, error))
    errors = [e for _, e in reports if e is not None]
    if errors:
        raise DataError(errors[0])
    total: dict[str, int] = {}
    for counts, _ in reports:
        for reason, n in counts.items():
            total[reason] = total.get(reason, 0) + n
    return total


def embed_manifest(
    manifest: Manifest,
    encoders: Mapping[str, Encoder],
    out: Mapping[str, str | Path],
    cache_dir: str | Path | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    shard_size: int = 256,
    progress: bool = True,
    skip_unreadable: bool = False,
) -> dict[str, EmbedResult]:
    """Embed every modality of ``encoders`` over the manifest into the feature store ``out[modality]``.

    Under ``torchrun`` each process computes a share of the batches into the shared cache and the
    first process writes the stores, the same bytes a single process writes.

    Args:
        manifest: from ``read_manifest``; file cells are resolved against its folder.
        encoders: modality -> frozen raw encoder (``input_kind == "raw"``, ``frozen``).
        out: modality -> feature file (``.npy`` with ``.ids.json`` beside it, or ``.safetensors``).
        cache_dir: cache root; default ``<folder of the first output>/cache``.
        batch_size: items per forward pass; default each encoder's ``preferred_batch_size``.
        num_workers: DataLoader workers (default: 2 for file-reading encoders on a machine with
            2+ cores, 0 for inline texts).
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
    first = Path(next(iter(out.values()))).parent / "cache"
    root = Path(cache_dir) if cache_dir is not None else first
    options = {"batch_size": batch_size, "num_workers": num_workers, "shard_size": shard_size}
    options |= {"progress": progress, "skip_unreadable": skip_unreadable}
    return {
        m: _embed_modality(manifest, m, enc, Path(out[m]), root, options)
        for m, enc in encoders.items()
    }


def _embed_modality(
    manifest: Manifest,
    modality: str,
    encoder: Encoder,
    path: Path,
    root: Path,
    options: dict[str, Any],
) -> EmbedResult:
    """One modality of ``embed_manifest``: its distinct cells through the cache into ``path``."""
    _check_encoder(modality, encoder, manifest)
    start = time.perf_counter()
    cells = list(dict.fromkeys(c for c in manifest.cells[modality] if c is not None))
    key = encoder.cache_key()
    folder = root / modality / digest(key)[:16]
    # one writer per cache folder (under torchrun the first process holds it for all)
    lock = hold_folder(folder, f"embed {modality}") if distributed.rank() == 0 else nullcontext()
    with lock:
        cache = FeatureCache(folder, key)
        ids, array, n_cached, skipped = embed_cells(
            cells, encoder, cache, manifest.resolve, **options
        )
        if distributed.rank() == 0:
            write_features(path, ids, array, encoder=key)
        distributed.barrier()  # the store is on disk before any process returns
    if skipped:
        log.warning("%s: skipped %d item(s): %s", modality, sum(skipped.values()), skipped)
    seconds = time.perf_counter() - start
    return EmbedResult(modality, path, len(ids), n_cached, len(ids) - n_cached, skipped, seconds)


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
