"""Batch samplers for training: which rows share a batch (and so serve as each other's negatives).

* ``random``: shuffled rows cut into batches (:class:`~modalign.data.paired.EpochBatches`).
* ``unique_groups`` (the default): no two rows of one group in a batch, so that a loss that
  assumes one positive per row never meets a second one, and the batch's negatives are all
  different items; and every row's explicit negatives (a manifest's ``negatives`` column, or the
  ``data.negatives`` file that ``modalign mine`` writes) join its batch, where the contrastive
  loss pushes them below the positive. A negative may so appear in several batches of an epoch.
* ``length_buckets``: ``unique_groups`` over rows of similar lengths (clips, texts), for
  encoders trained on raw items: a batch pads to its longest item, so mixing a 1 s clip with a
  3 s one computes 2 s of padding. The shuffled rows are cut into pools of ``POOL_BATCHES``
  batches, each pool sorted by length, and the batches are then shuffled (the bucketing of
  fairseq's and AllenNLP's samplers). Batches change, so results differ from ``unique_groups``.

Explicit negatives are ids of other rows, separated by ``|``; only train rows are used (a val
or test row would leak into training); a negative in the row's own group is an error.

Example:
    >>> rows, groups = np.arange(6), np.array([0, 0, 0, 1, 2, 3])
    >>> s = UniqueGroupBatches(rows, groups, batch_size=3, seed=0)
    >>> all(len(set(groups[b])) == len(b) for b in s)
    True
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modalign.config import TrainConfig
from modalign.data.manifest import Manifest, read_table
from modalign.data.paired import EpochBatches, PairedData
from modalign.encoders.base import Encoder
from modalign.errors import ConfigError, DataError
from modalign.registry import Registry

log = logging.getLogger(__name__)

SEPARATOR = "|"

SamplerFactory = Callable[[PairedData, TrainConfig, int, int], EpochBatches]
"""``(data, train config, rank, world size) -> sampler`` of this process's share of each batch."""

SAMPLERS: Registry[SamplerFactory] = Registry("sampler")


class UniqueGroupBatches(EpochBatches):
    """Shuffled batches with at most one row per group, each row followed by its negatives.

    Rows are taken in a seeded shuffled order; a row whose group is already in the batch, or
    whose negatives do not fit in what is left of it, waits for the next batch (first in line). The last partial batch is dropped when there is a full
    one. Batches have ``min(batch_size, number of groups)`` rows.

    Args:
        rows: (N,) row indices to sample. groups: group id of every manifest row (indexed by row).
        batch_size, seed, shuffle, rank, world_size: as :class:`EpochBatches`.
        negatives: row -> its explicit negative rows.
    """

    def __init__(
        self,
        rows: np.ndarray,
        groups: np.ndarray,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        negatives: Mapping[int, Sequence[int]] | None = None,
    ) -> None:
        super().__init__(rows, batch_size, seed, shuffle, rank, world_size)
        self.groups, self.negatives = groups, dict(negatives or {})
        n_groups = len(np.unique(groups[rows]))
        self.size = min(batch_size, n_groups) if len(rows) else batch_size
        # every row its own group and no negatives: no row ever waits, batches are plain slices
        self._slices = n_groups == len(rows) and not self.negatives
        self._cache: tuple[int, list[list[int]]] | None = None

    def global_batches(self) -> list[list[int]]:
        """This epoch's global batches (the same on every process)."""
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        order = self.epoch_order()
        batches: list[list[int]] = []
        if self._slices:  # what the loop below yields then, without a Python step per row
            stops = range(self.size, len(order) + 1, self.size)
            batches = [order[stop - self.size : stop].tolist() for stop in stops]
        else:
            pending = deque(int(r) for r in order)
            while pending:
                batch, crowded = self._fill(pending)
                if len(batch) < self.size and not crowded and batches:
                    break  # the rows left all share the batch's groups: the epoch's tail
                batches.append(batch)
        batches = self.arrange(batches)
        self._cache = (self.epoch, batches)
        return batches

    def epoch_order(self) -> np.ndarray:
        """The order rows are taken in this epoch: a seeded shuffle."""
        if not self.shuffle:
            return self.rows
        return self.rows[np.random.default_rng([self.seed, self.epoch]).permutation(len(self.rows))]

    def arrange(self, batches: list[list[int]]) -> list[list[int]]:
        """The order of the epoch's batches (as filled)."""
        return batches

    def _fill(self, pending: deque[int]) -> tuple[list[int], bool]:
        """One batch from the front of ``pending`` (rows of groups already in it wait), and
        whether a row waits only because its negatives did not fit (the batch is as full as
        rows with negatives allow)."""
        batch: list[int] = []
        seen: set[int] = set()
        waiting: list[int] = []
        crowded = False
        while pending and len(batch) < self.size:
            r = pending.popleft()
            negs = [x for x in self.negatives.get(r, ()) if self.groups[x] not in seen]
            room = self.size - len(batch)
            no_room = room < 1 + len(negs) and bool(batch) and bool(negs)
            if self.groups[r] in seen or no_room:
                waiting.append(r)  # next batch: its group is taken, or its negatives do not fit
                crowded = crowded or (no_room and self.groups[r] not in seen)
                continue
            for x in (r, *negs):
                if len(batch) < self.size and self.groups[x] not in seen:
                    batch.append(x)
                    seen.add(int(self.groups[x]))
        pending.extendleft(reversed(waiting))
        return batch, crowded

    def __len__(self) -> int:
        return max(1, len(self.global_batches()))

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            shard = len(batch) // self.world_size
            yield batch[self.rank * shard : (self.rank + 1) * shard]


def row_groups(manifest: Manifest) -> np.ndarray:
    """(N,) group of every row: the manifest's groups, or each row its own."""
    if manifest.groups is not None:
        return manifest.groups
    return np.arange(len(manifest), dtype=np.int64)


def parse_negatives(
    ids: Sequence[str], cells: Sequence[str | None], where: str, manifest: Manifest
) -> dict[int, list[int]]:
    """Row -> negative rows from ``|``-separated id cells (``ids[i]`` names the row of ``cells[i]``).

    Raises ``DataError`` naming ``where`` and the line for an unknown id or a negative in the
    row's own group.
    """
    row_of = {key: i for i, key in enumerate(manifest.ids)}
    groups = row_groups(manifest)
    out: dict[int, list[int]] = {}
    for line, (key, cell) in enumerate(zip(ids, cells, strict=True)):
        if not cell:
            continue
        for name in (key, *(c.strip() for c in cell.split(SEPARATOR) if c.strip())):
            if name not in row_of:
                raise DataError(f"{where}, row {line + 1}: negatives: unknown id {name!r}")
        r = row_of[key]
        negs = [row_of[c.strip()] for c in cell.split(SEPARATOR) if c.strip()]
        for n in negs:
            if groups[n] == groups[r]:
                raise DataError(
                    f"{where}, row {line + 1}: negatives: {manifest.ids[n]!r} is in the group of {key!r} (a positive)"
                )
        out.setdefault(r, []).extend(negs)
    return out


def load_negatives(data: PairedData, path: str = "") -> dict[int, list[int]]:
    """Explicit negatives of the train rows, from the manifest's ``negatives`` column and the
    file ``path`` (a table with ``id`` and ``negatives`` columns); non-train negatives dropped."""
    manifest = data.manifest
    found: dict[int, list[int]] = {}
    if manifest.negatives is not None:
        found = parse_negatives(manifest.ids, manifest.negatives, str(manifest.path), manifest)
    if path:
        table = read_table(Path(path))
        for col in ("id", "negatives"):
            if col not in table:
                raise DataError(f"{path}: no column {col!r} (columns: {', '.join(table)})")
        ids = [c or "" for c in table["id"]]
        for r, negs in parse_negatives(ids, table["negatives"], path, manifest).items():
            found.setdefault(r, []).extend(negs)
    train = np.zeros(len(manifest), dtype=bool)
    train[data.rows("train")] = True
    kept = {r: [n for n in negs if train[n]] for r, negs in found.items() if train[r]}
    dropped = sum(len(v) for v in found.values()) - sum(len(v) for v in kept.values())
    if dropped:
        log.warning(
            "explicit negatives: %d outside the train split (or of non-train rows) left out",
            dropped,
        )
    return {r: list(dict.fromkeys(v)) for r, v in kept.items() if v}


#: Batches per pool sorted by length: larger pools pad less, smaller ones keep batches random.
POOL_BATCHES = 50


class LengthBucketBatches(UniqueGroupBatches):
    """:class:`UniqueGroupBatches` filled from pools of rows sorted by length, batches shuffled.

    Args:
        lengths: length of every manifest row (indexed by row; 0 where unknown).
        others: as :class:`UniqueGroupBatches`.

    Example:
        >>> rows = np.arange(8)
        >>> lengths = np.array([5, 1, 6, 2, 7, 3, 8, 4])
        >>> s = LengthBucketBatches(rows, rows, lengths, batch_size=2, seed=0)
        >>> sorted(sorted(int(lengths[r]) for r in b) for b in s)  # neighbours in length pair up
        [[1, 2], [3, 4], [5, 6], [7, 8]]
    """

    def __init__(
        self, rows: np.ndarray, groups: np.ndarray, lengths: np.ndarray, batch_size: int,
        seed: int, **kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__(rows, groups, batch_size, seed, **kwargs)
        self.lengths = np.asarray(lengths)

    def epoch_order(self) -> np.ndarray:
        order = super().epoch_order()
        pool = POOL_BATCHES * self.size
        parts = [order[i : i + pool] for i in range(0, len(order), pool)]
        # longest first within a pool; a stable sort keeps the shuffle among equal lengths
        return np.concatenate(
            [p[np.argsort(-self.lengths[p], kind="stable")] for p in parts] or [order]
        )

    def arrange(self, batches: list[list[int]]) -> list[list[int]]:
        if not self.shuffle:
            return batches
        perm = np.random.default_rng([self.seed, self.epoch, 1]).permutation(len(batches))
        return [batches[i] for i in perm]


def row_lengths(data: PairedData) -> np.ndarray:
    """Per manifest row, the largest ``item_length`` of its raw items (0: none known)."""
    lengths = np.zeros(len(data.manifest.ids), dtype=np.int64)
    known = False
    for m, enc in data.encoders.items():
        if m in data.stores or type(enc).item_length is Encoder.item_length:
            continue
        known = True
        for r in data.rows("train")[data.present[m][data.rows("train")]]:
            cell = data.keys[m][r]
            cell = str(data.manifest.resolve(cell)) if enc.reads_files else cell
            lengths[r] = max(lengths[r], enc.item_length(cell) or 0)
    if not known:
        raise ConfigError(
            "train.sampler length_buckets: no modality is read by an encoder that knows its "
            "items' lengths (raw audio or text); use unique_groups"
        )
    return lengths


@SAMPLERS.register("length_buckets")
def length_bucket_batches(
    data: PairedData, cfg: TrainConfig, rank: int, world: int
) -> EpochBatches:
    """``unique_groups`` over pools of rows sorted by the length of their raw items."""
    return LengthBucketBatches(
        data.rows("train"), row_groups(data.manifest), row_lengths(data), cfg.batch_size,
        cfg.seed, rank=rank, world_size=world, negatives=load_negatives(data, data.negatives_path),
    )  # fmt: skip


@SAMPLERS.register("random")
def random_batches(data: PairedData, cfg: TrainConfig, rank: int, world: int) -> EpochBatches:
    """Shuffled batches, duplicates allowed (explicit negatives need ``unique_groups``)."""
    if data.manifest.negatives is not None or data.negatives_path:
        raise ConfigError("explicit negatives need train.sampler=unique_groups")
    return EpochBatches(data.rows("train"), cfg.batch_size, cfg.seed, rank=rank, world_size=world)


@SAMPLERS.register("unique_groups")
def unique_group_batches(data: PairedData, cfg: TrainConfig, rank: int, world: int) -> EpochBatches:
    """At most one row per group in a batch, explicit negatives with their rows."""
    return UniqueGroupBatches(
        data.rows("train"), row_groups(data.manifest), cfg.batch_size, cfg.seed,
        rank=rank, world_size=world, negatives=load_negatives(data, data.negatives_path),
    )  # fmt: skip


def build_sampler(
    data: PairedData, cfg: TrainConfig, rank: int = 0, world: int = 1
) -> EpochBatches:
    """The sampler ``cfg.sampler`` names, for this process."""
    if cfg.sampler not in SAMPLERS:
        known = ", ".join(SAMPLERS.names())
        raise ConfigError(f"train.sampler {cfg.sampler!r} is unknown; known: {known}")
    return SAMPLERS.get(cfg.sampler)(data, cfg, rank, world)
