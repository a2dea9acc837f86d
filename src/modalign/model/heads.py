"""Projection heads: encoder features -> the shared space (normalised by the model).

Every head first normalises its input (``input_norm``):

* ``layer``: LayerNorm over each row, which puts features from very different encoders on one
  scale;
* ``batch``: per-dimension standardisation with running statistics and no affine parameters
  (BatchNorm1d, ``affine=False``), as used before linear probes in MAE (He et al., 2022); it
  whitens each feature dimension, which is most of what classical CCA gets from whitening;
* ``none``.
"""

from __future__ import annotations

from typing import Literal, Protocol

from torch import Tensor, nn

from modalign.config import HeadConfig
from modalign.registry import Registry


class HeadFactory(Protocol):
    """A head class: built from ``(input_dim, output_dim, head config)``, it has ``output_dim``."""

    def from_config(cls, input_dim: int, output_dim: int, cfg: HeadConfig) -> nn.Module: ...


HEADS: Registry[HeadFactory] = Registry("head")
"""Head classes by ``model.head.kind``; each reads the fields of the config that it uses."""

InputNorm = Literal["layer", "batch", "none"]


class Standardize(nn.BatchNorm1d):
    """Per-dimension standardisation (BatchNorm1d without affine parameters).

    A training batch of a single row (a rare modality) uses the running statistics instead of
    failing. Its batch statistics are per process and per gradient-cache chunk, so with
    ``input_norm="batch"`` gradient caching and several processes are close to, not exactly, one
    full batch; ``layer`` normalisation has no such coupling between rows.
    """

    def __init__(self, dim: int) -> None:
        super().__init__(dim, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] < 2:
            return nn.functional.batch_norm(
                x, self.running_mean, self.running_var, training=False, eps=self.eps
            )
        return super().forward(x)


def make_input_norm(kind: InputNorm, dim: int) -> nn.Module:
    """The input normalisation layer of a head."""
    if kind == "layer":
        return nn.LayerNorm(dim)
    if kind == "batch":
        return Standardize(dim)
    return nn.Identity()


@HEADS.register("linear")
class LinearHead(nn.Module):
    """Input normalisation, then a single linear map (CLIP's projection; ``bias`` adds an offset,
    which a fitted initialisation such as CCA needs to centre the features).

    Example:
        >>> import torch
        >>> LinearHead(8, 4)(torch.randn(2, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        dropout: float = 0.0,
        input_norm: InputNorm = "none",
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.output_dim = output_dim
        self.norm = make_input_norm(input_norm, input_dim)
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(input_dim, output_dim, bias=bias)

    @classmethod
    def from_config(cls, input_dim: int, output_dim: int, cfg: HeadConfig) -> LinearHead:
        """The head a config describes (``input_norm`` None means ``none``)."""
        return cls(input_dim, output_dim, cfg.dropout, cfg.input_norm or "none", cfg.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.drop(self.norm(x)))


@HEADS.register("mlp")
class MLPHead(nn.Module):
    """Input normalisation, Linear, GELU, Dropout, Linear, with a linear shortcut.

    The shortcut keeps the linear solution one step away, which matters when paired data is
    small.

    Example:
        >>> import torch
        >>> MLPHead(8, 4, hidden_dim=16)(torch.randn(2, 8)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        hidden_dim: int = 1024,
        dropout: float = 0.1,
        input_norm: InputNorm = "layer",
    ) -> None:
        super().__init__()
        self.output_dim = output_dim
        self.norm = make_input_norm(input_norm, input_dim)
        self.mlp = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, output_dim),
        )
        self.shortcut = nn.Linear(input_dim, output_dim, bias=False)

    @classmethod
    def from_config(cls, input_dim: int, output_dim: int, cfg: HeadConfig) -> MLPHead:
        """The head a config describes (``input_norm`` None means ``layer``; the last layer
        always has a bias, so ``bias`` does not apply)."""
        return cls(input_dim, output_dim, cfg.hidden_dim, cfg.dropout, cfg.input_norm or "layer")

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        return self.mlp(x) + self.shortcut(x)
