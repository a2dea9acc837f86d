"""Pairwise objectives: a pair loss summed over modality pairs.

* ``all_pairs``: every pair of modalities (or ``loss.pairs``), each over the batch rows that hold
  both modalities.
* ``anchor``: every modality paired with one anchor modality only, as ImageBind binds every
  modality to images (Girdhar et al., CVPR 2023); pairs never trained are still evaluated
  (emergent retrieval).

A pair whose rows number fewer than two over the whole batch (all processes) is skipped: one row
has no negatives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

import torch
from torch import Tensor

from modalign.errors import ConfigError
from modalign.losses.engine import pair_loss
from modalign.losses.objectives.base import OBJECTIVES, Objective, global_counts

Pair = tuple[str, str]


@OBJECTIVES.register("all_pairs")
class AllPairsObjective(Objective):
    """Mean of the pair loss over every pair of modalities (or ``loss.pairs``), weighted by
    ``loss.weights`` (``{"image-caption": 2.0}``; a pair of weight 0 is not trained).

    Example:
        >>> import torch.nn.functional as F
        >>> obj = AllPairsObjective(["a", "b", "c"], embed_dim=4)
        >>> obj.pairs
        [('a', 'b'), ('a', 'c'), ('b', 'c')]
        >>> present = {"a": torch.tensor([True, True, True]), "b": torch.tensor([True, True, False]),
        ...            "c": torch.tensor([False, True, False])}
        >>> obj.plan(present)  # (a, c) and (b, c) share one row: no negatives
        [('a', 'b')]
    """

    def configure(self, pairs: Sequence[tuple[str, str]], weights: dict[str, float]) -> None:
        """The pairs to train (``loss.pairs`` or :meth:`default_pairs`) and their weights."""
        pairs = _check_pairs(pairs, self.modalities) or self.default_pairs()
        self.term_weights = _pair_weights(weights, pairs)
        # a pair weighing 0 is not trained (its pair is still evaluated)
        self.pairs = [(a, b) for a, b in pairs if self.term_weights.get(f"{a}_{b}", 1.0) > 0]
        if not self.pairs:
            raise ConfigError("loss.weights: every pair weighs 0; nothing to train")

    def default_pairs(self) -> list[Pair]:
        """Every unordered pair of modalities, in manifest order."""
        return list(combinations(self.modalities, 2))

    def plan(self, present: Mapping[str, Tensor], device: torch.device | None = None) -> list[Pair]:
        """The pairs with at least two rows holding both modalities in the global batch."""
        counts = [int((present[a] & present[b]).sum()) for a, b in self.pairs]
        return [p for p, n in zip(self.pairs, global_counts(counts, device), strict=True) if n >= 2]

    def terms(
        self,
        emb: Mapping[str, Tensor],
        present: Mapping[str, Tensor],
        groups: Tensor | None,
        plan: list[Pair],
        scale: Tensor,
        bias: Tensor | None,
    ) -> dict[str, Tensor]:
        """The pair loss of each planned pair over the rows that have both modalities."""
        out = {}
        for a, b in plan:
            both = present[a] & present[b]  # (B,)
            ea, eb = self.embedded(emb, a, scale), self.embedded(emb, b, scale)
            g = None if groups is None else groups[both].to(ea.device)
            if len(ea) == len(eb) == len(both):  # every row has both: no gathers (nor backward)
                x, y = ea, eb
            else:  # position of row r among m's present rows = (#present rows before r) - 1
                idx_a = (torch.cumsum(present[a].long(), 0) - 1)[both].to(ea.device)
                idx_b = (torch.cumsum(present[b].long(), 0) - 1)[both].to(eb.device)
                x, y = ea[idx_a], eb[idx_b]  # (n, D) each
            out[f"{a}_{b}"] = pair_loss(
                self.loss_name, x, y, scale, bias, g, g, self.tile_size, self.loss_options
            )
        out.update(self.regularisers(emb))
        return out

    def anchor_pair(self) -> Pair:
        """The first pair with the anchor modality in it, or the first pair."""
        with_anchor = [p for p in self.pairs if self.anchor in p]
        return (with_anchor or self.pairs)[0]


@OBJECTIVES.register("anchor")
class AnchorObjective(AllPairsObjective):
    """Every modality aligned to ``loss.anchor`` only (ImageBind; Girdhar et al., CVPR 2023).

    Example:
        >>> AnchorObjective(["text", "image", "audio"], 4, anchor="image").pairs
        [('image', 'text'), ('image', 'audio')]
    """

    def default_pairs(self) -> list[Pair]:
        if self.anchor is None:
            raise ConfigError("loss.objective 'anchor' needs loss.anchor (a modality)")
        return [(self.anchor, m) for m in self.modalities if m != self.anchor]


def _check_modality(name: str | None, modalities: list[str], key: str) -> None:
    if name is not None and name not in modalities:
        raise ConfigError(
            f"{key} names {name!r}, which is not a modality ({', '.join(modalities)})"
        )


def _check_pairs(pairs: Sequence[tuple[str, str]], modalities: list[str]) -> list[Pair]:
    for a, b in pairs:
        for m in (a, b):
            _check_modality(m, modalities, "loss.pairs")
        if a == b:
            raise ConfigError(f"loss.pairs: pair ({a}, {b}) aligns a modality with itself")
    return [(a, b) for a, b in pairs]


def _pair_weights(weights: Mapping[str, float], pairs: list[Pair]) -> dict[str, float]:
    """``{"a-b": w}`` (either order) -> ``{"a_b": w}`` keyed like the objective's terms."""
    names = {f"{a}-{b}": f"{a}_{b}" for a, b in pairs} | {f"{b}-{a}": f"{a}_{b}" for a, b in pairs}
    out = {}
    for key, w in weights.items():
        if key not in names:
            known = ", ".join(f"{a}-{b}" for a, b in pairs)
            raise ConfigError(f"loss.weights.{key}: not a trained pair (pairs: {known})")
        out[names[key]] = float(w)
    return out
