"""From a config to the pieces a run needs: manifest, feature stores, model, paired data."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from modalign.config import Config
from modalign.data.manifest import read_manifest
from modalign.data.paired import PairedData, open_feature_stores
from modalign.encoders import ENCODERS, Encoder
from modalign.errors import ConfigError
from modalign.features.store import FeatureStore
from modalign.losses import LOSSES
from modalign.model.aligner import Aligner, build_model


@dataclass
class RunParts:
    """Everything built from a config before training or evaluation."""

    model: Aligner
    data: PairedData
    stores: dict[str, FeatureStore]
    pairs: list[tuple[str, str]]


def build_parts(cfg: Config) -> RunParts:
    """Read the data, open the feature stores and build the model; checks the config on the way."""
    if not cfg.data.manifest:
        raise ConfigError("data.manifest is not set")
    if cfg.loss.name not in LOSSES:
        raise ConfigError(
            f"loss.name {cfg.loss.name!r} is unknown; known: {', '.join(LOSSES.names())}"
        )
    manifest = read_manifest(cfg.data.manifest, cfg.data.modalities or None)
    modalities = manifest.modalities
    if len(modalities) < 2:
        raise ConfigError(
            f"{manifest.path}: alignment needs at least two modalities, found {modalities}"
        )
    for m in cfg.model.encoders:
        if m not in modalities:
            raise ConfigError(
                f"model.encoders.{m}: no such modality (modalities: {', '.join(modalities)})"
            )
    specs = {m: encoder_spec(cfg, m) for m in modalities}
    feature_kinds = {
        m: ENCODERS.get(name).input_kind == "features" for m, (name, _) in specs.items()
    }
    stores = open_feature_stores(cfg.data, modalities, feature_kinds)
    dims = {m: (stores[m].dim if m in stores else None) for m in modalities}
    model = build_model(cfg, dims, specs)
    data = PairedData(manifest, stores, dict(model.encoders.items()), cfg.data)  # type: ignore[arg-type]
    return RunParts(model, data, stores, resolve_pairs(cfg, modalities))


def encoder_spec(cfg: Config, modality: str) -> tuple[str, dict[str, Any]]:
    """The encoder (registry name, options) that training uses for ``modality``.

    A frozen raw encoder (e.g. ``efficientnet_lite0``) whose modality also has a feature file in
    ``data.features`` is replaced by ``precomputed``: ``modalign embed`` wrote its outputs there,
    so training reads them instead of running the encoder every epoch. One config drives both.
    """
    enc = cfg.model.encoders.get(modality)
    name, options = (enc.name, dict(enc.options)) if enc else ("precomputed", {})
    if name not in ENCODERS:
        raise ConfigError(
            f"model.encoders.{modality}.name {name!r} is unknown; known: {', '.join(ENCODERS.names())}"
        )
    cls = ENCODERS.get(name)
    if cls.input_kind == "raw" and modality in cfg.data.features and _is_frozen(cls, options):
        return "precomputed", {}
    return name, options


def _is_frozen(cls: type[Encoder], options: dict[str, Any]) -> bool:
    param = inspect.signature(cls).parameters.get("frozen")
    if param is not None and param.default is not inspect.Parameter.empty:
        return bool(options.get("frozen", param.default))
    return bool(options.get("frozen", cls.frozen_default))


def resolve_pairs(cfg: Config, modalities: list[str]) -> list[tuple[str, str]]:
    """The modality pairs to align: ``loss.pairs`` or every pair."""
    if not cfg.loss.pairs:
        return list(combinations(modalities, 2))
    for a, b in cfg.loss.pairs:
        for m in (a, b):
            if m not in modalities:
                raise ConfigError(
                    f"loss.pairs names {m!r}, which is not a modality ({', '.join(modalities)})"
                )
        if a == b:
            raise ConfigError(f"loss.pairs: pair ({a}, {b}) aligns a modality with itself")
    return [(a, b) for a, b in cfg.loss.pairs]
