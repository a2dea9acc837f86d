"""The frame cache: a front end's variable-length output per file, computed once and memory-mapped.

A trainable audio encoder (``audio_conv``) cannot have its *features* cached (they change as it
learns), but its front end (decode, mix to mono, resample, log-mel) is fixed. Decoding and
resampling every clip every epoch costs far more than the network itself, so the front end's
output, (T_i, n_mels) frames for clip i with T_i varying, is computed once and kept here. Every
epoch after the first reads a slice of a memory-mapped array instead.

Layout: one folder per front-end configuration (``root/<hash of encoder.frame_key()>/``), keyed
per item like the feature cache (resolved path, size and modification time: a changed file is
recomputed). Each shard is two files:

* ``shard-<time>-<pid>.frames.npy``: every clip's frames concatenated along time, (sum T_i, M)
  float32, memory-mapped when read;
* ``shard-<time>-<pid>.index.npz``: ``keys`` (N,) and ``offsets`` (N + 1,) int64; clip i is rows
  ``offsets[i]:offsets[i + 1]`` of the frames file.

Both are written atomically, frames first and index last, and a reader only opens shards whose
index exists: a kill leaves at most an orphan frames file or a ``.tmp`` file, never a torn shard.
Under ``torchrun`` each process fills its share of the missing clips; all wait at a barrier and
then read the same folder.

Example:
    >>> import tempfile, pathlib
    >>> cache = FrameCache(pathlib.Path(tempfile.mkdtemp()), "toy front end")
    >>> cache.write(["a", "b"], [np.zeros((3, 2), np.float32), np.ones((1, 2), np.float32)])
    >>> cache.get("b").tolist(), len(cache), "c" in cache
    ([[1.0, 1.0]], 2, False)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from tqdm.auto import tqdm

from modalign import distributed
from modalign.errors import DataError
from modalign.features.cache import digest, file_key, open_cache_folder
from modalign.io import atomic_path

log = logging.getLogger(__name__)


@runtime_checkable
class FrameEncoder(Protocol):
    """An encoder whose fixed front end can be cached as frames (see ``AudioFileEncoder``)."""

    modality: str

    def frame_key(self) -> str:
        """Changes whenever the front end's output for the same file would change."""
        ...

    def decode_frames(self, path: str) -> np.ndarray:
        """The front end's output for one file: (T, C) float32."""
        ...

    def use_frames(self, cache: FrameCache | None) -> None:
        """Read frames from ``cache`` in ``load`` from now on (None: decode again)."""
        ...


def default_frame_root() -> Path:
    """``$MODALIGN_CACHE_DIR/frames``, else ``$XDG_CACHE_HOME/modalign/frames`` (``~/.cache``).

    Example:
        >>> default_frame_root().name
        'frames'
    """
    if os.environ.get("MODALIGN_CACHE_DIR"):
        return Path(os.environ["MODALIGN_CACHE_DIR"]) / "frames"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "modalign" / "frames"


class FrameCache:
    """Append-only shards of variable-length (T_i, C) frame arrays, looked up by item key.

    Args:
        folder: this front end's folder (created). cache_key: the front end's description,
            written to ``cache_key.txt`` for humans.
    """

    def __init__(self, folder: Path, cache_key: str) -> None:
        self.folder = folder
        open_cache_folder(folder, cache_key)
        self._where: dict[str, tuple[int, int, int]] = {}  # key -> (shard, start row, stop row)
        self._shards: list[Path] = []
        self._arrays: list[np.ndarray] | None = None  # opened lazily (per DataLoader worker)
        self.refresh()

    def refresh(self) -> None:
        """Re-read the shard indexes (after this or another process wrote shards)."""
        self._where, self._shards, self._arrays = {}, [], None
        for index in sorted(self.folder.glob("shard-*.index.npz")):
            frames = index.with_name(index.name.replace(".index.npz", ".frames.npy"))
            try:
                with np.load(index, allow_pickle=False) as data:
                    keys, offsets = data["keys"].tolist(), data["offsets"]
            except (OSError, ValueError, KeyError) as err:  # a foreign or damaged file
                log.warning("%s: ignoring unreadable frame index (%s)", index, err)
                continue
            if len(offsets) != len(keys) + 1 or not frames.exists():
                log.warning("%s: ignoring a frame index without its frames", index)
                continue
            shard = len(self._shards)
            self._shards.append(frames)
            for i, key in enumerate(keys):
                self._where[key] = (shard, int(offsets[i]), int(offsets[i + 1]))

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def lookup(self, path: str | Path) -> np.ndarray | None:
        """The (T, C) frames of a file as it is now (None when missing or changed since)."""
        try:
            key = file_key(path)
        except OSError:
            return None
        return self.get(key) if key in self._where else None

    def get(self, key: str) -> np.ndarray:
        """The (T, C) frames of ``key``: a read-only view into the memory-mapped shard."""
        if self._arrays is None:
            self._arrays = [np.load(p, mmap_mode="r") for p in self._shards]
        shard, start, stop = self._where[key]
        return self._arrays[shard][start:stop]

    def write(self, keys: Sequence[str], frames: Sequence[np.ndarray]) -> None:
        """Add one shard atomically: the frames file first, then the index that makes it visible."""
        lengths = [len(f) for f in frames]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (N + 1,)
        stem = f"shard-{time.time_ns():020d}-{os.getpid()}"
        with atomic_path(self.folder / f"{stem}.frames.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, np.concatenate([np.asarray(x, dtype=np.float32) for x in frames]))
        with atomic_path(self.folder / f"{stem}.index.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, keys=np.asarray(keys, dtype=str), offsets=offsets)
        shard, self._arrays = len(self._shards), None  # readable at once, from this process too
        self._shards.append(self.folder / f"{stem}.frames.npy")
        for i, key in enumerate(keys):
            self._where[key] = (shard, int(offsets[i]), int(offsets[i + 1]))

    def __getstate__(self) -> dict[str, Any]:
        # a memory map must not be pickled (that copies it whole): workers reopen their own
        return {**self.__dict__, "_arrays": None}


class _DecodeDataset(torch.utils.data.Dataset[tuple[int, Any]]):
    """Item i -> (i, frames) or (i, the DataError's message), decoded in a DataLoader worker."""

    def __init__(self, encoder: FrameEncoder, paths: Sequence[str]) -> None:
        self.encoder, self.paths = encoder, paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        try:
            return i, self.encoder.decode_frames(self.paths[i])
        except DataError as err:
            return i, str(err)


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


def fill_frame_cache(
    encoder: FrameEncoder,
    paths: Sequence[str | Path],
    cache: FrameCache,
    num_workers: int | None = None,
    shard_size: int = 256,
    progress: bool = True,
) -> int:
    """Decode the files ``cache`` lacks into it, this process's share under ``torchrun``.

    Args:
        encoder: supplies ``decode_frames``. paths: files (resolved here).
        cache: the encoder's frame cache. num_workers: decoding processes (default: 2 on a
            machine with 2+ cores). shard_size: clips per shard (what a kill can lose).
        progress: show a tqdm bar.

    Returns:
        How many clips this process decoded. Unreadable files raise a ``DataError`` naming them.
    """
    resolved = sorted({str(Path(p).resolve()) for p in paths})
    distributed.barrier()  # no process lists the cache while another is already filling it
    cache.refresh()
    missing = [p for p in resolved if file_key(p) not in cache]
    distributed.barrier()  # ... nor adds to it before every process has listed it
    mine = missing[distributed.rank() :: distributed.world_size()]
    error = None
    try:
        _decode_into(encoder, mine, cache, num_workers, shard_size, progress)
    except DataError as err:
        if not distributed.is_distributed():
            raise
        error = str(err)  # raised below on every process, so that none waits for it forever
    distributed.barrier()  # every process's shards are on disk before anyone reads them
    errors = [e for e in distributed.all_gather_objects(error) if e is not None]
    if errors:
        raise DataError(errors[0])
    if missing:
        cache.refresh()
    return len(mine)


def _decode_into(
    encoder: FrameEncoder,
    paths: Sequence[str],
    cache: FrameCache,
    num_workers: int | None,
    shard_size: int,
    progress: bool,
) -> None:
    """Decode ``paths`` in DataLoader workers into shards of ``cache``."""
    if not paths:
        return
    workers = min(2, os.cpu_count() or 1) if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(
        _DecodeDataset(encoder, paths),
        batch_size=None,
        num_workers=workers,
        worker_init_fn=_one_thread if workers else None,
        generator=torch.Generator(),  # its workers' seed: not a draw from the run's generator
    )
    keys: list[str] = []
    frames: list[np.ndarray] = []
    desc = f"frames {encoder.modality} (once)"
    # an iterator: tqdm.auto calls iter() on an iterable once more, starting the workers twice
    for i, item in tqdm(iter(loader), total=len(paths), desc=desc, disable=not progress):
        if isinstance(item, str):
            raise DataError(item)
        keys.append(file_key(paths[i]))
        frames.append(np.asarray(item))
        if len(keys) >= shard_size:
            cache.write(keys, frames)
            keys, frames = [], []
    if keys:
        cache.write(keys, frames)


def attach_frame_cache(
    encoder: FrameEncoder,
    paths: Sequence[str | Path],
    root: str | Path | None = None,
    num_workers: int | None = None,
    progress: bool = True,
) -> FrameCache:
    """Fill ``encoder``'s frame cache for ``paths`` and make its ``load`` read from it.

    Example:
        >>> import tempfile, pathlib, soundfile as sf
        >>> from modalign.encoders.audio import ConvAudioEncoder
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> sf.write(d / "a.wav", np.zeros(1600, np.float32), 16000)
        >>> enc = ConvAudioEncoder("sound", n_mels=8, channels=(4,), output_dim=2)
        >>> cache = attach_frame_cache(enc, [d / "a.wav"], d / "frames", progress=False)
        >>> enc.load(str(d / "a.wav")).shape  # (n_mels, frames), no decoding
        torch.Size([8, 11])
    """
    key = encoder.frame_key()
    cache = FrameCache(Path(root or default_frame_root()) / digest(key)[:16], key)
    fill_frame_cache(encoder, paths, cache, num_workers, progress=progress)
    encoder.use_frames(cache)
    return cache
