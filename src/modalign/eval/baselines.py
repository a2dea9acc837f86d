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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from modalign.data.paired import PairedData
from modalign.errors import DataError
from modalign.linalg import fit_cca, fit_pca, fit_procrustes
from modalign.registry import Registry
from modalign.types import EmbeddingSet, headline_keys

DEFAULT_BASELINES = ("random", "procrustes", "cca")

Maps = dict[str, tuple[np.ndarray, np.ndarray]]
"""modality -> (mean, projection): an embedding is ``normalise((x - mean) @ projection)``."""


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class PairFeatures:
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

    def sides(self) -> tuple[tuple[str, np.ndarray], tuple[str, np.ndarray]]:
        """``((a, xa), (b, xb))``: each modality with its paired train rows."""
        return (self.a, self.xa), (self.b, self.xb)

    def pca(self, k: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """Train-split PCA of both sides, top ``k`` axes (fitted once: the axes are nested)."""
        if not self._pca:
            self._pca = {"a": fit_pca(self.xa, len(self.xa)), "b": fit_pca(self.xb, len(self.xb))}
        (ma, pa), (mb, pb) = self._pca["a"], self._pca["b"]
        return (ma, pa[:, :k]), (mb, pb[:, :k])


@dataclass(frozen=True)
class Baseline:
    """One registered baseline: how it maps a pair, and which settings val may tune.

    ``fit(pair, k, reg, rng)`` returns the :data:`Maps` of both modalities for width ``k`` and
    shrinkage ``reg``; ``tuned`` names what is searched on val (``"dim"``, ``"reg"``).
    """

    fit: Callable[[PairFeatures, int, float, np.random.Generator], Maps]
    tuned: tuple[str, ...] = ()


BASELINES: Registry[Baseline] = Registry("baseline")


def _pca_pair(pair: PairFeatures, k: int) -> tuple[np.ndarray, ...]:
    """Both sides' means, PCA axes and PCA coordinates at a common width ``min(k, ranks)``."""
    (ma, pa), (mb, pb) = pair.pca(k)
    k = min(pa.shape[1], pb.shape[1])
    pa, pb = pa[:, :k], pb[:, :k]
    return ma, pa, (pair.xa - ma) @ pa, mb, pb, (pair.xb - mb) @ pb


def _fit_random(pair: PairFeatures, k: int, reg: float, rng: np.random.Generator) -> Maps:
    del reg  # a random map has nothing to shrink
    return {m: (x.mean(0), rng.normal(size=(x.shape[1], k))) for m, x in pair.sides()}


def _fit_procrustes(pair: PairFeatures, k: int, reg: float, rng: np.random.Generator) -> Maps:
    del reg, rng
    ma, pa, za, mb, pb, zb = _pca_pair(pair, k)
    # equalise the total variance of the two sides, so neither dominates the fit
    sa, sb = np.sqrt((za**2).sum(1).mean()), np.sqrt((zb**2).sum(1).mean())
    r = fit_procrustes(za / sa, zb / sb)
    return {pair.a: (ma, pa @ r / sa), pair.b: (mb, pb / sb)}


def _fit_cca(pair: PairFeatures, k: int, reg: float, rng: np.random.Generator) -> Maps:
    del rng
    ma, pa, za, mb, pb, zb = _pca_pair(pair, k)
    ca, cb = fit_cca(za, zb, za.shape[1], reg)
    return {pair.a: (ma, pa @ ca), pair.b: (mb, pb @ cb)}


BASELINES.register("random")(Baseline(_fit_random))
BASELINES.register("procrustes")(Baseline(_fit_procrustes, ("dim",)))
BASELINES.register("cca")(Baseline(_fit_cca, ("dim", "reg")))


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
    names: Sequence[str] = DEFAULT_BASELINES,
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
        names: baselines to compute (keys of ``BASELINES``). dims: grid of PCA / canonical dimensions.
        random_dim: output width of the random heads. seed: seed of the random heads.
        cca_regs: grid of CCA shrinkage values (searched with ``dims``, on val R@1).

    Returns:
        ``{baseline: {split: [EmbeddingSet of one pair, ...]}}`` for every split present.
    """
    split_arr = np.asarray(splits)
    pairs = list(pairs) if pairs is not None else list(itertools.combinations(features, 2))
    out: dict[str, dict[str, list[EmbeddingSet]]] = {n: {} for n in names}
    for a, b in pairs:
        pair = PairFeatures(features, a, b, split_arr == "train")
        for name in names:
            baseline = BASELINES.get(name)
            grid = [
                (k, r)
                for k in (dims if "dim" in baseline.tuned else (random_dim,))
                for r in (cca_regs if "reg" in baseline.tuned else (0.0,))
            ]
            best = _choose(features, pair, baseline, grid, split_arr, ids, groups, seed)
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
    pair: PairFeatures,
    baseline: Baseline,
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
        maps = baseline.fit(pair, k, reg, np.random.default_rng(seed))
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


def score_baselines(
    data: PairedData, splits: Sequence[str], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, dict[str, float]]:
    """Baselines fitted on the train rows of a run's feature stores (every modality that has
    one), tuned on val, scored on ``splits``: ``{baseline: {metric key: value}}``."""
    features = {m: data.feature_matrix(m) for m in data.stores}
    if len(features) < 2:
        raise DataError("baselines need two modalities with feature files")
    fitted = fit_baselines(features, data.split_names(), data.manifest.ids, data.manifest.groups)
    scores: dict[str, dict[str, float]] = {}
    for split in splits:
        for name, values in evaluate_baselines(fitted, split, ks).items():
            scores.setdefault(name, {}).update(values)
    return scores
