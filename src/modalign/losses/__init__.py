"""Contrastive losses: one registry of :class:`LossSpec` entries, and the engine that runs them.

Each loss is a pure function ``loss(x, y, scale, bias, groups_x, groups_y) -> 0-d tensor`` (the
plain references are in ``modalign.losses.functional``); ``infonce`` and ``siglip`` also have
memory-bounded tiled kernels (``modalign.losses.tiled``), equal in value and gradient. The
engine (``modalign.losses.engine.pair_loss``) picks the kernel and adds the distributed gather;
objectives (``modalign.losses.objectives``) combine pair losses over several modalities.

``hn_nce`` and ``debiased`` (``modalign.losses.negatives``) weigh negatives by hardness and by
the chance that they are false negatives. Add a loss with ``@register_loss("name", init_temperature=...)`` on a plain function.
"""

from modalign.losses.engine import LOSSES, LossFn, LossSpec, pair_loss, register_loss
from modalign.losses.functional import info_nce_loss, siglip_loss
from modalign.losses.negatives import debiased_loss, hn_nce_loss, uniformity_loss
from modalign.losses.tiled import tiled_info_nce_loss, tiled_siglip_loss

__all__ = [
    "LOSSES",
    "LossFn",
    "LossSpec",
    "debiased_loss",
    "hn_nce_loss",
    "info_nce_loss",
    "pair_loss",
    "register_loss",
    "siglip_loss",
    "tiled_info_nce_loss",
    "tiled_siglip_loss",
    "uniformity_loss",
]
