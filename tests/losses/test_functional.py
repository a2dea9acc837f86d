"""The plain full-matrix losses against naive loop references and a hand-computed table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modalign.losses.functional import info_nce_loss, positive_mask, siglip_loss


def naive_info_nce(x, y, scale, gx=None, gy=None):  # type: ignore[no-untyped-def]
    """Scalar loops: each row (column) is a soft-target cross-entropy over its positives."""
    n, m = len(x), len(y)
    gx = list(range(n)) if gx is None else [int(g) for g in gx]
    gy = list(range(m)) if gy is None else [int(g) for g in gy]
    logit = [
        [scale * sum(x[i][k] * y[j][k] for k in range(len(x[i]))) for j in range(m)]
        for i in range(n)
    ]

    def direction(rows, cols, get, g_rows, g_cols):  # type: ignore[no-untyped-def]
        total, count = 0.0, 0
        for i in range(rows):
            pos = [j for j in range(cols) if g_rows[i] == g_cols[j]]
            if not pos:
                continue
            lse = torch.logsumexp(torch.stack([get(i, j) for j in range(cols)]), 0)
            total = total + sum(lse - get(i, j) for j in pos) / len(pos)
            count += 1
        return total / max(count, 1)

    rows = direction(n, m, lambda i, j: logit[i][j], gx, gy)
    cols = direction(m, n, lambda j, i: logit[i][j], gy, gx)
    return (rows + cols) / 2


def naive_siglip(x, y, scale, bias, gx=None, gy=None):  # type: ignore[no-untyped-def]
    n, m = len(x), len(y)
    gx = list(range(n)) if gx is None else [int(g) for g in gx]
    gy = list(range(m)) if gy is None else [int(g) for g in gy]
    total = 0.0
    for i in range(n):
        for j in range(m):
            z = 1.0 if gx[i] == gy[j] else -1.0
            logit = scale * sum(x[i][k] * y[j][k] for k in range(len(x[i]))) + bias
            total = total + torch.log1p(torch.exp(-z * logit))
    return total / n


def numpy_info_nce(x: np.ndarray, y: np.ndarray, scale: float, pos: np.ndarray) -> float:
    logits = scale * x @ y.T
    out = []
    for lg, p in ((logits, pos), (logits.T, pos.T)):
        lse = np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1)
        has = p.sum(1) > 0
        per_row = ((lse[:, None] - lg) * p).sum(1)[has] / p.sum(1)[has]
        out.append(per_row.mean())
    return float(sum(out) / 2)


def _leaves(n: int, m: int, d: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    y = F.normalize(torch.randn(m, d, generator=g, dtype=torch.float64), dim=1)
    s = torch.tensor(3.0, dtype=torch.float64)
    b = torch.tensor(-1.5, dtype=torch.float64)
    return tuple(t.requires_grad_() for t in (x, y, s, b))


def _grads(loss: torch.Tensor, leaves: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, leaves, allow_unused=True, materialize_grads=True))


@pytest.mark.parametrize("groups", [False, True])
def test_info_nce_matches_loops_in_value_and_gradient(groups: bool) -> None:
    n, m = (5, 5) if not groups else (5, 4)
    leaves = _leaves(n, m, 3, seed=1)
    x, y, s, b = leaves
    gx = torch.tensor([0, 1, 1, 2, 3]) if groups else None
    gy = torch.tensor([1, 0, 2, 1]) if groups else None  # group 3 has no column: row 4 is left out
    ref = naive_info_nce(x, y, s, gx, gy)
    got = info_nce_loss(x, y, s, b, gx, gy)
    torch.testing.assert_close(got, ref)
    for a, r in zip(_grads(got, leaves), _grads(ref, leaves), strict=True):
        torch.testing.assert_close(a, r)
    pos = positive_mask(n, m, gx, gy, x.device).numpy().astype(float)
    assert got.item() == pytest.approx(
        numpy_info_nce(x.detach().numpy(), y.detach().numpy(), 3.0, pos)
    )


@pytest.mark.parametrize("groups", [False, True])
def test_siglip_matches_loops_in_value_and_gradient(groups: bool) -> None:
    n, m = (4, 4) if not groups else (4, 6)
    leaves = _leaves(n, m, 3, seed=2)
    x, y, s, b = leaves
    gx = torch.tensor([0, 0, 1, 2]) if groups else None
    gy = torch.tensor([2, 0, 1, 1, 5, 0]) if groups else None
    ref = naive_siglip(x, y, s, b, gx, gy)
    got = siglip_loss(x, y, s, b, gx, gy)
    torch.testing.assert_close(got, ref)
    for a, r in zip(_grads(got, leaves), _grads(ref, leaves), strict=True):
        torch.testing.assert_close(a, r)


def test_hand_computed_two_by_two() -> None:
    """x = y = I, scale 1: logits are I. Worked by hand:

    | quantity                  | value                                   |
    |---------------------------|-----------------------------------------|
    | InfoNCE, each row/column  | log(1 + e^-1) = 0.3132617               |
    | InfoNCE d/dscale          | -e^-1 / (1 + e^-1) = -0.2689414         |
    | SigLIP (bias 0)           | (2 log(1+e^-1) + 2 log 2) / 2 = 1.0064089|
    | SigLIP d/dbias            | (2 (s(1) - 1) + 2 s(0)) / 2 = 0.7310586 - 1 + 0.5 = 0.2310586 |
    """
    eye = torch.eye(2, dtype=torch.float64)
    s = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    loss = info_nce_loss(eye, eye, s)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-7)
    (g,) = torch.autograd.grad(loss, s)
    assert g.item() == pytest.approx(-0.2689414, abs=1e-7)
    loss = siglip_loss(eye, eye, s, b)
    assert loss.item() == pytest.approx(1.0064089, abs=1e-7)
    _, gb = torch.autograd.grad(loss, (s, b))
    assert gb.item() == pytest.approx(0.2310586, abs=1e-7)


def test_rows_without_positive_are_left_out() -> None:
    x = F.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1)
    s = torch.tensor(2.0, dtype=torch.float64)
    g_rows, g_cols = torch.tensor([0, 1, 7]), torch.tensor([0, 1, 1])
    full = info_nce_loss(x, x, s, None, g_rows, g_cols)
    assert torch.isfinite(full)
    torch.testing.assert_close(full, naive_info_nce(x, x, s, g_rows, g_cols))


def test_positive_mask_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="equal sizes"):
        positive_mask(2, 3, None, None, torch.device("cpu"))
    with pytest.raises(ValueError, match="both sides"):
        positive_mask(2, 2, torch.tensor([0, 1]), None, torch.device("cpu"))
