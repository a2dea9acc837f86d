"""Encoders over precomputed features: ``precomputed`` (identity) and ``mlp`` (trainable)."""

from __future__ import annotations

import torch
from torch import nn

from modalign.encoders.base import ENCODERS, Encoder
from modalign.errors import ConfigError


def _need_dim(name: str, input_dim: int | None) -> int:
    if input_dim is None:
        raise ConfigError(
            f"encoder {name!r} reads a feature store: data.features needs an entry for its modality"
        )
    return input_dim


@ENCODERS.register("precomputed")
class PrecomputedEncoder(Encoder):
    """Features looked up from a feature store, passed through unchanged (frozen, cacheable).

    Example:
        >>> enc = PrecomputedEncoder("text", input_dim=4)
        >>> enc(torch.ones(2, 4)).shape
        torch.Size([2, 4])
    """

    def __init__(self, modality: str, input_dim: int | None = None) -> None:
        super().__init__(modality, _need_dim("precomputed", input_dim), frozen=True)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.float()


@ENCODERS.register("mlp")
class MLPEncoder(Encoder):
    """A trainable MLP (Linear-LayerNorm-GELU blocks) over looked-up features.

    Example:
        >>> enc = MLPEncoder("audio", input_dim=8, hidden_dim=16, output_dim=12, layers=2)
        >>> enc(torch.randn(3, 8)).shape
        torch.Size([3, 12])
    """

    def __init__(
        self,
        modality: str,
        input_dim: int | None = None,
        hidden_dim: int = 512,
        output_dim: int = 512,
        layers: int = 2,
        dropout: float = 0.0,
    ) -> None:
        dim = _need_dim("mlp", input_dim)
        super().__init__(modality, output_dim, frozen=False)
        blocks: list[nn.Module] = []
        for i in range(layers):
            out = output_dim if i == layers - 1 else hidden_dim
            blocks.append(nn.Linear(dim if i == 0 else hidden_dim, out))
            if i < layers - 1:
                blocks += [nn.LayerNorm(out), nn.GELU(), nn.Dropout(dropout)]
        self.net = nn.Sequential(*blocks)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.net(batch.float())
