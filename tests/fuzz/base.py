"""A tiny valid dataset, config and embeddings file that every fuzz case mutates one thing of."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from modalign.features.store import write_features

N_ROWS = 40
DIMS = {"image": 6, "text": 4}


@dataclass
class Base:
    """Paths of the valid inputs (never modified by a case) and the results they give."""

    root: Path
    manifest: Path
    features: dict[str, Path]
    config: Path
    frame: pd.DataFrame
    arrays: dict[str, np.ndarray]
    npz: Path
    npz_arrays: dict[str, np.ndarray]
    run: Path = field(default=Path())
    train_metrics: dict[str, float] = field(default_factory=dict)
    npz_metrics: dict[str, float] = field(default_factory=dict)


def make_base(root: Path) -> Base:
    """Write the valid inputs into ``root/data`` (features exactly representable in float16)."""
    data = root / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((N_ROWS, 3))
    arrays = {}
    for m, d in DIMS.items():
        x = np.tanh(latent @ rng.standard_normal((3, d))) + 0.1 * rng.standard_normal((N_ROWS, d))
        arrays[m] = x.astype(np.float16).astype(np.float32)  # float16-exact: dtype variants agree
    frame = pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(N_ROWS)],
            "image": [f"img{i}" for i in range(N_ROWS)],
            "text": [f"txt{i}" for i in range(N_ROWS)],
            "split": ["train"] * 24 + ["val"] * 8 + ["test"] * 8,
        }
    )
    manifest = data / "pairs.csv"
    frame.to_csv(manifest, index=False)
    features = {}
    for m in DIMS:
        features[m] = data / f"{m}.npy"
        write_features(features[m], list(frame[m]), arrays[m])
    config = data / "config.yaml"
    config.write_text(yaml.safe_dump(config_dict(), sort_keys=False))
    npz_arrays = _embeddings()
    npz = data / "emb.npz"
    np.savez(npz, **npz_arrays)  # type: ignore[arg-type]
    return Base(root, manifest, features, config, frame, arrays, npz, npz_arrays)


def config_dict() -> dict[str, object]:
    return {
        "name": "fuzz",
        "data": {
            "manifest": "pairs.csv",
            "features": {m: f"{m}.npy" for m in DIMS},
            "min_rows": 4,
        },
        "model": {"embed_dim": 8, "head": {"hidden_dim": 16, "dropout": 0.0}},
        "train": {
            "epochs": 1,
            "batch_size": 8,
            "warmup_steps": 1,
            "lr": 0.01,
            "tensorboard": False,
            "log_every": 1,
        },
        "eval": {"ks": [1, 5], "chunk_size": 16},
    }


def _embeddings() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    shared = rng.standard_normal((30, 5))
    return {
        "image": (shared + 0.3 * rng.standard_normal((30, 5))).astype(np.float32),
        "text": (shared + 0.3 * rng.standard_normal((30, 5))).astype(np.float32),
        "group": np.arange(30) // 2,
    }


def copy_data(base: Base, folder: Path) -> Path:
    """A private copy of the valid data folder (for cases that edit the config's own files)."""
    target = folder / "data"
    shutil.copytree(base.manifest.parent, target)
    return target


def read_metrics(folder: Path) -> dict[str, float]:
    return json.loads((folder / "metrics.json").read_text())
