"""Objectives: which rows and pairs each term uses, against the plain pair loss on those rows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modalign.config import load_config
from modalign.errors import ConfigError
from modalign.losses import info_nce_loss, siglip_loss
from modalign.losses.objectives import AllPairsObjective, AnchorObjective, build_objective


def _unit(n: int, d: int = 5) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, dtype=torch.float64), dim=1)


def test_pair_terms_use_only_rows_with_both_modalities() -> None:
    torch.manual_seed(0)
    present = {
        "a": torch.tensor([True, True, False, True]),
        "b": torch.tensor([True, False, True, True]),
    }
    emb = {"a": _unit(3), "b": _unit(3)}
    obj = AllPairsObjective(["a", "b"], embed_dim=5, tile_size=2)
    plan = obj.plan(present)
    out = obj.terms(emb, present, None, plan, torch.tensor(10.0, dtype=torch.float64), None)
    # rows 0 and 3 have both: a's rows 0 and 2 (of its present rows), b's rows 0 and 2
    expected = info_nce_loss(emb["a"][[0, 2]], emb["b"][[0, 2]], torch.tensor(10.0))
    torch.testing.assert_close(out["a_b"], expected)
    torch.testing.assert_close(obj.total(out), expected)


def test_three_modalities_with_groups_match_the_mean_of_plain_pair_losses() -> None:
    torch.manual_seed(1)
    present = {
        "a": torch.tensor([True, True, True, True, True, False]),
        "b": torch.tensor([True, False, True, True, True, True]),
        "c": torch.tensor([False, True, True, False, True, True]),
    }
    groups = torch.tensor([0, 1, 1, 2, 3, 3])
    emb = {m: _unit(int(p.sum())) for m, p in present.items()}
    scale, bias = torch.tensor(7.0, dtype=torch.float64), torch.tensor(-3.0, dtype=torch.float64)
    obj = AllPairsObjective(["a", "b", "c"], 5, loss_name="siglip", tile_size=2)
    out = obj.terms(emb, present, groups, obj.plan(present), scale, bias)
    assert set(out) == {"a_b", "a_c", "b_c"}
    for name, (m, n) in {"a_b": ("a", "b"), "a_c": ("a", "c"), "b_c": ("b", "c")}.items():
        both = present[m] & present[n]
        xm = torch.zeros(6, 5, dtype=torch.float64)
        xn = torch.zeros(6, 5, dtype=torch.float64)
        xm[present[m]], xn[present[n]] = emb[m], emb[n]
        ref = siglip_loss(xm[both], xn[both], scale, bias, groups[both], groups[both])
        torch.testing.assert_close(out[name], ref)


def test_pairs_without_two_rows_are_not_planned_and_empty_plans_skip() -> None:
    present = {"a": torch.tensor([True, False]), "b": torch.tensor([True, True])}
    assert AllPairsObjective(["a", "b"], 4).plan(present) == []


def test_anchor_objective_pairs_every_modality_with_the_anchor() -> None:
    obj = AnchorObjective(["text", "image", "audio", "depth"], 4, anchor="image")
    assert obj.pairs == [("image", "text"), ("image", "audio"), ("image", "depth")]
    assert obj.anchor_pair() == ("image", "text")
    with pytest.raises(ConfigError, match=r"needs loss\.anchor"):
        AnchorObjective(["a", "b"], 4)


def test_anchor_pair_of_all_pairs_prefers_the_anchor() -> None:
    assert AllPairsObjective(["a", "b", "c"], 4).anchor_pair() == ("a", "b")
    assert AllPairsObjective(["a", "b", "c"], 4, anchor="c").anchor_pair() == ("a", "c")


def test_config_errors_name_the_key() -> None:
    with pytest.raises(
        ConfigError,
        match=r"loss\.objective 'symile2' is unknown; known: all_pairs, anchor, gram, symile",
    ):
        build_objective(load_config(None, ["loss.objective=symile2"]).loss, ["a", "b"], 4)
    with pytest.raises(ConfigError, match=r"loss\.anchor names 'x'"):
        build_objective(load_config(None, ["loss.anchor=x"]).loss, ["a", "b"], 4)
    with pytest.raises(ConfigError, match="aligns a modality with itself"):
        AllPairsObjective(["a", "b"], 4, pairs=[("a", "a")])


@pytest.mark.parametrize("n", [1, 2, 3])
def test_total_of_unit_weights_equals_the_weighted_mean_bit_for_bit(n: int) -> None:
    obj = AllPairsObjective(["a", "b", "c"], embed_dim=4)
    obj.term_weights = {}
    x = torch.randn(n, 5, dtype=torch.float32, requires_grad=True)
    # values whose sum rounds: the order of the additions shows
    terms = {f"t{i}": (x[i] * torch.tensor([1e7, 1.0, 3.3, -1e7, 0.1])).sum() for i in range(n)}
    fast = obj.total(terms)
    (g_fast,) = torch.autograd.grad(fast, x, retain_graph=True)
    general = sum(1.0 * v for v in terms.values()) / float(n)  # what total computed before
    (g_general,) = torch.autograd.grad(general, x)
    assert torch.equal(fast, general) and torch.equal(g_fast, g_general)
