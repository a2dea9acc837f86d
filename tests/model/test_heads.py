import numpy as np
import pytest
import torch

from modalign.errors import ConfigError
from modalign.model.heads import LinearHead, MLPHead, Standardize


def test_standardize_matches_numpy_z_scores_and_survives_one_row() -> None:
    x = torch.randn(64, 5) * torch.tensor([1.0, 10.0, 0.1, 3.0, 7.0]) + 4.0
    norm = Standardize(5).train()
    out = norm(x).detach().numpy()
    ref = (x.numpy() - x.numpy().mean(0)) / np.sqrt(x.numpy().var(0) + 1e-5)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    assert norm(x[:1]).shape == (1, 5)  # a single row falls back to running statistics
    assert not list(norm.parameters())  # no affine parameters to train or decay


def test_each_input_norm_is_applied_before_the_map() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 6, dtype=torch.float64) * 5 + 3
    refs = {
        "layer": torch.nn.functional.layer_norm(x, (6,)),
        "batch": (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5),
        "none": x,
    }
    for kind, normed in refs.items():
        head = LinearHead(6, 3, input_norm=kind).double().train()
        torch.testing.assert_close(head(x), normed @ head.proj.weight.T)
        mlp = MLPHead(6, 3, hidden_dim=8, dropout=0.0, input_norm=kind).double().train()
        expected = mlp.mlp(normed) + normed @ mlp.shortcut.weight.T
        torch.testing.assert_close(mlp(x), expected)


def test_per_modality_heads_override_the_shared_head() -> None:
    from modalign.config import load_config
    from modalign.model.aligner import build_model

    cfg = load_config(
        None,
        ["model.head.kind=linear", "model.heads.fp.kind=mlp", "model.heads.fp.hidden_dim=12"],
    )
    model = build_model(cfg, {"fp": 40, "text": 8})
    assert isinstance(model.heads["fp"], MLPHead) and model.heads["fp"].mlp[0].out_features == 12
    assert isinstance(model.heads["text"], LinearHead)
    with pytest.raises(ConfigError, match=r"model\.heads\.fp"):
        load_config(None, ["model.heads.fp.hidden=3"])
