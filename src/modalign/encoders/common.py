"""Helpers shared by the raw-input encoders: weight hashing, skipped items, lazy imports.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "w.bin"
    >>> _ = p.write_bytes(b"weights")
    >>> len(hash_files([p]))
    16
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from modalign.errors import ConfigError


class ItemSkipped(Exception):
    """Raised by ``Encoder.load`` for an item that cannot be read here (e.g. no SVG rasteriser).

    ``embed_manifest`` leaves such items out of the feature store and counts them by ``reason``.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@functools.lru_cache(maxsize=64)
def _hash_one(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.blake2b(digest_size=8)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_files(paths: Iterable[Path]) -> str:
    """A short content hash of weight files (memoised on path, size and mtime)."""
    digest = hashlib.blake2b(digest_size=8)
    for path in sorted(Path(p) for p in paths):
        stat = path.stat()
        digest.update(
            f"{path.name}:{_hash_one(str(path), stat.st_size, stat.st_mtime_ns)};".encode()
        )
    return digest.hexdigest()


def weight_files(folder: Path) -> list[Path]:
    """The files in a model folder that hold weights (or, failing that, every file)."""
    suffixes = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx"}
    files = [p for p in folder.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in suffixes]
    return weights or files


def require(module: str, extra: str = "encoders", package: str | None = None) -> ModuleType:
    """Import an optional dependency, or raise a ``ConfigError`` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        name = package or module.split(".")[0]
        raise ConfigError(
            f"this encoder needs the Python package {name!r} ({err}); "
            f"install it with: pip install 'modalign[{extra}]' (or pip install {name})"
        ) from None
