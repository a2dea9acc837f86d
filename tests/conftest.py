"""Shared fixtures: small synthetic paired datasets written to temporary folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modalign.config import Config, load_config
from modalign.data.synthetic import write_synthetic_dataset

# modalign.memory tunes glibc's malloc for the whole process on the first CPU training step of
# an audio encoder: the freed heap then stays resident, and tests that measure memory later in
# this process would see their allocations served from it. tests/test_memory.py checks the
# tuning in processes of its own.
os.environ.setdefault("MODALIGN_MALLOC_TUNING", "0")


def synthetic_config(
    folder: Path, overrides: list[str] | None = None, **data_kwargs: object
) -> Config:
    """Write a synthetic dataset into ``folder`` and a config that trains on it quickly."""
    manifest = write_synthetic_dataset(folder, **data_kwargs)  # type: ignore[arg-type]
    dims = data_kwargs.get("dims") or {"image": 48, "text": 32}
    base = [f"data.manifest={manifest}"] + [
        f"data.features.{m}={folder / (m + '.npy')}" for m in dims
    ]  # type: ignore[union-attr]
    base += [
        "model.embed_dim=32",
        "model.head.hidden_dim=64",
        "model.head.init=random",  # these tests exercise learning itself, from a random start
        "train.epochs=3",
        "train.batch_size=128",
        "train.warmup_steps=5",
        "train.lr=0.003",
        "train.tensorboard=false",
        "eval.chunk_size=97",
    ]
    return load_config(None, base + (overrides or []))


@pytest.fixture
def small_config(tmp_path: Path) -> Config:
    return synthetic_config(tmp_path / "data", n=600)
