"""From a config to the pieces a run needs: manifest, feature stores, model, paired data."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from modalign.config import Config
from modalign.data.manifest import read_manifest
from modalign.data.paired import PairedData, open_feature_stores
from modalign.encoders import ENCODERS, Encoder
from modalign.errors import ConfigError
from modalign.features.store import FeatureStore
from modalign.losses import LOSSES
from modalign.losses.objectives import Objective, build_objective
from modalign.model.aligner import Aligner, build_model
from modalign.model.init import HEAD_INITS


@dataclass
class RunParts:
    """Everything built from a config before training or evaluation."""

    model: Aligner
    data: PairedData
    stores: dict[str, FeatureStore]
    objective: Objective
    specs: dict[str, tuple[str, dict[str, Any]]]

    def model_cards(self, cfg: Config) -> dict[str, dict[str, Any]]:
        """What ``model.json`` records of each modality (``modalign.model.load``)."""
        from modalign.model.load import modality_card

        cards = {}
        for m, spec in self.specs.items():
            store = self.stores.get(m)
            dim, key = (store.dim, store.encoder) if store is not None else (None, None)
            cards[m] = modality_card(cfg, m, spec, dim, key)
        return cards


def build_parts(cfg: Config) -> RunParts:
    """Read the data, open the feature stores and build the model; checks the config on the way."""
    if not cfg.data.manifest:
        raise ConfigError("data.manifest is not set")
    _check_registered(cfg)
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
    objective = build_objective(cfg.loss, modalities, model.embed_dim)
    return RunParts(model, data, stores, objective, specs)


def _check_registered(cfg: Config) -> None:
    """Registry names in the config exist (a typo fails before any data is read)."""
    for key, name, registry in (
        ("loss.name", cfg.loss.name, LOSSES),
        ("model.head.init", cfg.model.head.init, HEAD_INITS),
    ):
        if name not in registry:
            raise ConfigError(f"{key} {name!r} is unknown; known: {', '.join(registry.names())}")


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
