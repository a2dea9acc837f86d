"""Objectives: how the embeddings of several modalities become the loss of one batch.

An objective sees every modality of a batch at once. Pairwise objectives (``all_pairs``,
``anchor``) sum a registered pair loss (``loss.name``, run by the engine with its tiled kernel
and distributed gather) over chosen modality pairs; objectives that need all modalities at once
register here the same way and need no change to the training loop.

A training step asks the objective for a *plan* first (which terms this batch can train; the
same on every process, since the collectives inside the losses must match), skips the batch when
there is none, and otherwise calls :meth:`Objective.terms` and :meth:`Objective.total`.
"""

from __future__ import annotations

import functools
import operator
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from modalign import distributed
from modalign.config import LossConfig
from modalign.errors import ConfigError
from modalign.losses.engine import check_loss_options
from modalign.losses.negatives import uniformity_loss
from modalign.registry import Registry

OBJECTIVES: Registry[type[Objective]] = Registry("objective")
UNIFORMITY = "uniformity_"
"""Prefix of the regulariser terms that :meth:`Objective.total` adds with ``uniformity``."""


class Objective(ABC):
    """Turns a batch's embeddings into named loss terms.

    Args:
        modalities: every modality of the run, in manifest order.
        embed_dim: width of the shared space (a process holding no row of a modality still
            takes part in the other processes' gathers with a (0, embed_dim) tensor).
        loss_name: the registered pair loss (``modalign.losses.LOSSES``).
        tile_size: tile side of the tiled kernels (None: the default).
        anchor: an anchor modality, or None.
        pairs: explicit modality pairs, or empty for the objective's default.
        weights: ``{"a-b": w}`` per-pair weights (pairwise objectives; unlisted pairs weigh 1).
        uniformity: weight of the uniformity term of each modality (0: none); see
            :func:`modalign.losses.negatives.uniformity_loss`.
        loss_options: hyperparameters of the pair loss (``loss.options``).
    """

    def __init__(
        self,
        modalities: Sequence[str],
        embed_dim: int,
        loss_name: str = "infonce",
        tile_size: int | None = None,
        anchor: str | None = None,
        pairs: Sequence[tuple[str, str]] = (),
        weights: Mapping[str, float] | None = None,
        uniformity: float = 0.0,
        loss_options: Mapping[str, float] | None = None,
    ) -> None:
        self.modalities, self.embed_dim = list(modalities), embed_dim
        self.loss_options = check_loss_options(loss_name, loss_options or {})
        self.loss_name, self.tile_size = loss_name, tile_size
        self.anchor = anchor
        self.uniformity = uniformity
        self.term_weights: dict[str, float] = {}  # term name -> weight; absent: 1
        if anchor is not None and anchor not in self.modalities:
            raise ConfigError(
                f"loss.anchor names {anchor!r}, which is not a modality ({', '.join(self.modalities)})"
            )
        self.configure(pairs, dict(weights or {}))

    def configure(self, pairs: Sequence[tuple[str, str]], weights: dict[str, float]) -> None:
        """Check and take the config's pairs and per-pair weights (subclasses that use them)."""
        if pairs or weights:
            raise ConfigError(
                f"loss.pairs and loss.weights apply to pairwise objectives, not {type(self).__name__}"
            )

    def state_dict(self) -> dict[str, int]:
        """What a resumed run needs to continue exactly (checkpointed with the weights)."""
        return {}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore :meth:`state_dict` (an empty mapping: a checkpoint from before it existed)."""
        del state  # stateless objectives have nothing to restore

    @abstractmethod
    def plan(self, present: Mapping[str, Tensor], device: torch.device | None = None) -> Any:
        """What this batch can train (identical on every process), or None to skip the batch.

        Args:
            present: modality -> (B,) bool mask of this process's rows holding it.
        """

    @abstractmethod
    def terms(
        self,
        emb: Mapping[str, Tensor],
        present: Mapping[str, Tensor],
        groups: Tensor | None,
        plan: Any,
        scale: Tensor,
        bias: Tensor | None,
    ) -> dict[str, Tensor]:
        """Named 0-d loss terms.

        Args:
            emb: modality -> (n_m, D) embeddings of the rows where the modality is present, in
                row order. present: modality -> (B,) bool. groups: (B,) group ids or None.
            plan: what :meth:`plan` returned. scale: 0-d inverse temperature. bias: 0-d or None.
        """

    def total(self, terms: Mapping[str, Tensor]) -> Tensor:
        """The scalar to minimise: the weighted mean of the contrastive terms (weights from
        ``term_weights``), plus ``uniformity`` times the mean of the uniformity terms.

        Example:
            >>> class Two(Objective):
            ...     plan = terms = anchor_pair = lambda *a: None
            >>> obj = Two(["a", "b"], 4, uniformity=0.5)
            >>> obj.term_weights = {"a_b": 3.0}
            >>> t = {"a_b": torch.tensor(1.0), "x_y": torch.tensor(2.0), "uniformity_a": torch.tensor(-4.0)}
            >>> obj.total(t).item()  # (3 * 1 + 1 * 2) / 4 + 0.5 * -4
            -0.75
        """
        main = {k: v for k, v in terms.items() if not k.startswith(UNIFORMITY)}
        reg = [v for k, v in terms.items() if k.startswith(UNIFORMITY)]
        weights = [self.term_weights.get(k, 1.0) for k in main]
        value: Tensor | float
        if main and all(w == 1.0 for w in weights):  # the same sums without 0 + 1.0 * v nodes
            value = functools.reduce(operator.add, main.values())
            value = value / len(main) if len(main) > 1 else value  # x / 1.0 == x
        else:
            value = sum(w * v for w, v in zip(weights, main.values(), strict=True)) / sum(weights)
        if reg:
            value = value + self.uniformity * torch.stack(reg).mean()
        return torch.as_tensor(value)

    def regularisers(self, emb: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``uniformity_<modality>`` terms over this process's rows (none when the weight is 0)."""
        if self.uniformity <= 0:
            return {}
        return {f"{UNIFORMITY}{m}": uniformity_loss(e) for m, e in emb.items() if e.shape[0] >= 2}

    @abstractmethod
    def anchor_pair(self) -> tuple[str, str]:
        """The pair a fitted head initialisation (``model.head.init: cca``) starts from."""

    def embedded(self, emb: Mapping[str, Tensor], modality: str, like: Tensor) -> Tensor:
        """``emb[modality]``, or (0, D) when this process holds no row of it."""
        if modality in emb:
            return emb[modality]
        return like.new_zeros(0, self.embed_dim)


def global_counts(counts: list[int], device: torch.device | None = None) -> list[int]:
    """Per-term row counts summed over every process (the identity on one process)."""
    if not distributed.is_distributed():
        return counts
    total = torch.tensor(counts, device=device)  # on the GPU under NCCL
    torch.distributed.all_reduce(total)
    return [int(c) for c in total.tolist()]


def build_objective(cfg: LossConfig, modalities: Sequence[str], embed_dim: int) -> Objective:
    """The objective ``cfg.objective`` over ``modalities``, with the config's pair loss."""
    if cfg.objective not in OBJECTIVES:
        known = ", ".join(OBJECTIVES.names())
        raise ConfigError(f"loss.objective {cfg.objective!r} is unknown; known: {known}")
    cls = OBJECTIVES.get(cfg.objective)
    return cls(
        modalities, embed_dim, cfg.name, cfg.tile_size, cfg.anchor, cfg.pairs,
        weights=cfg.weights, uniformity=cfg.uniformity, loss_options=cfg.options,
    )  # fmt: skip
