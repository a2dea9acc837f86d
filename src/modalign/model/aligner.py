"""The Aligner: per-modality encoder and head into one normalised space, plus temperature/bias."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from modalign.config import Config
from modalign.encoders import Encoder, build_encoder
from modalign.errors import ConfigError
from modalign.losses import LOSSES
from modalign.model.heads import HEADS


class Aligner(nn.Module):
    """Maps each modality to L2-normalised embeddings in a shared space.

    The similarity scale is ``exp(log_scale)`` (inverse temperature, learnable, initialised at
    ``1 / init_temperature`` and clamped to ``max_scale`` after each optimiser step, as in CLIP).
    ``bias`` is the SigLIP logit bias, or None.

    Example:
        >>> from modalign.encoders.features import PrecomputedEncoder
        >>> from modalign.model.heads import LinearHead
        >>> model = Aligner(
        ...     {"a": PrecomputedEncoder("a", input_dim=6), "b": PrecomputedEncoder("b", input_dim=3)},
        ...     {"a": LinearHead(6, 4), "b": LinearHead(3, 4)},
        ... )
        >>> out = model({"a": torch.randn(2, 6), "b": torch.randn(5, 3)})
        >>> out["a"].shape, out["b"].shape, round(model.scale().item(), 2)
        (torch.Size([2, 4]), torch.Size([5, 4]), 14.29)
    """

    def __init__(
        self,
        encoders: Mapping[str, Encoder],
        heads: Mapping[str, nn.Module],
        init_temperature: float = 0.07,
        learn_temperature: bool = True,
        max_scale: float = 100.0,
        init_bias: float | None = None,
        final_temperature: float | None = None,
        temperature_steps: int = 1000,
    ) -> None:
        super().__init__()
        if set(encoders) != set(heads):
            raise ValueError(f"encoders {sorted(encoders)} and heads {sorted(heads)} differ")
        dims = {int(getattr(h, "output_dim", -1)) for h in heads.values()}
        if len(dims) != 1 or -1 in dims:
            raise ValueError(f"heads must share one output_dim attribute, got {sorted(dims)}")
        self.embed_dim = dims.pop()
        self.encoders = nn.ModuleDict(dict(encoders))
        self.heads = nn.ModuleDict(dict(heads))
        for enc in self.encoders.values():
            if getattr(enc, "frozen", False):
                enc.requires_grad_(False)
        scheduled = final_temperature is not None
        self.log_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / init_temperature)),
            requires_grad=learn_temperature and not scheduled,
        )
        self.max_log_scale = math.log(max_scale)
        self.schedule: tuple[float, float, int] | None = None
        if final_temperature is not None:  # a fixed schedule, saved with the weights to resume
            self.schedule = (
                -math.log(init_temperature),
                -math.log(final_temperature),
                temperature_steps,
            )
            self.register_buffer("temperature_step", torch.zeros((), dtype=torch.long))
        self.bias = None if init_bias is None else nn.Parameter(torch.tensor(float(init_bias)))

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    def scale(self) -> Tensor:
        """The inverse temperature, a 0-d tensor (scheduled: geometric from the initial to the
        final temperature over ``temperature_steps`` optimiser steps, then constant).

        Example:
            >>> from modalign.encoders.features import PrecomputedEncoder
            >>> from modalign.model.heads import LinearHead
            >>> m = Aligner({"a": PrecomputedEncoder("a", input_dim=2)}, {"a": LinearHead(2, 2)},
            ...             init_temperature=0.1, final_temperature=0.01, temperature_steps=2)
            >>> for _ in range(3):
            ...     print(round(m.scale().item(), 2)); m.clamp_scale()
            10.0
            31.62
            100.0
        """
        if self.schedule is None:
            return self.log_scale.exp()
        start, end, steps = self.schedule
        step = self.get_buffer("temperature_step")
        progress = min(1.0, float(step) / steps)
        return self.log_scale.new_tensor(math.exp(start + (end - start) * progress))

    @torch.no_grad()
    def clamp_scale(self) -> None:
        """Keep the scale at or below ``max_scale``, and advance a temperature schedule (call
        after each optimiser step)."""
        self.log_scale.clamp_(max=self.max_log_scale)
        if self.schedule is not None:
            self.get_buffer("temperature_step").add_(1)

    def head_owner(self, modality: str) -> str:
        """The modality whose head ``modality`` uses: itself, unless it shares another's."""
        head = self.heads[modality]
        return next(m for m in self.heads if self.heads[m] is head)

    def encode(self, modality: str, inputs: Any) -> Tensor:
        """(B, D) unit-norm embeddings of one modality's batch."""
        features = self.encoders[modality](inputs)  # (B, F)
        return F.normalize(self.heads[modality](features), dim=-1)  # (B, D)

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Tensor]:
        """Embed every modality present in ``inputs``."""
        return {m: self.encode(m, x) for m, x in inputs.items()}


def build_model(
    cfg: Config,
    input_dims: Mapping[str, int | None],
    specs: Mapping[str, tuple[str, dict[str, Any]]] | None = None,
) -> Aligner:
    """Build the Aligner a config describes.

    Args:
        cfg: the run config. input_dims: modality -> feature-store width (None for raw encoders).
        specs: modality -> (encoder name, options); default from ``cfg.model.encoders``.
    """
    encoders: dict[str, Encoder] = {}
    heads: dict[str, nn.Module] = {}
    for modality, input_dim in input_dims.items():
        if specs is not None:
            name, options = specs[modality]
        else:
            enc_cfg = cfg.model.encoders.get(modality)
            name, options = (enc_cfg.name, enc_cfg.options) if enc_cfg else ("precomputed", {})
        encoder = build_encoder(name, modality, input_dim, dict(options))
        encoders[modality] = encoder
        head_cfg = cfg.model.head_for(modality)
        if head_cfg.share is None:
            heads[modality] = HEADS.get(head_cfg.kind).from_config(
                encoder.output_dim, cfg.model.embed_dim, head_cfg
            )
    heads.update(shared_heads(cfg, encoders, heads))
    spec = LOSSES.get(cfg.loss.name)
    temperature = cfg.loss.init_temperature or spec.init_temperature
    bias = cfg.loss.init_bias if cfg.loss.init_bias is not None else spec.init_bias
    return Aligner(
        encoders, heads, temperature, cfg.loss.learn_temperature, cfg.loss.max_scale, bias,
        cfg.loss.final_temperature, cfg.loss.temperature_steps,
    )  # fmt: skip


def shared_heads(
    cfg: Config, encoders: Mapping[str, Encoder], heads: Mapping[str, nn.Module]
) -> dict[str, nn.Module]:
    """The heads of modalities that use another modality's head (``model.heads.<m>.share``).

    The module is the owner's own: both modalities train it, and a state dict lists its weights
    under both names (safetensors stores them once).
    """
    out = {}
    for modality, encoder in encoders.items():
        owner = cfg.model.head_for(modality).share
        if owner is None:
            continue
        where = f"model.heads.{modality}.share"
        unused = sorted(set(cfg.model.heads.get(modality) or {}) - {"share"})
        if unused:
            raise ConfigError(f"{where}: a shared head is {owner!r}'s; {unused} do not apply")
        if owner not in heads:
            known = sorted(heads)
            raise ConfigError(f"{where}: {owner!r} is not a modality with its own head ({known})")
        if encoders[owner].output_dim != encoder.output_dim:
            raise ConfigError(
                f"{where}: {modality!r} has {encoder.output_dim} features and {owner!r} "
                f"{encoders[owner].output_dim}; a shared head needs one feature space"
            )
        out[modality] = heads[owner]
    return out
