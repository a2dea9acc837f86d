"""Training-free optimisation of a trained codebook (TOC): keep its most informative dimensions.

For every dimension d of the codebook E (L codes x D), TOC scores how much the codes *differ*
there: ``sim_d`` is the mean product of two different codes' values (high when all codes agree
in sign and size, i.e. the dimension carries little to tell codes apart), ``var_d`` the variance
of the codes' values; ``J_d = -lambda * sim_d + (1 - lambda) * var_d``. Quantisation still uses
the full codebook; only the kept dimensions are passed on to the downstream model.

The mean over ordered pairs i != j needs no L x L product:
``sum_{i != j} E[i,d] E[j,d] = (sum_i E[i,d])^2 - sum_i E[i,d]^2``.

Example:
    >>> E = np.array([[1.0, 3.0], [1.0, -3.0], [1.0, 0.0]])
    >>> select_dimensions(E, keep=1).tolist()   # dimension 0 is the same in every code
    [1]

References:
    Huang et al. "Enhancing Multimodal Unified Representations for Cross Modal Generalization",
    arXiv 2403.05168 (ACL 2025 Findings); public code github.com/haihuangcode/CMG.
"""

from __future__ import annotations

import numpy as np

from modalign.errors import ConfigError


def toc_scores(codebook: np.ndarray, lam: float = 0.7) -> np.ndarray:
    """The score J_d of every dimension of a codebook.

    Args:
        codebook: (L, D) codes, L >= 2. lam: the weight lambda of the similarity term (0.7).

    Returns:
        (D,) float64 scores, higher is more informative.

    Example:
        >>> toc_scores(np.array([[1.0, 2.0], [3.0, -2.0]]), lam=0.5).tolist()
        [-1.0, 4.0]
    """
    e = np.asarray(codebook, dtype=np.float64)
    if e.ndim != 2 or e.shape[0] < 2:
        raise ConfigError(f"TOC needs a codebook of shape (L >= 2, D), got {e.shape}")
    n = e.shape[0]
    total = e.sum(0)  # (D,)
    sim = (total**2 - (e**2).sum(0)) / (n * (n - 1))  # mean over ordered pairs i != j
    var = e.var(0)  # population variance over the codes
    return -lam * sim + (1 - lam) * var


def select_dimensions(
    codebook: np.ndarray, keep: int, lam: float = 0.7, bottom_share: float = 0.0
) -> np.ndarray:
    """The ``keep`` dimensions TOC keeps, in increasing index order.

    Args:
        codebook: (L, D). keep: how many dimensions to keep (1..D). lam: see :func:`toc_scores`.
        bottom_share: share of ``keep`` taken from the lowest scores instead of the highest
            (the paper's optional mix; 0 keeps the top ``keep``).

    Returns:
        (keep,) int64 indices.

    Example:
        >>> select_dimensions(np.array([[0.0, 1.0, 5.0], [0.0, -1.0, -5.0]]), keep=2).tolist()
        [1, 2]
    """
    scores = toc_scores(codebook, lam)
    d = scores.shape[0]
    if not 1 <= keep <= d:
        raise ConfigError(f"--keep {keep}: must be between 1 and the codebook width {d}")
    if not 0.0 <= bottom_share <= 1.0:
        raise ConfigError(f"bottom share {bottom_share}: must be in [0, 1]")
    order = np.argsort(-scores, kind="stable")  # best first
    n_bottom = round(keep * bottom_share)
    chosen = np.concatenate([order[: keep - n_bottom], order[d - n_bottom :]])
    return np.sort(chosen).astype(np.int64)
