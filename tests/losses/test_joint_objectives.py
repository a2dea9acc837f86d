"""Symile and GRAM against explicit loops and numpy; subset plans with missing rows; weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modalign.config import LossConfig
from modalign.errors import ConfigError
from modalign.losses.objectives import build_objective, gram_loss, gram_volumes, symile_loss
from modalign.losses.objectives.gram import VOLUME_EPS, lift


def _embs(k: int, n: int, d: int = 4, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [
        F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1).requires_grad_()
        for _ in range(k)
    ]


def naive_symile(embs, scale, groups, perms):  # type: ignore[no-untyped-def]
    """Explicit loops: each query against its positive and every shuffled candidate j != i."""
    k, n = len(embs), embs[0].shape[0]
    total = 0.0
    for q in range(k):
        others = [o for o in range(k) if o != q]
        losses = []
        for i in range(n):

            def mip(rows, q=q, i=i, others=others):  # type: ignore[no-untyped-def]
                v = embs[q][i]
                for o, r in zip(others, rows, strict=True):
                    v = v * embs[o][r]
                return scale * v.sum()

            pos = mip([i] * (k - 1))
            cands = [pos]
            for j in range(n):
                rows = [int(perms[q][t][j]) for t in range(k - 1)]
                if j == i or all(groups[r] == groups[i] for r in rows):
                    continue
                cands.append(mip(rows))
            losses.append(torch.logsumexp(torch.stack(cands), 0) - pos)
        total = total + torch.stack(losses).mean()
    return total / k


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("grouped", [False, True])
def test_symile_matches_loops_in_value_and_gradient(k: int, grouped: bool) -> None:
    n = 7
    embs = _embs(k, n, seed=k)
    groups = [0, 0, 1, 2, 2, 3, 4] if grouped else list(range(n))
    g = torch.Generator().manual_seed(5)
    perms = [[torch.randperm(n, generator=g) for _ in range(k - 1)] for _ in range(k)]
    tg = torch.tensor(groups) if grouped else None
    scale = torch.tensor(6.0, dtype=torch.float64)
    got = symile_loss(embs, scale, tg, perms)
    want = naive_symile(embs, 6.0, groups, perms)
    assert torch.allclose(got, want, atol=1e-10)
    g_got = torch.autograd.grad(got, embs)
    for a, b in zip(g_got, torch.autograd.grad(want, embs), strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    tiled = symile_loss(embs, scale, tg, perms, tile_size=3)  # checkpointed row blocks
    assert torch.allclose(tiled, got)
    for a, b in zip(torch.autograd.grad(tiled, embs), g_got, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_gram_volumes_against_numpy_determinant() -> None:
    a, b, c = (e.detach() for e in _embs(3, 5, d=6, seed=1))
    got = gram_volumes(a, [b, c]).numpy()
    for i in range(5):
        for j in range(5):
            v = np.stack([a[i].numpy(), b[j].numpy(), c[j].numpy()])  # (3, D)
            det = np.linalg.det(v @ v.T)
            assert got[i, j] == pytest.approx(math.sqrt(max(det, 0) + VOLUME_EPS), abs=1e-10)
            assert got[i, j] == pytest.approx(math.sqrt(max(det, 0)), abs=1e-3)
    # lifted vectors: the volume of a pair falls monotonically with its cosine
    x = F.normalize(torch.randn(50, 3, dtype=torch.float64), dim=1)
    cos = (x[:1] @ x.T)[0]
    vol = gram_volumes(lift(x[:1]), [lift(x)])[0]
    order = torch.argsort(cos)
    assert (vol[order].diff() <= 1e-9).all()


def naive_gram(anchor, others, scale, groups):  # type: ignore[no-untyped-def]
    n = anchor.shape[0]
    vol = [[None] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            v = torch.stack([anchor[i], *[o[j] for o in others]])
            vol[i][j] = torch.sqrt(torch.clamp(torch.det(v @ v.T), min=0) + VOLUME_EPS)
    logits = -scale * torch.stack([torch.stack(r) for r in vol])

    def side(lg, pos):  # type: ignore[no-untyped-def]
        rows = []
        for i in range(n):
            p = [j for j in range(n) if pos[i][j]]
            rows.append(torch.stack([torch.logsumexp(lg[i], 0) - lg[i][j] for j in p]).mean())
        return torch.stack(rows).mean()

    pos = [[groups[i] == groups[j] for j in range(n)] for i in range(n)]
    return (side(logits, pos) + side(logits.T, pos)) / 2


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("grouped", [False, True])
def test_gram_loss_matches_loops_in_value_and_gradient(k: int, grouped: bool) -> None:
    embs = _embs(k, 6, seed=10 + k)
    groups = [0, 1, 1, 2, 3, 3] if grouped else list(range(6))
    tg = torch.tensor(groups) if grouped else None
    got = gram_loss(embs[0], embs[1:], torch.tensor(5.0, dtype=torch.float64), tg, tile_size=4)
    want = naive_gram(embs[0], embs[1:], 5.0, groups)
    assert torch.allclose(got, want, atol=1e-10)
    for a, b in zip(torch.autograd.grad(got, embs), torch.autograd.grad(want, embs), strict=True):
        assert torch.allclose(a, b, atol=1e-8)


PRESENT = {  # row 4 holds a alone (no term), rows 1 and 5 miss c, row 2 misses b
    "a": torch.tensor([1, 1, 1, 1, 1, 1, 1]).bool(),
    "b": torch.tensor([1, 1, 0, 1, 0, 1, 1]).bool(),
    "c": torch.tensor([1, 0, 1, 1, 0, 0, 1]).bool(),
}
GROUPS = torch.tensor([0, 1, 2, 3, 4, 1, 5])


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        m: F.normalize(
            torch.randn(int(p.sum()), 4, generator=g, dtype=torch.float64), dim=1
        ).requires_grad_()
        for m, p in PRESENT.items()
    }


def _rows(
    emb: dict[str, torch.Tensor], subset: tuple[str, ...]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    rows = torch.stack([PRESENT[m] for m in subset]).all(0)
    parts = [emb[m][(torch.cumsum(PRESENT[m].long(), 0) - 1)[rows]] for m in subset]
    return parts, GROUPS[rows]


@pytest.mark.parametrize("name", ["symile", "gram"])
def test_joint_objective_terms_are_the_subset_losses_of_the_rows_holding_them(name: str) -> None:
    obj = build_objective(LossConfig(objective=name, anchor="b"), ["a", "b", "c"], 4)
    plan = obj.plan(PRESENT)
    # (a, b) is row 1's and row 5's exact set: a term; (b, c) is nobody's exact set: none
    assert plan == [("a", "b", "c"), ("a", "b"), ("a", "c")]
    emb = _batch()
    scale = torch.tensor(5.0, dtype=torch.float64)
    terms = obj.terms(emb, PRESENT, GROUPS, plan, scale, None)
    assert set(terms) == {"a_b_c", "a_b", "a_c"}
    for subset in plan:
        parts, g = _rows(emb, subset)
        if name == "symile":
            gen = torch.Generator().manual_seed(1_000_003 + obj.calls)
            want = symile_loss(parts, scale, g, generator=gen)
        else:
            i = subset.index("b") if "b" in subset else 0
            lifted = [lift(p) for p in parts]
            want = gram_loss(lifted[i], [p for j, p in enumerate(lifted) if j != i], scale, g)
        assert torch.allclose(terms["_".join(subset)], want)
    total = obj.total(terms)
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(e.grad).all() for e in emb.values())  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["all_pairs", "anchor", "symile", "gram"])
def test_batch_without_trainable_term_is_skipped(name: str) -> None:
    obj = build_objective(LossConfig(objective=name, anchor="a"), ["a", "b", "c"], 4)
    one_row = {m: torch.tensor([True]) for m in "abc"}
    lonely = {
        "a": torch.tensor([True, False]),
        "b": torch.tensor([False, True]),
        "c": torch.tensor([False, False]),
    }
    assert not obj.plan(one_row) and not obj.plan(lonely)


def test_pair_weights_and_uniformity_enter_the_total() -> None:
    cfg = LossConfig(weights={"b-a": 3.0, "b-c": 0.0}, uniformity=0.5)
    obj = build_objective(cfg, ["a", "b", "c"], 4)
    assert obj.pairs == [("a", "b"), ("a", "c")]  # weight 0: not trained
    emb = _batch(1)
    scale = torch.tensor(5.0, dtype=torch.float64)
    terms = obj.terms(emb, PRESENT, GROUPS, obj.plan(PRESENT), scale, None)
    unif = torch.stack([terms[f"uniformity_{m}"] for m in "abc"]).mean()
    want = (3 * terms["a_b"] + terms["a_c"]) / 4 + 0.5 * unif
    assert torch.allclose(obj.total(terms), want)
    with pytest.raises(ConfigError, match=r"loss\.weights\.a-d"):
        build_objective(LossConfig(weights={"a-d": 1.0}), ["a", "b", "c"], 4)
    with pytest.raises(ConfigError, match="pairwise"):
        build_objective(LossConfig(objective="gram", weights={"a-b": 1.0}), ["a", "b", "c"], 4)
