"""HN-NCE, the debiased loss and the uniformity term against plain loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modalign.losses import LOSSES, info_nce_loss, pair_loss
from modalign.losses.negatives import debiased_loss, hn_nce_loss, uniformity_loss


def _pos(gx: list[int] | None, gy: list[int] | None, n: int, m: int) -> list[list[bool]]:
    if gx is None or gy is None:
        return [[i == j for j in range(m)] for i in range(n)]
    return [[gx[i] == gy[j] for j in range(m)] for i in range(n)]


def _naive_direction(logits: torch.Tensor, pos: list[list[bool]], per_pair) -> torch.Tensor:  # type: ignore[no-untyped-def]
    rows = []
    for i in range(logits.shape[0]):
        p = [j for j in range(logits.shape[1]) if pos[i][j]]
        n = [j for j in range(logits.shape[1]) if not pos[i][j]]
        if p:
            rows.append(torch.stack([per_pair(logits[i], p, n, j) for j in p]).mean())
    return torch.stack(rows).mean()


def naive_hn_nce(x, y, scale, gx, gy, alpha, beta):  # type: ignore[no-untyped-def]
    def per_pair(row, p, n, j):  # type: ignore[no-untyped-def]
        z = alpha * sum(torch.exp(row[q]) for q in p)
        if n:
            hard = torch.tensor([math.exp(beta * row[k].item()) for k in n])  # no gradient
            w = len(n) * hard / hard.sum()
            z = z + sum(w[t] * torch.exp(row[k]) for t, k in enumerate(n))
        return -row[j] + torch.log(z)

    logits = scale * x @ y.T
    pos = _pos(gx, gy, x.shape[0], y.shape[0])
    pos_t = [list(r) for r in zip(*pos, strict=True)]
    return (
        _naive_direction(logits, pos, per_pair) + _naive_direction(logits.T, pos_t, per_pair)
    ) / 2


def naive_debiased(x, y, scale, gx, gy, tau):  # type: ignore[no-untyped-def]
    def per_pair(row, p, n, j):  # type: ignore[no-untyped-def]
        if not n:
            return row[j] * 0
        neg = sum(torch.exp(row[k]) for k in n) / len(n)
        g = torch.clamp((neg - tau * torch.exp(row[j])) / (1 - tau), min=math.exp(-scale))
        return -torch.log(torch.exp(row[j]) / (torch.exp(row[j]) + len(n) * g))

    logits = scale * x @ y.T
    pos = _pos(gx, gy, x.shape[0], y.shape[0])
    pos_t = [list(r) for r in zip(*pos, strict=True)]
    return (
        _naive_direction(logits, pos, per_pair) + _naive_direction(logits.T, pos_t, per_pair)
    ) / 2


def _inputs(n: int, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, 5, generator=g, dtype=torch.float64), dim=1)
    y = F.normalize(torch.randn(m, 5, generator=g, dtype=torch.float64), dim=1)
    return x.requires_grad_(), y.requires_grad_()


GROUPS = [(None, None, 6, 6), ([0, 0, 1, 2, 2, 3], [0, 1, 1, 2, 4, 4, 5], 6, 7)]


@pytest.mark.parametrize(("gx", "gy", "n", "m"), GROUPS)
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.5), (0.7, 2.0)])
def test_hn_nce_matches_loop_in_value_and_gradient(gx, gy, n, m, alpha, beta) -> None:  # type: ignore[no-untyped-def]
    x, y = _inputs(n, m, 0)
    tx = None if gx is None else torch.tensor(gx)
    ty = None if gy is None else torch.tensor(gy)
    got = hn_nce_loss(x, y, torch.tensor(4.0), None, tx, ty, alpha=alpha, beta=beta)
    want = naive_hn_nce(x, y, 4.0, gx, gy, alpha, beta)
    assert torch.allclose(got, want, atol=1e-9)
    g_got = torch.autograd.grad(got, (x, y))
    g_want = torch.autograd.grad(want, (x, y))
    for a, b in zip(g_got, g_want, strict=True):
        assert torch.allclose(a, b, atol=1e-8)


@pytest.mark.parametrize(("gx", "gy", "n", "m"), GROUPS)
@pytest.mark.parametrize("scale", [4.0, 30.0])
def test_debiased_matches_loop_in_value_and_gradient(gx, gy, n, m, scale) -> None:  # type: ignore[no-untyped-def]
    x, y = _inputs(n, m, 1)
    tx = None if gx is None else torch.tensor(gx)
    ty = None if gy is None else torch.tensor(gy)
    got = debiased_loss(x, y, torch.tensor(scale, dtype=torch.float64), None, tx, ty, tau_plus=0.1)
    want = naive_debiased(x, y, scale, gx, gy, 0.1)
    assert torch.allclose(got, want, atol=1e-9)
    for a, b in zip(
        torch.autograd.grad(got, (x, y)), torch.autograd.grad(want, (x, y)), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-9)


def test_both_reduce_to_info_nce_and_stay_finite_at_large_scale() -> None:
    x, y = _inputs(8, 8, 2)
    g = torch.tensor([0, 0, 1, 2, 3, 3, 4, 5])
    s = torch.tensor(10.0, dtype=torch.float64)
    ref = info_nce_loss(x, y, s, None, g, g)
    assert torch.allclose(hn_nce_loss(x, y, s, None, g, g, alpha=1.0, beta=0.0), ref)
    # the debiased loss counts one positive per term: InfoNCE exactly for paired rows
    assert torch.allclose(debiased_loss(x, y, s, tau_plus=0.0), info_nce_loss(x, y, s))
    big = torch.tensor(500.0)  # exp(500) overflows: the losses must not
    xf, yf = x.detach().float(), y.detach().float()
    assert torch.isfinite(debiased_loss(xf, yf, big)) and torch.isfinite(hn_nce_loss(xf, yf, big))
    # hardness puts more weight on the hardest negative: the loss grows with beta
    assert hn_nce_loss(x, y, s, beta=4.0) > hn_nce_loss(x, y, s, beta=0.0)


def test_registered_and_run_through_the_engine() -> None:
    x, y = _inputs(6, 6, 3)
    s = torch.tensor(5.0, dtype=torch.float64)
    for name, fn in (("hn_nce", hn_nce_loss), ("debiased", debiased_loss)):
        assert LOSSES.get(name).fn is fn
        assert torch.allclose(pair_loss(name, x, y, s), fn(x, y, s))


def test_uniformity_against_numpy() -> None:
    x = F.normalize(torch.randn(7, 4, dtype=torch.float64), dim=1)
    a = x.numpy()
    d2 = [((a[i] - a[j]) ** 2).sum() for i in range(7) for j in range(i + 1, 7)]
    want = np.log(np.mean(np.exp(-2.0 * np.array(d2))))
    assert uniformity_loss(x).item() == pytest.approx(want, abs=1e-10)
    dup = torch.cat([x[:1], x[:1]]).requires_grad_()  # duplicates: finite gradient
    uniformity_loss(dup).backward()
    assert dup.grad is not None and torch.isfinite(dup.grad).all()
    assert uniformity_loss(x[:1]).item() == 0.0
