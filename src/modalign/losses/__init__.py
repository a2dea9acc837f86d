"""Contrastive losses: a registry of pure functions with one signature.

``loss(x, y, scale, bias, groups_x, groups_y) -> 0-d tensor`` (see ``modalign.losses.functional``).
The registered ``infonce`` and ``siglip`` are the memory-bounded tiled kernels
(``modalign.losses.tiled``), equal in value and gradient to the plain full-matrix references
``info_nce_loss`` and ``siglip_loss``, which stay exported for tests and small cases. The
training loop calls ``modalign.losses.engine.pair_loss``, which adds the distributed gather.
"""

from collections.abc import Callable

from torch import Tensor

from modalign.losses.functional import info_nce_loss, siglip_loss
from modalign.losses.tiled import tiled_info_nce_loss, tiled_siglip_loss
from modalign.registry import Registry

LossFn = Callable[[Tensor, Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None], Tensor]

LOSSES: Registry[LossFn] = Registry("loss")
LOSSES.register("infonce")(tiled_info_nce_loss)
LOSSES.register("siglip")(tiled_siglip_loss)

__all__ = [
    "LOSSES",
    "LossFn",
    "info_nce_loss",
    "siglip_loss",
    "tiled_info_nce_loss",
    "tiled_siglip_loss",
]
