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


def add_features_option(
    parser: argparse.ArgumentParser,
    help: str = "feature file (.npy or .safetensors) of a modality that takes features",
) -> None:
    """``--features MODALITY=FILE`` (repeatable), collected in ``args.features``."""
    parser.add_argument(
        "--features",
        action="append",
        default=[],
        metavar="MODALITY=FILE",
        help=help + " (repeatable)",
    )


def feature_paths(items: list[str], defaults: dict[str, str] | None = None) -> dict[str, str]:
    """``--features`` values as modality -> path, over ``defaults``."""
    from modalign.errors import ConfigError

    out = dict(defaults or {})
    for item in items:
        modality, sep, path = item.partition("=")
        if not sep or not modality or not path:
            raise ConfigError(f"--features {item!r} is not of the form MODALITY=FILE")
        out[modality] = path
    return out


def open_feature_files(items: list[str]) -> dict[str, Any]:
    """The ``--features`` values opened as ``FeatureStore`` objects by modality."""
    from modalign.features.store import FeatureStore

    return {m: FeatureStore.open(path) for m, path in feature_paths(items).items()}
