"""Projection heads: encoder features -> the shared space (normalised by the model)."""

from __future__ import annotations

from torch import Tensor, nn

from modalign.registry import Registry

HEADS: Registry[type[nn.Module]] = Registry("head")


@HEADS.register("linear")
class LinearHead(nn.Module):
    """A single linear map (CLIP's projection).

    Example:
        >>> import torch
        >>> LinearHead(8, 4)(torch.randn(2, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self, input_dim: int, output_dim: int, hidden_dim: int = 0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        del hidden_dim, dropout
        self.output_dim = output_dim
        self.proj = nn.Linear(input_dim, output_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


@HEADS.register("mlp")
class MLPHead(nn.Module):
    """LayerNorm, Linear, GELU, Dropout, Linear, with a linear shortcut.

    The input LayerNorm puts features from very different encoders (pooled CNN activations,
    sentence embeddings, log-mel statistics) on one scale; the shortcut keeps the linear solution
    one step away, which matters when paired data is small.

    Example:
        >>> import torch
        >>> MLPHead(8, 4, hidden_dim=16)(torch.randn(2, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self, input_dim: int, output_dim: int, hidden_dim: int = 1024, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.output_dim = output_dim
        self.norm = nn.LayerNorm(input_dim)
        self.mlp = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, output_dim),
        )
        self.shortcut = nn.Linear(input_dim, output_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        return self.mlp(x) + self.shortcut(x)
