"""The feature cache: append-only shards of (item key, feature row) per encoder configuration.

One folder per encoder configuration (``cache_dir/<modality>/<hash of encoder.cache_key()>/``).
Each shard is written atomically, so a kill leaves complete shards and at most a ``.tmp`` file
that is never read; a re-run computes only what no complete shard holds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from modalign.io import atomic_path

log = logging.getLogger(__name__)


def digest(text: str) -> str:
    """A short stable hash of ``text`` (cache keys and folder names)."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def file_key(path: str | Path) -> str:
    """The cache key of a file: its resolved path, size and modification time.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = p.write_text("x")
        >>> file_key(p) == file_key(p.parent / "." / "a.txt")
        True
    """
    # os.path.realpath is what Path.resolve() returns, without pathlib's parsing (a training
    # epoch reading cached audio frames looks up every clip: 25 us each with pathlib)
    real = os.path.realpath(path)
    stat = os.stat(real)  # OSError when missing: callers name the manifest cell
    return digest(f"file\0{real}\0{stat.st_size}\0{stat.st_mtime_ns}")


def open_cache_folder(folder: Path, cache_key: str) -> None:
    """Create a cache folder and record, for humans, what its entries were computed with."""
    folder.mkdir(parents=True, exist_ok=True)
    key_file = folder / "cache_key.txt"
    if not key_file.exists():
        with atomic_path(key_file) as tmp:
            tmp.write_text(cache_key + "\n", encoding="utf-8")


class FeatureCache:
    """Append-only shards of (item key, feature row) for one encoder configuration."""

    def __init__(self, folder: Path, cache_key: str) -> None:
        self.folder = folder
        open_cache_folder(folder, cache_key)

    def read(self) -> dict[str, np.ndarray]:
        """Item key -> feature row, from every complete shard."""
        return self._load(with_rows=True)

    def keys(self) -> set[str]:
        """The item keys of every complete shard (their rows are not read)."""
        return set(self._load(with_rows=False))

    def _load(self, with_rows: bool) -> dict[str, np.ndarray]:
        rows: dict[str, np.ndarray] = {}
        for shard in sorted(self.folder.glob("shard-*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as data:  # members load on access
                    keys = data["keys"].tolist()
                    values = data["features"] if with_rows else np.empty((len(keys), 0))
                    rows.update(zip(keys, values, strict=True))
            except (
                OSError,
                ValueError,
                KeyError,
                EOFError,
                zipfile.BadZipFile,
                zlib.error,
            ) as err:  # only a foreign or damaged file gets here
                log.warning("%s: ignoring unreadable cache shard (%s)", shard, err)
        return rows

    def write(self, keys: Sequence[str], features: np.ndarray) -> None:
        """Add one shard atomically (a kill leaves a ``.tmp`` file, never a partial shard)."""
        name = f"shard-{time.time_ns():020d}-{os.getpid()}.npz"
        with atomic_path(self.folder / name) as tmp, open(tmp, "wb") as f:
            np.savez(
                f, keys=np.asarray(keys, dtype=str), features=np.asarray(features, dtype=np.float32)
            )
