"""Sub-commands of the ``modalign`` command line, one module each (see ``modalign.cli``)."""

from __future__ import annotations

import argparse
from typing import Any


def add_override_option(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable), collected in ``args.overrides``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set train.lr=3e-4 (repeatable; type-checked)",
    )


def add_features_option(parser: argparse.ArgumentParser) -> None:
    """``--features MODALITY=FILE`` (repeatable), for modalities that take feature files."""
    parser.add_argument(
        "--features",
        action="append",
        default=[],
        metavar="MODALITY=FILE",
        help="feature file (.npy or .safetensors) of a modality that takes features (repeatable)",
    )


def open_feature_files(items: list[str]) -> dict[str, Any]:
    """The ``--features`` values opened as ``FeatureStore`` objects by modality."""
    from modalign.errors import ConfigError
    from modalign.features.store import FeatureStore

    stores = {}
    for item in items:
        modality, sep, path = item.partition("=")
        if not sep or not modality or not path:
            raise ConfigError(f"--features {item!r} is not of the form MODALITY=FILE")
        stores[modality] = FeatureStore.open(path)
    return stores
