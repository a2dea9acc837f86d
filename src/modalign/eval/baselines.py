"""Baselines that a trained aligner must beat, computed from the same frozen features.

* ``random``: untrained heads, a random Gaussian projection of each modality's centred features
  to ``dim`` dimensions (what the model's heads do before training).
* ``procrustes``: each modality centred and PCA-reduced to ``k`` dimensions on the train split,
  then the orthogonal map between the two PCA spaces that best matches train pairs
  (``R = argmin ||A R - B||_F`` over orthogonal R, solved by one SVD: ``A^T B = U S V^T``,
  ``R = U V^T``; Schönemann, 1966).
* ``cca``: regularised canonical correlation analysis on the PCA-reduced features: whiten each
  side (``C_aa^{-1/2}``), take the SVD of the whitened cross-covariance, keep the top ``k``
  canonical directions, weight them by their correlations (Hotelling, 1936).

Everything is fitted on train rows only, per pair of modalities (items where both are present).
The number of PCA/canonical dimensions (16 to 384), and for CCA also the shrinkage (0.1, 0.3,
1.0), are picked by mean R@1 on the val split when there is one, so the linear baselines are as
strong as a fair tuning makes them (the same information the trained model's early stopping and
``model.head.init: cca`` settings may use).

Each baseline gives one ``EmbeddingSet`` per (split, pair), which ``evaluate_retrieval`` scores;
``evaluate_baselines`` merges them into ``{baseline: {"test/image_to_caption/recall@1": ...}}``,
the keys of ``metrics.json``.

Example:
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(300, 4))
    >>> feats = {"a": z @ rng.normal(size=(4, 20)), "b": z @ rng.normal(size=(4, 30))}
    >>> splits = ["train"] * 200 + ["val"] * 50 + ["test"] * 50
    >>> sets = fit_baselines(feats, splits, ids=[str(i) for i in range(300)], dims=(4,))
    >>> scores = evaluate_baselines(sets, "test")
    >>> scores["cca"]["test/a_to_b/recall@1"] > scores["random"]["test/a_to_b/recall@1"]
    True

References:
    Hotelling, 1936, "Relations between two sets of variates"; Schönemann, 1966, "A generalized
    solution of the orthogonal Procrustes problem".
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from modalign.errors import DataError
from modalign.types import EmbeddingSet, headline_keys

BASELINES = ("random", "procrustes", "cca")


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def fit_pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and top-``k`` principal axes (D, k) of ``x`` (N, D)."""
    mean = x.mean(axis=0)
    xc = x - mean
    # eigh of the smaller Gram matrix is several times faster than an SVD of xc here
    if xc.shape[0] < xc.shape[1]:
        w, u = np.linalg.eigh(xc @ xc.T)  # (N,), (N, N): xc = U S V^T, xc xc^T = U S^2 U^T
        order = np.argsort(w)[::-1][: min(k, len(w))]
        axes = xc.T @ u[:, order] / np.sqrt(np.maximum(w[order], 1e-12))  # V = xc^T U / S: (D, k)
    else:
        w, v = np.linalg.eigh(xc.T @ xc)  # (D,), (D, D)
        axes = v[:, np.argsort(w)[::-1][: min(k, len(w))]]
    return mean, axes


def fit_procrustes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Orthogonal R (k, k) minimising ||a R - b||_F for paired rows a, b (N, k)."""
    u, _, vt = np.linalg.svd(a.T @ b)
    return u @ vt


def _inv_sqrt(c: np.ndarray, reg: float) -> np.ndarray:
    w, v = np.linalg.eigh(c + reg * np.trace(c) / len(c) * np.eye(len(c)))
    return (v / np.sqrt(np.maximum(w, 1e-12))) @ v.T


def fit_cca(
    a: np.ndarray, b: np.ndarray, k: int, reg: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Projections (Da, k) and (Db, k) of centred paired rows onto the top-``k`` canonical pairs,
    each column scaled by its canonical correlation. ``reg`` shrinks covariances towards a multiple
    of the identity (relative to their mean eigenvalue), which small train sets need."""
    n = len(a)
    wa, wb = _inv_sqrt(a.T @ a / n, reg), _inv_sqrt(b.T @ b / n, reg)  # whiteners
    u, s, vt = np.linalg.svd(wa @ (a.T @ b / n) @ wb)  # whitened cross-covariance
    k = min(k, len(s))
    return wa @ u[:, :k] * s[:k], wb @ vt[:k].T * s[:k]


class _Pair:
    """Paired train rows of modalities (a, b) and the fitted maps of one baseline."""

    def __init__(self, feats: Mapping[str, np.ndarray], a: str, b: str, train: np.ndarray) -> None:
        both = train & _present(feats[a]) & _present(feats[b])
        if both.sum() < 4:
            raise DataError(
                f"baselines: only {int(both.sum())} train rows have both {a!r} and {b!r}"
            )
        self.a, self.b = a, b
        self.xa, self.xb = feats[a][both].astype(np.float64), feats[b][both].astype(np.float64)
        self._pca: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def pca(self, k: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """Train-split PCA of both sides, top ``k`` axes (fitted once: the axes are nested)."""
        if not self._pca:
            self._pca = {"a": fit_pca(self.xa, len(self.xa)), "b": fit_pca(self.xb, len(self.xb))}
        (ma, pa), (mb, pb) = self._pca["a"], self._pca["b"]
        return (ma, pa[:, :k]), (mb, pb[:, :k])

    def maps(
        self, name: str, k: int, rng: np.random.Generator, reg: float = 0.1
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """modality -> (mean, projection): an embedding is ``(x - mean) @ projection``."""
        if name == "random":
            return {
                m: (x.mean(0), rng.normal(size=(x.shape[1], k)))
                for m, x in ((self.a, self.xa), (self.b, self.xb))
            }
        (ma, pa), (mb, pb) = self.pca(k)
        za, zb = (self.xa - ma) @ pa, (self.xb - mb) @ pb
        k = min(za.shape[1], zb.shape[1])
        za, zb, pa, pb = za[:, :k], zb[:, :k], pa[:, :k], pb[:, :k]
        if name == "procrustes":
            # equalise the total variance of the two sides, so neither dominates the fit
            sa, sb = np.sqrt((za**2).sum(1).mean()), np.sqrt((zb**2).sum(1).mean())
            r = fit_procrustes(za / sa, zb / sb)
            return {self.a: (ma, pa @ r / sa), self.b: (mb, pb / sb)}
        if name == "cca":
            ca, cb = fit_cca(za, zb, k, reg)
            return {self.a: (ma, pa @ ca), self.b: (mb, pb @ cb)}
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")


def _present(x: np.ndarray) -> np.ndarray:
    return ~np.isnan(x).any(axis=1)


def _embed(
    feats: Mapping[str, np.ndarray],
    maps: Mapping[str, tuple[np.ndarray, np.ndarray]],
    rows: np.ndarray,
) -> dict[str, np.ndarray]:
    out = {}
    for m, (mean, proj) in maps.items():
        x = feats[m][rows].astype(np.float64)
        e = np.full((len(rows), proj.shape[1]), np.nan, dtype=np.float32)
        ok = _present(x)
        e[ok] = _normalise((x[ok] - mean) @ proj)
        out[m] = e
    return out


def fit_baselines(
    features: Mapping[str, np.ndarray],
    splits: Sequence[str],
    ids: Sequence[str],
    groups: np.ndarray | None = None,
    pairs: Sequence[tuple[str, str]] | None = None,
    names: Sequence[str] = BASELINES,
    dims: Sequence[int] = (16, 32, 64, 128, 256, 384),
    random_dim: int = 256,
    seed: int = 0,
    cca_regs: Sequence[float] = (0.1, 0.3, 1.0),
) -> dict[str, dict[str, list[EmbeddingSet]]]:
    """Fit every baseline on the train split and embed every split.

    Args:
        features: modality -> (N, D_m) frozen features, NaN rows where the item lacks it.
        splits: N split names; fitting uses ``train`` rows, dimension choice ``val`` rows.
        ids: N item ids. groups: optional (N,) positives groups (as in the manifest).
        pairs: modality pairs to align (default every pair).
        names: baselines to compute. dims: grid of PCA / canonical dimensions.
        random_dim: output width of the random heads. seed: seed of the random heads.
        cca_regs: grid of CCA shrinkage values (searched with ``dims``, on val R@1).

    Returns:
        ``{baseline: {split: [EmbeddingSet of one pair, ...]}}`` for every split present.
    """
    split_arr = np.asarray(splits)
    pairs = list(pairs) if pairs is not None else list(itertools.combinations(features, 2))
    out: dict[str, dict[str, list[EmbeddingSet]]] = {n: {} for n in names}
    for a, b in pairs:
        pair = _Pair(features, a, b, split_arr == "train")
        for name in names:
            grid: list[tuple[int, float]] = (
                [(random_dim, 0.0)]
                if name == "random"
                else [(k, r) for k in dims for r in (cca_regs if name == "cca" else (0.0,))]
            )
            best = _choose(features, pair, name, grid, split_arr, ids, groups, seed)
            for split in dict.fromkeys(splits):
                rows = np.flatnonzero(split_arr == split)
                emb = _embed(features, best, rows)
                sub_groups = None if groups is None else groups[rows]
                out[name].setdefault(split, []).append(
                    EmbeddingSet(emb, [ids[int(i)] for i in rows], sub_groups)
                )
    return out


def _choose(
    features: Mapping[str, np.ndarray],
    pair: _Pair,
    name: str,
    grid: Sequence[tuple[int, float]],
    split_arr: np.ndarray,
    ids: Sequence[str],
    groups: np.ndarray | None,
    seed: int,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The maps for the (dims, shrinkage) with the best mean val R@1 (the first without a val split)."""
    from modalign.eval.retrieval import evaluate_retrieval

    rows = np.flatnonzero(split_arr == "val")
    best: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    best_score = -1.0
    for k, reg in grid:
        maps = pair.maps(name, k, np.random.default_rng(seed), reg)
        if len(grid) == 1 or len(rows) == 0:
            return maps
        emb = EmbeddingSet(
            _embed(features, maps, rows),
            [ids[int(i)] for i in rows],
            None if groups is None else groups[rows],
        )
        val = evaluate_retrieval(emb, "val", ks=(1,))
        scores = [val[key] for key in headline_keys(val, split="val")]
        score = float(np.mean(scores)) if scores else 0.0
        if score > best_score:
            best, best_score = maps, score
    return best


def evaluate_baselines(
    baselines: Mapping[str, Mapping[str, Sequence[EmbeddingSet]]],
    split: str = "test",
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, dict[str, float]]:
    """Retrieval metrics of each baseline on ``split``: ``{baseline: {"test/a_to_b/recall@1": ...}}``."""
    from modalign.eval.retrieval import evaluate_retrieval

    out: dict[str, dict[str, float]] = {}
    for name, per_split in baselines.items():
        out[name] = {}
        for emb in per_split.get(split, []):
            out[name].update(evaluate_retrieval(emb, split, ks))
    return out
