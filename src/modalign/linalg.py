"""Closed-form linear fits shared by head initialisation and the baselines: PCA, CCA,
orthogonal Procrustes and ridge regression.

All functions take float arrays of rows (N, D) and return plain numpy arrays; they compute in
float64.

Example:
    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(200, 2))
    >>> a, b = z @ rng.normal(size=(2, 6)), z @ rng.normal(size=(2, 5))
    >>> (wa, ba), (wb, bb) = fit_cca_affine(a, b, dim=2, reg=1e-3)
    >>> ea, eb = a @ wa + ba, b @ wb + bb
    >>> bool(np.corrcoef(ea[:, 0], eb[:, 0])[0, 1] > 0.99)
    True

References:
    Pearson, 1901 (PCA); Hotelling, 1936, "Relations between two sets of variates" (CCA); Vinod,
    1976, "Canonical ridge and econometrics of joint production"; Schönemann, 1966, "A
    generalized solution of the orthogonal Procrustes problem"; Hoerl & Kennard, 1970, "Ridge
    regression".
"""

from __future__ import annotations

import numpy as np

Affine = tuple[np.ndarray, np.ndarray]
"""``(W, b)``: a row ``x`` maps to ``x @ W + b``; W (D, dim), b (dim,)."""


def fit_pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and top-``k`` principal axes (D, k') of ``x`` (N, D), k' = min(k, rank bound)."""
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
    """Orthogonal R (k, k) minimising ||a R - b||_F for paired rows a, b (N, k): with
    ``a^T b = U S V^T``, ``R = U V^T``."""
    u, _, vt = np.linalg.svd(a.T @ b)
    return u @ vt


def _inv_sqrt(c: np.ndarray, reg: float) -> np.ndarray:
    """``(C + reg * mean_eig(C) * I)^(-1/2)`` of a symmetric (D, D) covariance."""
    w, v = np.linalg.eigh(c + reg * np.trace(c) / len(c) * np.eye(len(c)))
    return (v / np.sqrt(np.maximum(w, 1e-12))) @ v.T


def fit_cca(
    a: np.ndarray, b: np.ndarray, k: int, reg: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """Projections (Da, k) and (Db, k) of centred paired rows onto the top-``k`` canonical pairs.

    Each side is whitened (``C_aa^{-1/2}``, covariances shrunk towards a multiple of the identity
    by ``reg`` relative to their mean eigenvalue, which small train sets need); the SVD of the
    whitened cross-covariance gives the canonical directions, and each column is scaled by its
    canonical correlation.
    """
    n = len(a)
    wa, wb = _inv_sqrt(a.T @ a / n, reg), _inv_sqrt(b.T @ b / n, reg)  # whiteners
    u, s, vt = np.linalg.svd(wa @ (a.T @ b / n) @ wb)  # whitened cross-covariance
    k = min(k, len(s))
    return wa @ u[:, :k] * s[:k], wb @ vt[:k].T * s[:k]


def fit_cca_affine(
    xa: np.ndarray, xb: np.ndarray, dim: int, pca_dim: int | None = None, reg: float = 0.1
) -> tuple[Affine, Affine]:
    """Affine maps of paired rows ``xa`` (N, Da) and ``xb`` (N, Db) onto their top-``dim``
    regularised canonical directions, after centring and PCA to ``pca_dim`` (None: full rank).

    Returns:
        ``((Wa, ba), (Wb, bb))`` with ``x @ W + b = (x - mean) @ P @ C``; W has ``dim`` columns,
        zero past the CCA's rank.
    """
    xa, xb = xa.astype(np.float64), xb.astype(np.float64)
    k = pca_dim or max(xa.shape[1], xb.shape[1])
    (ma, pa), (mb, pb) = fit_pca(xa, k), fit_pca(xb, k)
    k = min(pa.shape[1], pb.shape[1])
    pa, pb = pa[:, :k], pb[:, :k]
    ca, cb = fit_cca((xa - ma) @ pa, (xb - mb) @ pb, dim, reg)  # (k, r), r <= dim
    out = []
    for mean, p, c in ((ma, pa, ca), (mb, pb, cb)):
        w = np.zeros((len(mean), dim))
        w[:, : c.shape[1]] = p @ c
        out.append((w, -mean @ w))
    return out[0], out[1]


def fit_ridge(x: np.ndarray, target: np.ndarray, reg: float = 0.1) -> Affine:
    """Ridge regression with intercept of ``target`` (N, dim) on ``x`` (N, D): ``(W, b)``.

    The penalty is ``reg`` times the mean eigenvalue of the centred Gram matrix ``xc^T xc``.
    """
    x, target = x.astype(np.float64), target.astype(np.float64)
    mx, mt = x.mean(0), target.mean(0)
    xc = x - mx
    gram = xc.T @ xc  # (D, D)
    lam = reg * np.trace(gram) / len(gram)
    w = np.linalg.solve(gram + lam * np.eye(len(gram)), xc.T @ (target - mt))  # (D, dim)
    return w, mt - mx @ w
