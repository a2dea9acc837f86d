"""Synthetic paired data: noisy non-linear views of shared latent vectors.

Used by the tests and the quick-start: it needs nothing installed, yet alignment on it is a real
learning problem (each modality sees the latent through its own random non-linear map plus noise).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from modalign.features.store import write_features


def make_views(
    n: int, dims: dict[str, int], latent_dim: int = 16, noise: float = 0.1, seed: int = 0
) -> dict[str, np.ndarray]:
    """Float32 (n, dims[m]) views of ``n`` shared latent vectors.

    Example:
        >>> v = make_views(5, {"a": 8, "b": 3})
        >>> v["a"].shape, v["b"].shape
        ((5, 8), (5, 3))
    """
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, latent_dim))
    views = {}
    for m, d in dims.items():
        w1 = rng.standard_normal((latent_dim, 64)) / np.sqrt(latent_dim)
        w2 = rng.standard_normal((64, d)) / 8.0
        h = np.tanh(latent @ w1)
        views[m] = (h @ w2 + noise * rng.standard_normal((n, d))).astype(np.float32)
    return views


def write_synthetic_dataset(
    folder: Path,
    n: int = 2000,
    dims: dict[str, int] | None = None,
    missing: float = 0.0,
    groups: int = 0,
    noise: float = 0.1,
    seed: int = 0,
) -> Path:
    """Write ``pairs.csv`` and one ``<modality>.npy`` feature file per modality into ``folder``.

    Args:
        noise: std of the per-view noise (the clean views have a std of about 0.5).
        missing: share of cells of every modality but the first left empty.
        groups: if > 0, rows are views of ``groups`` latents shared by several rows (multi-positive).

    Returns:
        The manifest path.
    """
    dims = dims or {"image": 48, "text": 32}
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    latent_of_row = rng.integers(0, groups, n) if groups else np.arange(n)
    n_latent = groups or n
    views = make_views(n_latent, dims, noise=noise, seed=seed)
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(n)]})
    for j, (m, arr) in enumerate(views.items()):
        noisy = arr[latent_of_row] + 0.05 * rng.standard_normal((n, arr.shape[1])).astype(
            np.float32
        )
        keys = [f"{m}-{i}" for i in range(n)]
        write_features(folder / f"{m}.npy", keys, noisy)
        cells = [k if (j == 0 or rng.random() >= missing) else "" for k in keys]
        frame[m] = cells
    if groups:
        frame["group"] = [f"g{g}" for g in latent_of_row]
    path = folder / "pairs.csv"
    frame.to_csv(path, index=False)
    return path
