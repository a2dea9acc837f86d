"""Parity of the tiled kernels with the plain references: values and every gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modalign.losses import LOSSES, info_nce_loss, siglip_loss
from modalign.losses.engine import pair_loss
from modalign.losses.tiled import (
    lse_pass,
    make_positives,
    tiled_info_nce_loss,
    tiled_siglip_loss,
)

PAIRS = {
    "infonce": (info_nce_loss, tiled_info_nce_loss),
    "siglip": (siglip_loss, tiled_siglip_loss),
}


def _inputs(
    n: int, m: int, d: int, dtype: torch.dtype, scale: float, seed: int = 0
) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = F.normalize(torch.randn(m, d, generator=g, dtype=dtype), dim=1)
    x = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)
    if n == m:
        x = F.normalize(x + y, dim=1)  # paired rows correlated, as after some training
    return [
        x.requires_grad_(),
        y.requires_grad_(),
        torch.tensor(scale, dtype=dtype, requires_grad=True),
        torch.tensor(-4.0, dtype=dtype, requires_grad=True),
    ]


def _value_and_grads(fn, inputs, *args, **kwargs):  # type: ignore[no-untyped-def]
    loss = fn(*inputs, *args, **kwargs)
    grads = torch.autograd.grad(loss, inputs, allow_unused=True, materialize_grads=True)
    return [loss.detach(), *grads]


def _assert_all_close(got, ref, rtol: float, scale_atol: float = 0.0) -> None:  # type: ignore[no-untyped-def]
    """``max|a - b| <= rtol * max|b|`` for each of loss and gradients (plus a floor for d/dscale)."""
    for name, a, b in zip(("loss", "x", "y", "scale", "bias"), got, ref, strict=True):
        atol = scale_atol if name == "scale" else 0.0
        assert (a - b).abs().max().item() <= rtol * b.abs().max().item() + atol, name


@pytest.mark.parametrize("loss", ["infonce", "siglip"])
@pytest.mark.parametrize("tile", [1, 3, 8, 64])
@pytest.mark.parametrize("groups", [False, True])
def test_parity_float64(loss: str, tile: int, groups: bool) -> None:
    ref_fn, tiled_fn = PAIRS[loss]
    n, m = (13, 13) if not groups else (13, 10)
    inputs = _inputs(n, m, 6, torch.float64, scale=7.0)
    gx = torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(1)) if groups else None
    gy = torch.randint(0, 5, (m,), generator=torch.Generator().manual_seed(2)) if groups else None
    ref = _value_and_grads(ref_fn, inputs, gx, gy)
    got = _value_and_grads(tiled_fn, inputs, gx, gy, tile_size=tile)
    _assert_all_close(got, ref, rtol=1e-12)


@pytest.mark.parametrize("loss", ["infonce", "siglip"])
@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_parity_float32_large_scale(loss: str, scale: float) -> None:
    """fp32 at CLIP's largest temperature: the shifted exponentials neither overflow nor drift.

    At scale 100 the model is nearly converged and d loss / d scale is a small difference
    (2.6e-4) of O(1) terms, so it is compared with an fp32-sized absolute floor as well.
    """
    ref_fn, tiled_fn = PAIRS[loss]
    inputs = _inputs(300, 300, 32, torch.float32, scale=scale, seed=3)
    ref = _value_and_grads(ref_fn, [t.detach().double().requires_grad_() for t in inputs])
    got = _value_and_grads(tiled_fn, inputs, tile_size=64)
    _assert_all_close([t.double() for t in got], ref, rtol=1e-5, scale_atol=2e-6)


@pytest.mark.parametrize("groups", [None, torch.tensor([0, 1, 0, 2, 1])])
def test_gradcheck_info_nce(groups: torch.Tensor | None) -> None:
    """Finite differences (SigLIP hands its one-pass gradients over once, so gradcheck's repeated
    backward does not apply; its parity with the checked reference covers it)."""
    inputs = _inputs(5, 5, 3, torch.float64, scale=2.0)[:3]
    # nondet_tol: worker threads may add column blocks in either order (last-bit differences).
    fn = lambda *t: tiled_info_nce_loss(*t, None, groups, groups, tile_size=2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(inputs), nondet_tol=1e-12)


def test_unnormalised_inputs_match() -> None:
    """Nothing assumes unit vectors: logits of magnitude ~300 still match."""
    inputs = _inputs(40, 40, 8, torch.float64, scale=30.0)
    with torch.no_grad():
        inputs[0].mul_(3.0)
    for ref_fn, tiled_fn in PAIRS.values():
        _assert_all_close(
            _value_and_grads(tiled_fn, inputs, tile_size=16),
            _value_and_grads(ref_fn, inputs),
            rtol=1e-10,
        )


def test_lse_pass_matches_logsumexp() -> None:
    x, y = torch.randn(37, 5, dtype=torch.float64), torch.randn(23, 5, dtype=torch.float64)
    row, col = lse_pass(x, y, 4.0, tile=8)
    full = 4.0 * x @ y.T
    torch.testing.assert_close(row, full.logsumexp(1))
    torch.testing.assert_close(col, full.logsumexp(0))


def test_no_grad_and_half_inputs() -> None:
    inputs = _inputs(20, 20, 8, torch.float32, scale=5.0)
    with torch.no_grad():
        for ref_fn, tiled_fn in PAIRS.values():
            torch.testing.assert_close(tiled_fn(*inputs, tile_size=7), ref_fn(*inputs))
    half = [t.detach().bfloat16() for t in inputs]
    torch.testing.assert_close(
        tiled_info_nce_loss(*half), info_nce_loss(*[t.float() for t in half]), rtol=1e-5, atol=1e-5
    )


def test_siglip_backward_twice_is_refused() -> None:
    inputs = _inputs(6, 6, 4, torch.float64, scale=3.0)
    loss = tiled_siglip_loss(*inputs)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_registry_uses_tiled_kernels_and_pair_loss_matches() -> None:
    assert LOSSES.get("infonce").fn is info_nce_loss and LOSSES.get("infonce").block is not None
    assert LOSSES.get("siglip").fn is siglip_loss and LOSSES.get("siglip").block is not None
    x, y, s, b = _inputs(9, 9, 4, torch.float64, scale=5.0)
    for name, (ref_fn, _) in PAIRS.items():
        torch.testing.assert_close(pair_loss(name, x, y, s, b, tile_size=4), ref_fn(x, y, s, b))


def test_make_positives_counts() -> None:
    rows, cols = torch.tensor([3, 3, 5, 9]), torch.tensor([5, 3, 5])
    pos = make_positives(3, slice(1, 3), 4, rows, cols)
    assert pos.row_pos.tolist() == [1.0, 2.0]  # local rows 1 and 2: groups 3 and 5
    assert pos.col_pos.tolist() == [1.0, 2.0, 1.0]
    assert pos.n_rows_with_pos == 3  # group 9 has no column
    with pytest.raises(ValueError, match="both sides"):
        make_positives(3, slice(0, 3), 3, rows[:3], None)
    with pytest.raises(ValueError, match="equal sizes"):
        make_positives(3, slice(0, 4), 4)


def test_empty_batch_gives_zero_loss_and_gradients() -> None:
    x = torch.zeros(0, 4, requires_grad=True)
    s = torch.tensor(2.0, requires_grad=True)
    for name in ("infonce", "siglip"):
        loss = pair_loss(name, x, x, s, torch.tensor(0.0))
        loss.backward()
        assert loss.item() == 0.0 and s.grad is not None and s.grad.item() == 0.0


def test_deterministic_mode_is_bitwise_reproducible() -> None:
    inputs = _inputs(50, 50, 8, torch.float32, scale=10.0)
    torch.use_deterministic_algorithms(True)
    try:
        runs = [_value_and_grads(tiled_info_nce_loss, inputs, tile_size=8) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)
