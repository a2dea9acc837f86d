"""From a config to the pieces a run needs: manifest, feature stores, model, paired data."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

from modalign.config import Config
from modalign.data.feature_store import FeatureStore
from modalign.data.manifest import read_manifest
from modalign.data.paired import PairedData, open_feature_stores
from modalign.encoders import ENCODERS
from modalign.errors import ConfigError
from modalign.losses import LOSSES
from modalign.model import Aligner, build_model


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
    names = {
        m: (cfg.model.encoders[m].name if m in cfg.model.encoders else "precomputed")
        for m in modalities
    }
    for m, name in names.items():
        if name not in ENCODERS:
            raise ConfigError(
                f"model.encoders.{m}.name {name!r} is unknown; known: {', '.join(ENCODERS.names())}"
            )
    feature_kinds = {m: ENCODERS.get(name).input_kind == "features" for m, name in names.items()}
    stores = open_feature_stores(cfg.data, modalities, feature_kinds)
    model = build_model(cfg, {m: (stores[m].dim if m in stores else None) for m in modalities})
    data = PairedData(manifest, stores, dict(model.encoders.items()), cfg.data)  # type: ignore[arg-type]
    return RunParts(model, data, stores, resolve_pairs(cfg, modalities))


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
