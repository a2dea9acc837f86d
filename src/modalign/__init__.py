"""modalign: multimodal embedding alignment.

Train one embedding space shared by several modalities and measure how well it is aligned.

The public API is imported lazily (PEP 562), so ``import modalign`` and ``modalign --version``
stay fast; ``modalign.fit`` and the rest load their modules on first use.

Example:
    >>> import modalign
    >>> cfg = modalign.load_config(None, ["train.epochs=1"])
    >>> cfg.train.epochs, "fit" in modalign.__all__
    (1, True)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "modalign.config",
    "load_config": "modalign.config",
    "EmbeddingSet": "modalign.types",
    "Encoder": "modalign.encoders",
    "ENCODERS": "modalign.encoders",
    "LOSSES": "modalign.losses",
    "Aligner": "modalign.model",
    "fit": "modalign.train.loop",
    "load": "modalign.model.load",
    "TrainedModel": "modalign.model.load",
    "export_run": "modalign.model.export",
    "embed_run": "modalign.model.inference",
    "embed_manifest": "modalign.features",
    "read_manifest": "modalign.data.manifest",
    "FeatureStore": "modalign.features",
    "write_features": "modalign.features",
    "evaluate_retrieval": "modalign.eval.retrieval",
    "evaluate_split": "modalign.eval.suite",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'modalign' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
