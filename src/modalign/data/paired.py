"""Paired data for training and evaluation: manifest rows, feature look-ups, raw-item loading.

``PairedData`` checks everything on load (feature ids, NaN/inf, files, splits, rows per modality)
and raises a ``DataError`` naming the file, row and field, unless ``skip_bad_rows`` is set, in
which case bad rows are dropped and reported (count and ids), never silently.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from modalign.config import DataConfig
from modalign.data.manifest import Manifest, assign_splits
from modalign.encoders import Encoder
from modalign.errors import DataError
from modalign.features.frames import FrameEncoder, attach_frame_cache
from modalign.features.store import FeatureStore

log = logging.getLogger(__name__)

_CHECK_CHUNK = 8192  # rows read at a time when scanning features for NaN/inf


@dataclass
class Batch:
    """One batch of rows.

    Attributes:
        rows: (B,) manifest row indices. present: modality -> (B,) bool mask.
        inputs: modality -> collated inputs of its present rows only (B_m rows, in row order).
        groups: (B,) group ids, or None when the manifest has no groups.
    """

    rows: Tensor
    present: dict[str, Tensor]
    inputs: dict[str, Any]
    groups: Tensor | None


@dataclass(frozen=True)
class SkipReport:
    """Rows dropped by ``skip_bad_rows``: their ids and why."""

    reasons: dict[str, str]

    def summary(self) -> str:
        ids = ", ".join(list(self.reasons)[:10]) + (" ..." if len(self.reasons) > 10 else "")
        return f"skipped {len(self.reasons)} bad row(s): {ids}"


def open_feature_stores(
    cfg: DataConfig, modalities: Sequence[str], feature_kinds: Mapping[str, bool]
) -> dict[str, FeatureStore]:
    """Open the feature store of every modality whose encoder reads features."""
    stores = {}
    for m in modalities:
        if not feature_kinds[m]:
            continue
        if m not in cfg.features:
            raise DataError(
                f"modality {m!r} reads precomputed features but data.features has no entry for it"
            )
        stores[m] = FeatureStore.open(cfg.features[m])
    return stores


class PairedData:
    """Rows of a manifest, checked, with their splits, ready to be batched.

    Args:
        manifest: the read manifest. stores: modality -> feature store (feature encoders).
        encoders: modality -> encoder (raw encoders load and collate their own items).
        cfg: the data config (splits, skip_bad_rows, min_rows).
    """

    def __init__(
        self,
        manifest: Manifest,
        stores: Mapping[str, FeatureStore],
        encoders: Mapping[str, Encoder],
        cfg: DataConfig,
    ) -> None:
        self.manifest = manifest
        self.negatives_path = cfg.negatives  # explicit negatives file (modalign.data.samplers)
        self.stores = dict(stores)
        self.encoders = dict(encoders)
        self.modalities = list(encoders)
        self.splits = np.asarray(assign_splits(manifest, cfg.split_fractions, cfg.split_seed))
        self.present = {
            m: np.array([c is not None for c in manifest.cells[m]]) for m in self.modalities
        }
        self.label_names, self.labels = manifest.label_indices()
        self.keys: dict[str, list[str]] = {
            m: [c or "" for c in manifest.cells[m]] for m in self.modalities
        }
        # store row of every manifest row (-1: none), so batches skip the id look-ups
        self.positions = {
            m: np.array([store.index.get(k, -1) for k in self.keys[m]], dtype=np.int64)
            for m, store in self.stores.items()
        }
        bad = self._find_bad_rows()
        if bad and not cfg.skip_bad_rows:
            row, reason = next(iter(bad.items()))
            raise DataError(
                f"{manifest.where(row)}: {reason} (set data.skip_bad_rows=true to skip such rows)"
            )
        self.skipped = SkipReport({manifest.ids[r]: why for r, why in bad.items()})
        self.keep = np.ones(len(manifest), dtype=bool)
        self.keep[list(bad)] = False
        if bad:
            log.warning("%s", self.skipped.summary())
        self._check_sizes(cfg.min_rows)
        if cfg.frame_cache is not None:
            self._attach_frame_caches(None if cfg.frame_cache == "auto" else cfg.frame_cache)

    def _attach_frame_caches(self, root: str | None) -> None:
        """Decode once the files of encoders with a fixed front end; ``load`` then reads frames."""
        for m, enc in self.encoders.items():
            if m in self.stores or not enc.reads_files or not isinstance(enc, FrameEncoder):
                continue
            rows = np.flatnonzero(self.present[m] & self.keep)
            paths = [self.manifest.resolve(self.keys[m][r]) for r in rows]
            attach_frame_cache(enc, paths, root)

    def _find_bad_rows(self) -> dict[int, str]:
        bad: dict[int, str] = {}
        for m in self.modalities:
            rows = np.flatnonzero(self.present[m])
            if m in self.stores:
                self._check_features(m, rows, bad)
            elif self.encoders[m].reads_files:
                for r in rows:
                    path = self.manifest.resolve(self.keys[m][r])
                    if not path.is_file():
                        bad.setdefault(int(r), f"field {m!r}: file {str(path)!r} not found")
        return dict(sorted(bad.items()))

    def _check_features(self, m: str, rows: np.ndarray, bad: dict[int, str]) -> None:
        store = self.stores[m]
        found = []
        for r in rows:
            if self.keys[m][r] in store.index:
                found.append(r)
            else:
                bad.setdefault(
                    int(r), f"field {m!r}: no features for {self.keys[m][r]!r} in {store.path}"
                )
        for start in range(0, len(found), _CHECK_CHUNK):
            chunk = found[start : start + _CHECK_CHUNK]
            values = store.rows([self.keys[m][r] for r in chunk])
            for i in np.flatnonzero(~np.isfinite(values).all(axis=1)):
                bad.setdefault(
                    int(chunk[i]),
                    f"field {m!r}: features of {self.keys[m][chunk[i]]!r} in {store.path} contain NaN or inf",
                )

    def _check_sizes(self, min_rows: int) -> None:
        train = self.rows("train")
        if len(train) == 0:
            raise DataError(f"{self.manifest.path}: the train split is empty")
        for m in self.modalities:
            n = int(self.present[m][train].sum())
            if n < min_rows:
                raise DataError(
                    f"{self.manifest.path}: modality {m!r} has {n} train row(s), fewer than data.min_rows={min_rows}"
                )

    @property
    def reads_raw(self) -> bool:
        """Whether some modality is read raw (files or texts through its encoder's ``load``),
        not gathered from a feature store."""
        return set(self.stores) != set(self.modalities)

    def feature_matrix(self, modality: str) -> np.ndarray:
        """(N, D) float32 features of every manifest row from ``modality``'s feature store; NaN
        rows where the modality is missing or the row was skipped."""
        store = self.stores[modality]
        rows = np.flatnonzero(self.present[modality] & self.keep)
        out = np.full((len(self.manifest), store.dim), np.nan, dtype=np.float32)
        out[rows] = store.rows([self.keys[modality][r] for r in rows])
        return out

    def split_names(self) -> list[str]:
        """The split of every manifest row, ``"skipped"`` for rows left out as bad."""
        return [s if keep else "skipped" for s, keep in zip(self.splits, self.keep, strict=True)]

    def rows(self, split: str) -> np.ndarray:
        """Manifest row indices of a split (bad rows excluded)."""
        return np.flatnonzero((self.splits == split) & self.keep)

    def batch(self, rows: Sequence[int] | np.ndarray) -> Batch:
        """Look up or load the inputs of ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        present: dict[str, Tensor] = {}
        inputs: dict[str, Any] = {}
        for m in self.modalities:
            mask = self.present[m][rows]
            present[m] = torch.from_numpy(mask)
            sel = rows[mask]
            if len(sel) == 0:
                continue
            if m in self.stores:
                positions = self.positions[m][sel]
                if (positions < 0).any():  # a bad row (checked on load) asked for all the same
                    self.stores[m].rows([self.keys[m][r] for r in sel])  # raises, naming the id
                inputs[m] = torch.from_numpy(self.stores[m].take(positions))  # (B_m, F)
            else:
                keys = [self.keys[m][r] for r in sel]
                enc = self.encoders[m]
                cells = [str(self.manifest.resolve(k)) if enc.reads_files else k for k in keys]
                inputs[m] = enc.collate([enc.load(c) for c in cells])
        groups = (
            None if self.manifest.groups is None else torch.from_numpy(self.manifest.groups[rows])
        )
        return Batch(torch.from_numpy(rows), present, inputs, groups)


class EpochBatches(torch.utils.data.Sampler[list[int]]):
    """Shuffled batches of a split's rows; the order depends only on (seed, epoch).

    The last partial batch is dropped when there is at least one full batch (a contrastive batch
    of a few rows has almost no negatives). ``rank``/``world_size`` pick this process's
    contiguous slice of each global batch.

    Example:
        >>> s = EpochBatches(np.arange(10), batch_size=4, seed=0, shuffle=False)
        >>> list(s)
        [[0, 1, 2, 3], [4, 5, 6, 7]]
    """

    def __init__(
        self,
        rows: np.ndarray,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.rows, self.batch_size, self.seed, self.shuffle = rows, batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return max(1, len(self.rows) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.rows
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = order[rng.permutation(len(order))]
        size = min(self.batch_size, len(order))
        for start in range(0, len(order) - size + 1, size):
            batch = order[start : start + size]
            shard = len(batch) // self.world_size
            yield batch[self.rank * shard : (self.rank + 1) * shard].tolist()


class BatchDataset(torch.utils.data.Dataset[list[Batch]]):
    """Adapter so a DataLoader with ``batch_size=None`` fetches whole batches in workers.

    Each item is the batch cut into chunks of at most ``chunk_size`` rows (one chunk when
    ``chunk_size`` is None), in row order, for gradient caching.
    """

    def __init__(self, data: PairedData, chunk_size: int | None = None) -> None:
        self.data, self.chunk_size = data, chunk_size

    def __len__(self) -> int:
        return len(self.data.manifest)

    def __getitem__(self, rows: Any) -> list[Batch]:
        size = self.chunk_size or max(1, len(rows))
        return [self.data.batch(rows[i : i + size]) for i in range(0, len(rows), size)]


def merge_chunks(chunks: Sequence[Batch]) -> Batch:
    """The rows, presence masks and groups of a whole batch from its chunks (inputs left out)."""
    if len(chunks) == 1:
        return chunks[0]
    present = {m: torch.cat([c.present[m] for c in chunks]) for m in chunks[0].present}
    groups = (
        None
        if chunks[0].groups is None
        else torch.cat([c.groups for c in chunks if c.groups is not None])
    )
    return Batch(torch.cat([c.rows for c in chunks]), present, {}, groups)


def iterate_rows(data: PairedData, rows: np.ndarray, batch_size: int) -> Iterator[Batch]:
    """Batches of ``rows`` in order (for embedding a split)."""
    for start in range(0, len(rows), batch_size):
        yield data.batch(rows[start : start + batch_size])
