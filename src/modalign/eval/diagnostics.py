"""Diagnostics of an embedding space: where alignment is good and where it fails.

Pure functions over present, L2-normalised rows. Pairwise quantities are exact when the number of
pairs is at most ``max_pairs`` and are estimated from a seeded uniform sample otherwise.

Example:
    >>> x = np.eye(4, dtype=np.float32)
    >>> round(effective_rank(x)["effective_rank"], 3), round(modality_gap(x, -x, x, -x)["modality_gap"], 3)
    (4.0, 1.0)

References:
    Liang et al., 2022, "Mind the Gap: Understanding the Modality Gap in Multi-modal Contrastive
    Representation Learning". Wang & Isola, 2020, "Understanding Contrastive Representation
    Learning through Alignment and Uniformity on the Hypersphere". Roy & Vetterli, 2007, "The
    effective rank"; Garrido et al., 2023, "RankMe". Radovanović et al., 2010, "Hubs in Space".
"""

from __future__ import annotations

import numpy as np

from modalign.eval.retrieval import top_k

#: Effective rank below this share of min(N, D) is reported as dimensional collapse (a heuristic).
COLLAPSE_RATIO = 0.1


def _pairs(
    n_a: int, n_b: int, max_pairs: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j) index pairs if there are at most ``max_pairs``, else a uniform sample."""
    if n_a * n_b <= max_pairs:
        i, j = np.divmod(np.arange(n_a * n_b), n_b)
        return i, j
    return rng.integers(0, n_a, max_pairs), rng.integers(0, n_b, max_pairs)


def _positive_pairs(
    ga: np.ndarray, gb: np.ndarray, max_pairs: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j) with ``ga[i] == gb[j]``; beyond ``max_pairs``, i uniform and j uniform in its group."""
    order = np.argsort(gb, kind="stable")
    start = np.searchsorted(gb[order], ga, side="left")
    count = np.searchsorted(gb[order], ga, side="right") - start
    if count.sum() <= max_pairs:
        i = np.repeat(np.arange(len(ga)), count)
        offset = np.arange(len(i)) - np.repeat(np.cumsum(count) - count, count)  # 0..count-1 per i
        return i, order[start[i] + offset]
    i = rng.choice(np.flatnonzero(count > 0), max_pairs)
    return i, order[start[i] + (rng.random(max_pairs) * count[i]).astype(np.int64)]


def _rowdot(
    a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray, block: int = 65536
) -> np.ndarray:
    out = np.empty(len(i), dtype=np.float64)
    for s in range(0, len(i), block):  # (block, D) at a time: bounded memory
        out[s : s + block] = np.einsum("nd,nd->n", a[i[s : s + block]], b[j[s : s + block]])
    return out


def similarity_samples(
    a: np.ndarray,
    b: np.ndarray,
    ga: np.ndarray,
    gb: np.ndarray,
    max_pairs: int = 200_000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Cosine similarities of positive, negative and all cross-modal pairs.

    Args:
        a: (Na, D) one modality. b: (Nb, D) the other. ga, gb: their group ids.
        max_pairs: above this many pairs, sample. seed: sampling seed.

    Returns:
        ``{"positive": (P,), "negative": (M,), "all": (A,)}`` float64 arrays; ``all`` covers pairs
        uniformly (exactly, when small), ``negative`` is its subset of different-group pairs.
    """
    rng = np.random.default_rng(seed)
    pi, pj = _positive_pairs(ga, gb, max_pairs, rng)
    ai, aj = _pairs(len(a), len(b), max_pairs, rng)
    every = _rowdot(a, b, ai, aj)
    return {"positive": _rowdot(a, b, pi, pj), "negative": every[ga[ai] != gb[aj]], "all": every}


def similarity_stats(samples: dict[str, np.ndarray], bins: int = 100) -> dict[str, float]:
    """Means, spreads, overlap and alignment score of positive vs negative similarities.

    ``sim_overlap`` is the overlap coefficient of the two histograms on ``bins`` equal bins over
    [-1, 1] (0 = fully separated, 1 = identical); ``alignment_score`` is
    (mean positive - mean negative) / std of all pair similarities.

    Example:
        >>> s = {"positive": np.array([0.9, 0.7]), "negative": np.array([0.1, -0.1]),
        ...      "all": np.array([0.9, 0.7, 0.1, -0.1])}
        >>> {k: round(v, 3) for k, v in similarity_stats(s).items()}["alignment_score"]
        1.94
    """
    pos, neg, every = samples["positive"], samples["negative"], samples["all"]
    edges = np.linspace(-1.0, 1.0, bins + 1)
    hp = np.histogram(np.clip(pos, -1, 1), edges)[0] / max(len(pos), 1)
    hn = np.histogram(np.clip(neg, -1, 1), edges)[0] / max(len(neg), 1)
    spread = float(every.std())
    return {
        "pos_sim_mean": float(pos.mean()),
        "pos_sim_std": float(pos.std()),
        "neg_sim_mean": float(neg.mean()),
        "neg_sim_std": float(neg.std()),
        "sim_overlap": float(np.minimum(hp, hn).sum()),
        "alignment_score": float((pos.mean() - neg.mean()) / spread) if spread > 0 else 0.0,
        "wang_isola_alignment": float(2.0 - 2.0 * pos.mean()),  # E||x - y||^2 of unit positives
    }


def modality_gap(
    a: np.ndarray, b: np.ndarray, a_paired: np.ndarray, b_paired: np.ndarray
) -> dict[str, float]:
    """Distance between modality centroids, and the share of paired distance it explains.

    ``modality_gap`` = ||mean(a) - mean(b)|| over all present rows (Liang et al., 2022).
    ``gap_share`` = ||mean(a_p - b_p)||^2 / mean(||a_p - b_p||^2) over paired rows (the same items
    in both modalities): the part of the squared distance between partners that is one constant
    offset along the centroid direction, the rest being item-specific (1 = pure gap).

    Example:
        >>> a = np.array([[1.0, 0.0], [0.0, 1.0]]); b = a - 0.5
        >>> modality_gap(a, b, a, b)["gap_share"]
        1.0
    """
    d = np.asarray(a_paired, np.float64) - np.asarray(b_paired, np.float64)  # (P, D)
    shift = d.mean(axis=0)
    total = float((d**2).sum(axis=1).mean()) if len(d) else 0.0
    return {
        "modality_gap": float(
            np.linalg.norm(a.mean(axis=0, dtype=np.float64) - b.mean(axis=0, dtype=np.float64))
        ),
        "gap_share": float(shift @ shift / total) if total > 0 else 0.0,
    }


def uniformity(x: np.ndarray, t: float = 2.0, max_pairs: int = 200_000, seed: int = 0) -> float:
    """Wang & Isola's uniformity: log E exp(-t ||x_i - x_j||^2) over pairs i != j (lower = more uniform).

    Example:
        >>> round(uniformity(np.array([[1.0, 0.0], [-1.0, 0.0]])), 3)
        -8.0
    """
    i, j = _pairs(len(x), len(x), max_pairs + len(x), np.random.default_rng(seed))
    keep = i != j
    sq = np.maximum(2.0 - 2.0 * _rowdot(x, x, i[keep], j[keep]), 0.0)  # ||u - v||^2 of unit rows
    return float(np.log(np.mean(np.exp(-t * sq))))


def effective_rank(x: np.ndarray) -> dict[str, float]:
    """Effective rank of the embedding matrix, and spread per dimension.

    ``effective_rank`` = exp(entropy of the normalised singular values) (Roy & Vetterli; RankMe),
    from 1 (all rows on one line) to min(N, D). ``effective_rank_ratio`` divides it by min(N, D).
    ``dim_std_mean``/``dim_std_min`` summarise the standard deviation of each dimension.

    Example:
        >>> effective_rank(np.array([[1.0, 0.0], [1.0, 0.0]]))["effective_rank"]
        1.0
    """
    x = np.asarray(x, np.float64)
    eig = np.clip(np.linalg.eigvalsh(x.T @ x), 0.0, None)  # singular values squared, (D,)
    s = np.sqrt(eig)
    p = s / s.sum()
    erank = float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))
    std = x.std(axis=0)
    return {
        "effective_rank": erank,
        "effective_rank_ratio": erank / min(x.shape),
        "dim_std_mean": float(std.mean()),
        "dim_std_min": float(std.min()),
    }


def singular_values(x: np.ndarray) -> np.ndarray:
    """Singular values of ``x`` (N, D), largest first (for spectrum plots)."""
    x = np.asarray(x, np.float64)
    return np.sqrt(np.clip(np.linalg.eigvalsh(x.T @ x), 0.0, None))[::-1]


def k_occurrence(queries: np.ndarray, gallery: np.ndarray, k: int = 10) -> np.ndarray:
    """How often each gallery item appears among the ``k`` nearest of the queries: int (N,)."""
    _, idx = top_k(queries, gallery, k)
    return np.bincount(idx.ravel(), minlength=len(gallery))


def hubness(queries: np.ndarray, gallery: np.ndarray, k: int = 10) -> dict[str, float]:
    """Skewness of the k-occurrence distribution (0 = no hubs; large = a few hubs everywhere).

    Returns ``hubness_skew@k`` and ``antihub_share@k`` (gallery items in no top-k list).

    Example:
        >>> g = np.eye(3, dtype=np.float32)
        >>> hubness(g, g, k=1)
        {'hubness_skew@1': 0.0, 'antihub_share@1': 0.0}
    """
    n = k_occurrence(queries, gallery, k).astype(np.float64)
    std = n.std()
    skew = float(((n - n.mean()) ** 3).mean() / std**3) if std > 0 else 0.0
    return {f"hubness_skew@{k}": skew, f"antihub_share@{k}": float((n == 0).mean())}


def collapse_warning(stats: dict[str, float]) -> str | None:
    """A plain-language warning when :func:`effective_rank` statistics show collapse, else None.

    Example:
        >>> collapse_warning({"effective_rank": 1.2, "effective_rank_ratio": 0.01, "dim_std_mean": 0.1})
        'dimensional collapse: effective rank 1.2 is 1% of the possible'
    """
    if stats["dim_std_mean"] < 1e-4:
        return "complete collapse: every embedding is (nearly) the same vector"
    if stats["effective_rank_ratio"] < COLLAPSE_RATIO:
        return (
            f"dimensional collapse: effective rank {stats['effective_rank']:.1f} is "
            f"{stats['effective_rank_ratio']:.0%} of the possible"
        )
    return None


def center_modalities(embeddings: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Post-hoc gap mitigation: subtract each modality's mean (over present rows), renormalise.

    NaN rows (missing items) stay NaN.

    Example:
        >>> e = center_modalities({"a": np.array([[1.0, 1.0], [1.0, -1.0]], dtype=np.float32)})
        >>> e["a"].tolist()
        [[0.0, 1.0], [0.0, -1.0]]
    """
    out = {}
    for name, x in embeddings.items():
        centred = x - np.nanmean(x, axis=0, keepdims=True)
        norm = np.linalg.norm(centred, axis=1, keepdims=True)
        out[name] = (centred / np.where(norm > 0, norm, 1.0)).astype(np.float32)
    return out
