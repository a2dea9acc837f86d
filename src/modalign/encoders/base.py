"""The encoder interface: one modality in, a (B, output_dim) feature tensor out.

An encoder reads either precomputed features (``input_kind = "features"``: the dataset looks the
manifest cell up in a feature store and hands the encoder a float tensor) or raw items
(``input_kind = "raw"``: the dataset calls ``load(cell)`` on each manifest cell, a file path or an
inline text, inside DataLoader workers, and ``collate`` on the list of loaded items).

New encoders subclass ``Encoder`` and register a name::

    @ENCODERS.register("my_encoder")
    class MyEncoder(Encoder):
        input_kind = "raw"
        def __init__(self, modality: str, input_dim: int | None = None, **options): ...
        def load(self, cell: str) -> torch.Tensor: ...
        def forward(self, batch: torch.Tensor) -> torch.Tensor: ...

The constructor always receives ``modality`` and ``input_dim`` (the feature-store width for
``features`` encoders, else None) plus the ``options`` mapping of the config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from modalign.registry import Registry


class Encoder(nn.Module):
    """Base class of all encoders.

    Attributes:
        modality: name of the modality this encoder reads.
        output_dim: width of the features it returns.
        input_kind: ``"features"`` or ``"raw"`` (see the module docstring).
        frozen: True when its parameters are not trained (their features can be cached).
    """

    input_kind: ClassVar[Literal["features", "raw"]] = "features"
    #: For raw encoders: cells are file paths, resolved against the manifest's folder before ``load``.
    reads_files: ClassVar[bool] = False
    #: Whether instances are frozen when the options do not say (``frozen``); lets a config tell,
    #: without loading weights, that a modality's features can come from a feature file.
    frozen_default: ClassVar[bool] = False
    #: Items per forward pass when extracting features (``modalign embed``) and no size is given.
    preferred_batch_size: ClassVar[int] = 32

    def __init__(self, modality: str, output_dim: int, frozen: bool = False) -> None:
        super().__init__()
        self.modality = modality
        self.output_dim = output_dim
        self.frozen = frozen

    def load(self, cell: str) -> Any:
        """Read one raw item (file path or inline text) into what ``collate`` expects."""
        raise NotImplementedError(f"{type(self).__name__} reads features, not raw items")

    def item_length(self, cell: str) -> int | None:
        """A cell's size, for batching similar sizes together (None: keep the manifest's order)."""
        return None

    def collate(self, items: Sequence[Any]) -> Any:
        """Batch loaded items; the default stacks tensors along a new first axis."""
        return torch.stack(list(items))

    def cache_key(self) -> str:
        """A string that changes whenever this encoder's output for the same input would change."""
        return type(self).__name__

    def forward(self, batch: Any) -> torch.Tensor:  # (B, output_dim)
        raise NotImplementedError


ENCODERS: Registry[type[Encoder]] = Registry("encoder")


def build_encoder(
    name: str, modality: str, input_dim: int | None, options: dict[str, Any]
) -> Encoder:
    """Instantiate the encoder registered as ``name``."""
    return ENCODERS.get(name)(modality=modality, input_dim=input_dim, **options)  # type: ignore[call-arg]
