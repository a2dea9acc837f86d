"""TOC against a numpy reference and a hand table; CLUB on Gaussians with known information."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modalign.errors import ConfigError
from modalign.quantize.disentangle import CLUBEstimator, CrossCPC, club_estimate, info_nce
from modalign.quantize.toc import select_dimensions, toc_scores


def np_toc(E: np.ndarray, lam: float) -> np.ndarray:
    L, D = E.shape
    out = []
    for d in range(D):
        sim = np.mean([E[i, d] * E[j, d] for i in range(L) for j in range(L) if i != j])
        var = np.mean((E[:, d] - E[:, d].mean()) ** 2)
        out.append(-lam * sim + (1 - lam) * var)
    return np.array(out)


def test_toc_scores_match_pairwise_numpy() -> None:
    E = np.random.default_rng(0).normal(size=(12, 7)) + np.linspace(-2, 2, 7)
    for lam in (0.0, 0.7, 1.0):
        np.testing.assert_allclose(toc_scores(E, lam), np_toc(E, lam), rtol=1e-10, atol=1e-12)


def test_toc_hand_table() -> None:
    # codes (rows) x dimensions (columns); lambda 0.7
    E = np.array([[2.0, 1.0, 0.0], [2.0, -1.0, 3.0], [2.0, 0.0, -3.0]])
    # dim 0: sim = 4, var = 0        -> J = -2.8
    # dim 1: sim = (0 - 2)/6 = -1/3, var = 2/3   -> J = 0.7/3 + 0.2 = 0.4333
    # dim 2: sim = (0 - 18)/6 = -3, var = 6      -> J = 2.1 + 1.8 = 3.9
    np.testing.assert_allclose(toc_scores(E, 0.7), [-2.8, 0.7 / 3 + 0.3 * 2 / 3, 3.9])
    assert select_dimensions(E, 2).tolist() == [1, 2]
    assert select_dimensions(E, 2, bottom_share=0.5).tolist() == [0, 2]  # best one + worst one


def test_toc_rejects_bad_keep() -> None:
    with pytest.raises(ConfigError, match="--keep 4"):
        select_dimensions(np.zeros((3, 3)), 4)


def test_club_negative_term_matches_all_pairs() -> None:
    rng = np.random.default_rng(1)
    mu, logvar, y = (torch.tensor(rng.normal(size=(9, 3))) for _ in range(3))
    var = torch.exp(logvar)
    pos = (-((mu - y) ** 2) / 2 / var).sum(1)
    neg = torch.stack([(-((y - mu[i]) ** 2) / 2 / var[i]).sum(1).mean() for i in range(9)])
    assert abs(float(club_estimate(mu, logvar, y)) - float((pos - neg).mean())) < 1e-10


def gaussians(rho: float, n: int, dims: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dims, generator=g)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, dims, generator=g)
    return x, y


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.8])
def test_club_with_true_conditional_is_its_analytic_upper_bound(rho: float) -> None:
    """With q = p(y|x) = N(rho x, 1 - rho^2), CLUB is rho^2 / (1 - rho^2) per dimension, which
    is above the true information -0.5 log(1 - rho^2) (equal only at rho = 0)."""
    x, y = gaussians(rho, 20000, 4, seed=0)
    est = float(club_estimate(rho * x, torch.full_like(x, math.log(1 - rho**2)), y))
    true_mi = -0.5 * math.log(1 - rho**2) * 4
    assert est == pytest.approx(rho**2 / (1 - rho**2) * 4, abs=0.08)
    assert est >= true_mi - 0.05


def test_trained_club_tracks_information_of_correlated_gaussians() -> None:
    """vCLUB fitted by maximum likelihood: near 0 for independent, above the true MI and close
    to the analytic CLUB value for correlated, increasing with the correlation."""
    torch.manual_seed(0)
    estimates = {}
    for rho in (0.0, 0.5, 0.8):
        x, y = gaussians(rho, 1000, 2, seed=1)
        club = CLUBEstimator(2, 2, hidden_dim=16)
        opt = torch.optim.Adam(club.parameters(), lr=0.02)
        for _ in range(120):
            opt.zero_grad()
            (-club.loglik(x, y)).backward()
            opt.step()
        with torch.no_grad():  # on fresh samples: the fit itself overfits a little
            estimates[rho] = float(club(*gaussians(rho, 4000, 2, seed=2)))
    assert abs(estimates[0.0]) < 0.05
    for rho in (0.5, 0.8):
        true_mi = -0.5 * math.log(1 - rho**2) * 2
        assert true_mi * 0.9 <= estimates[rho] <= rho**2 / (1 - rho**2) * 2 * 1.2
    assert estimates[0.0] < estimates[0.5] < estimates[0.8]


def test_info_nce_matches_numpy() -> None:
    rng = np.random.default_rng(2)
    p, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    s = p @ t.T
    want = np.mean([np.log(np.exp(s[i]).sum()) - s[i, i] for i in range(5)])
    assert abs(float(info_nce(torch.tensor(p), torch.tensor(t))) - want) < 1e-10


def test_cross_cpc_learns_to_predict_the_other_modality() -> None:
    """Each sample's two modalities repeat a hidden pattern over time (the second with its
    features permuted): the past of one predicts the next step of the other, and CPC's loss
    falls from chance (log B) to a small fraction of it."""
    torch.manual_seed(0)
    pattern = torch.randn(32, 1, 16).expand(32, 4, 16)
    z = {
        "a": pattern + 0.1 * torch.randn(32, 4, 16),
        "b": pattern[..., torch.randperm(16)] + 0.1 * torch.randn(32, 4, 16),
    }
    cpc = CrossCPC(["a", "b"], 16, context_dim=32)
    opt = torch.optim.Adam(cpc.parameters(), lr=0.03)
    first = float(cpc(z).detach())
    for _ in range(40):
        opt.zero_grad()
        loss = cpc(z)
        loss.backward()
        opt.step()
    assert first > 0.8 * math.log(32)
    assert float(loss.detach()) < 0.2 * math.log(32)
