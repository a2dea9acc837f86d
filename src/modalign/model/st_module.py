"""A sentence-transformers module for the parts of a text tower that ST's own modules cannot express.

``TowerHead`` holds the model's encoder over sentence embeddings (``precomputed`` or ``mlp``)
and its head (any head of ``modalign.model.heads.HEADS``, e.g. the MLP with a linear shortcut),
rebuilt on load from their registry names and config, with the weights in safetensors. A folder
holding one loads with ``SentenceTransformer(DIR, trust_remote_code=True)`` where modalign is
installed (sentence-transformers >= 6 imports classes outside its own package only then).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from torch import nn

from modalign.config import HeadConfig
from modalign.encoders import build_encoder
from modalign.model.heads import HEADS

try:
    from sentence_transformers.base.modules import Module as _Base
except ImportError:  # sentence-transformers < 6, or not installed: a plain module saves the same
    _Base = nn.Module  # type: ignore[misc,assignment]


class TowerHead(_Base):  # type: ignore[misc,valid-type]
    """``head(encoder(sentence_embedding))``: a modalign encoder and head as one ST module.

    Args:
        encoder: registry name of the encoder over features. encoder_options: its options.
        input_dim: width of the sentence embedding. head: a ``HeadConfig`` as a dict.
        embed_dim: width of the shared space.
    """

    config_keys = ["encoder", "encoder_options", "input_dim", "head", "embed_dim"]

    def __init__(
        self,
        encoder: str,
        encoder_options: dict[str, Any],
        input_dim: int,
        head: dict[str, Any],
        embed_dim: int,
    ) -> None:
        super().__init__()
        self.encoder, self.encoder_options = encoder, dict(encoder_options)
        self.input_dim, self.head, self.embed_dim = input_dim, dict(head), embed_dim
        self.features = build_encoder(encoder, "text", input_dim, self.encoder_options)
        cfg = HeadConfig(**self.head)
        self.proj = HEADS.get(cfg.kind).from_config(self.features.output_dim, embed_dim, cfg)

    @classmethod
    def from_parts(
        cls, model: Any, modality: str, middle: nn.Module | None, head: nn.Module
    ) -> TowerHead:
        """The module holding a trained model's ``middle`` encoder (None: identity) and head."""
        card = model.card["modalities"][modality]
        name, options = (card["encoder"], card["options"]) if middle is not None else ("precomputed", {})
        width = int(card["input_dim"] or getattr(middle, "output_dim", 0))
        config = dataclasses.asdict(model.cfg.model.head_for(modality))
        module = cls(name, options, width, config, model.embed_dim)
        if middle is not None:
            module.features.load_state_dict(middle.state_dict())
        module.proj.load_state_dict(head.state_dict())
        return module.eval()

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        x = features["sentence_embedding"]  # (B, input_dim)
        features["sentence_embedding"] = self.proj(self.features(x))  # (B, embed_dim)
        return features

    def get_config_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.config_keys}

    def get_embedding_dimension(self) -> int:
        return self.embed_dim

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        import json

        from safetensors.torch import save_model

        with open(os.path.join(output_path, "config.json"), "w", encoding="utf-8") as f:
            json.dump(self.get_config_dict(), f, indent=2)
        save_model(self, os.path.join(output_path, "model.safetensors"))

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any) -> TowerHead:
        """Rebuild from ``config.json`` and ``model.safetensors`` (a local folder)."""
        import json

        from safetensors.torch import load_model

        folder = os.path.join(model_name_or_path, subfolder)
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            module = cls(**json.load(f))
        load_model(module, os.path.join(folder, "model.safetensors"))
        return module.eval()


__all__ = ["TowerHead"]
