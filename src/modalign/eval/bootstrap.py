"""Statistical honesty: bootstrap intervals for metrics, paired-bootstrap differences of two runs.

Every retrieval metric is a mean (or, for ``median_rank``, a median) of per-query values, so
resampling queries with replacement gives its sampling distribution. One set of resampled query
indices is shared by all metrics of a replicate. Intervals are percentile intervals.

Example:
    >>> v = {"recall@1": np.array([1.0, 0.0] * 50)}
    >>> lo, hi = bootstrap_intervals(v, n_boot=200)["recall@1"]
    >>> bool(0.35 < lo < 0.5 < hi < 0.65)
    True

References:
    Efron & Tibshirani, 1993, "An Introduction to the Bootstrap", ch. 13 (percentile intervals)
    and ch. 16 (paired comparisons); Koehn, 2004, "Statistical Significance Tests for Machine
    Translation Evaluation" (paired bootstrap resampling).
"""

from __future__ import annotations

import numpy as np

MEDIAN_METRICS = frozenset({"median_rank"})


def _stat(name: str, values: np.ndarray, axis: int = 0) -> np.ndarray:
    return np.median(values, axis=axis) if name in MEDIAN_METRICS else values.mean(axis=axis)


def _replicates(
    values: dict[str, np.ndarray], n_boot: int, seed: int, block: int = 64
) -> dict[str, np.ndarray]:
    """(n_boot,) resampled statistic per metric, all from the same resampled query indices."""
    n = len(next(iter(values.values())))
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {k: [] for k in values}
    for s in range(0, n_boot, block):  # (block, n) indices at a time: bounded memory
        idx = rng.integers(0, n, size=(min(block, n_boot - s), n))
        for k, v in values.items():
            out[k].append(_stat(k, v[idx], axis=1))  # reduce over the resampled queries
    return {k: np.concatenate(v) for k, v in out.items()}


def bootstrap_intervals(
    values: dict[str, np.ndarray], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap ``1 - alpha`` interval of each metric from its per-query values.

    Args:
        values: metric -> (Q,) per-query values (see ``PerQueryRetrieval.values()``).
        n_boot: bootstrap replicates. alpha: 0.05 gives 95% intervals. seed: resampling seed.

    Returns:
        metric -> (low, high).
    """
    if not values or len(next(iter(values.values()))) == 0:
        return {}
    reps = _replicates(values, n_boot, seed)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    return {
        k: (float(np.percentile(r, q[0])), float(np.percentile(r, q[1]))) for k, r in reps.items()
    }


def paired_bootstrap(
    a: dict[str, np.ndarray],
    b: dict[str, np.ndarray],
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Difference ``b - a`` of each metric over the same queries, with interval and p-value.

    Both runs are resampled with the same query indices, so the variation shared by the runs
    (easy and hard queries) cancels. The two-sided p-value is twice the share of replicates on
    the far side of zero (at least ``1 / n_boot``); a difference is significant when its interval
    excludes zero.

    Args:
        a, b: metric -> (Q,) per-query values of the two runs, rows aligned (same queries).

    Returns:
        metric -> ``{"a", "b", "diff", "low", "high", "p_value", "significant"}`` (significant is 0/1).

    Example:
        >>> a = {"recall@1": np.zeros(200)}; b = {"recall@1": np.r_[np.ones(60), np.zeros(140)]}
        >>> r = paired_bootstrap(a, b, n_boot=200)["recall@1"]
        >>> round(r["diff"], 2), r["significant"]
        (0.3, 1.0)
    """
    keys = [k for k in a if k in b]
    if any(len(a[k]) != len(b[k]) for k in keys):
        raise ValueError("paired bootstrap needs the same queries in both runs")
    diffs = _replicates({k: np.stack([a[k], b[k]], axis=1) for k in keys}, n_boot, seed)
    out = {}
    for k in keys:
        d = diffs[k][:, 1] - diffs[k][:, 0]
        lo, hi = np.percentile(d, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        p = min(1.0, max(2 * min((d <= 0).mean(), (d >= 0).mean()), 1.0 / n_boot))
        va, vb = float(_stat(k, a[k])), float(_stat(k, b[k]))
        out[k] = {
            "a": va,
            "b": vb,
            "diff": vb - va,
            "low": float(lo),
            "high": float(hi),
            "p_value": float(p),
            "significant": float(lo > 0 or hi < 0),
        }
    return out
