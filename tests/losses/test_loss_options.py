"""``loss.options``: a pair loss's own hyperparameters, from the config to the loss function."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modalign.config import load_config
from modalign.errors import ConfigError
from modalign.losses.engine import check_loss_options, loss_options, pair_loss
from modalign.losses.functional import info_nce_loss
from modalign.losses.negatives import debiased_loss, hn_nce_loss
from modalign.losses.objectives import build_objective


def unit(n: int, d: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_each_loss_lists_its_options() -> None:
    assert loss_options("hn_nce") == ("alpha", "beta")
    assert loss_options("debiased") == ("tau_plus",)
    assert loss_options("infonce") == () and loss_options("siglip") == ()


def test_options_reach_the_loss_function() -> None:
    x, y, s = unit(9, 5, 0), unit(9, 5, 1), torch.tensor(8.0)
    got = pair_loss("hn_nce", x, y, s, options={"beta": 0.0})
    torch.testing.assert_close(got, info_nce_loss(x, y, s))  # beta 0: no hardness weighting
    got = pair_loss("hn_nce", x, y, s, options={"beta": 2.0, "alpha": 0.5})
    torch.testing.assert_close(got, hn_nce_loss(x, y, s, alpha=0.5, beta=2.0))
    assert not torch.isclose(got, hn_nce_loss(x, y, s))  # and they change it
    got = pair_loss("debiased", x, y, s, options={"tau_plus": 0.3})
    torch.testing.assert_close(got, debiased_loss(x, y, s, tau_plus=0.3))


def test_the_config_sets_them_for_the_objective() -> None:
    cfg = load_config(None, ["loss.name=hn_nce", "loss.options.beta=0.0"])
    objective = build_objective(cfg.loss, ["a", "b"], 5)
    x, y, s = unit(6, 5, 2), unit(6, 5, 3), torch.tensor(5.0)
    present = {"a": torch.ones(6, dtype=torch.bool), "b": torch.ones(6, dtype=torch.bool)}
    terms = objective.terms({"a": x, "b": y}, present, None, objective.plan(present), s, None)
    torch.testing.assert_close(terms["a_b"], info_nce_loss(x, y, s))


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("hn_nce", {"gamma": 1.0}, "not an option of loss 'hn_nce' \\(its options: alpha, beta\\)"),
        ("infonce", {"beta": 1.0}, "its options: none"),
        ("debiased", {"tau_plus": float("nan")}, "not a finite number"),
    ],
)
def test_bad_options_are_one_line(name: str, options: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_loss_options(name, options)


def test_objectives_without_a_pair_loss_refuse_options() -> None:
    cfg = load_config(None, ["loss.objective=symile", "loss.options.beta=1.0", "loss.name=hn_nce"])
    with pytest.raises(ConfigError, match=r"loss\.options apply to the pair loss"):
        build_objective(cfg.loss, ["a", "b", "c"], 5)
