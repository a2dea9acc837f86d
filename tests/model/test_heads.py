import numpy as np
import torch

from modalign.model.heads import LinearHead, MLPHead, Standardize


def test_standardize_matches_numpy_z_scores_and_survives_one_row() -> None:
    x = torch.randn(64, 5) * torch.tensor([1.0, 10.0, 0.1, 3.0, 7.0]) + 4.0
    norm = Standardize(5).train()
    out = norm(x).detach().numpy()
    ref = (x.numpy() - x.numpy().mean(0)) / np.sqrt(x.numpy().var(0) + 1e-5)
    np.testing.assert_allclose(out, ref, atol=1e-4)
    assert norm(x[:1]).shape == (1, 5)  # a single row falls back to running statistics
    assert not list(norm.parameters())  # no affine parameters to train or decay


def test_heads_with_each_input_norm() -> None:
    x = torch.randn(4, 6)
    for kind in ("layer", "batch", "none"):
        assert LinearHead(6, 3, input_norm=kind)(x).shape == (4, 3)
        assert MLPHead(6, 3, hidden_dim=8, input_norm=kind)(x).shape == (4, 3)
