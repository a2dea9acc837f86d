"""Closed-form fits (modalign.linalg) against numpy references, and the CCA head start against
the CCA baseline's map."""

from __future__ import annotations

import numpy as np

from modalign.eval.baselines import BASELINES, PairFeatures
from modalign.linalg import fit_cca, fit_cca_affine, fit_pca, fit_procrustes, fit_ridge


def test_pca_matches_svd() -> None:
    x = np.random.default_rng(0).normal(size=(30, 50))
    for data in (x, x.T.copy()):
        mean, axes = fit_pca(data, 5)
        _, _, vt = np.linalg.svd(data - data.mean(0), full_matrices=False)
        np.testing.assert_allclose(np.abs(axes), np.abs(vt[:5].T), atol=1e-8)
        np.testing.assert_allclose(mean, data.mean(0))


def test_procrustes_recovers_a_rotation() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(100, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    np.testing.assert_allclose(fit_procrustes(a, a @ q), q, atol=1e-10)


def test_cca_finds_the_shared_direction() -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(size=(2000, 1))
    a = np.hstack([z, rng.normal(size=(2000, 3))])
    b = np.hstack([rng.normal(size=(2000, 2)), -z])
    pa, pb = fit_cca(a - a.mean(0), b - b.mean(0), 1, reg=0.0)
    ea, eb = (a - a.mean(0)) @ pa, (b - b.mean(0)) @ pb
    assert abs(np.corrcoef(ea[:, 0], eb[:, 0])[0, 1]) > 0.99


def test_cca_init_is_exactly_the_cca_baseline_map() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(120, 5))
    feats = {
        "a": z @ rng.normal(size=(5, 30)) + 0.5 * rng.normal(size=(120, 30)) + 3.0,
        "b": z @ rng.normal(size=(5, 20)) + 0.5 * rng.normal(size=(120, 20)) - 1.0,
    }
    (wa, ba), (wb, bb) = fit_cca_affine(feats["a"], feats["b"], dim=8, pca_dim=8, reg=0.1)
    pair = PairFeatures(feats, "a", "b", np.ones(120, dtype=bool))
    ref = BASELINES.get("cca").fit(pair, 8, 0.1, rng)
    for m, w, b in (("a", wa, ba), ("b", wb, bb)):
        mean, proj = ref[m]
        np.testing.assert_allclose(feats[m] @ w + b, (feats[m] - mean) @ proj, atol=1e-8)


def test_cca_init_pads_columns_past_the_rank() -> None:
    rng = np.random.default_rng(1)
    (wa, _), (wb, _) = fit_cca_affine(rng.normal(size=(40, 6)), rng.normal(size=(40, 3)), dim=10)
    assert wa.shape == (6, 10) and wb.shape == (3, 10)
    assert not wa[:, 3:].any() and not wb[:, 3:].any()  # 3 canonical pairs at most


def test_ridge_init_matches_closed_form() -> None:
    rng = np.random.default_rng(2)
    x, t = rng.normal(size=(50, 7)) + 2.0, rng.normal(size=(50, 4))
    w, b = fit_ridge(x, t, reg=0.5)
    xc = x - x.mean(0)
    lam = 0.5 * np.trace(xc.T @ xc) / 7
    ref = np.linalg.lstsq(
        np.vstack([xc, np.sqrt(lam) * np.eye(7)]),
        np.vstack([t - t.mean(0), np.zeros((7, 4))]),
        rcond=None,
    )[0]
    np.testing.assert_allclose(w, ref, atol=1e-10)
    np.testing.assert_allclose(b, t.mean(0) - x.mean(0) @ ref, atol=1e-10)
