"""Contrastive losses: a registry of pure functions with one signature.

``loss(x, y, scale, bias, groups_x, groups_y) -> 0-d tensor`` (see ``modalign.losses.functional``).
"""

from collections.abc import Callable

from torch import Tensor

from modalign.losses.functional import info_nce_loss, siglip_loss
from modalign.registry import Registry

LossFn = Callable[[Tensor, Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None], Tensor]

LOSSES: Registry[LossFn] = Registry("loss")
LOSSES.register("infonce")(info_nce_loss)
LOSSES.register("siglip")(siglip_loss)

__all__ = ["LOSSES", "LossFn", "info_nce_loss", "siglip_loss"]
