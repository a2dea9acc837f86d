"""A sentence-transformers module for the parts of a text tower that ST's own modules cannot express.

``TowerHead`` holds the model's encoder over sentence embeddings (``precomputed`` or ``mlp``)
and its head (any head of ``modalign.model.heads.HEADS``, e.g. the MLP with a linear shortcut),
rebuilt on load from their registry names and config, with the weights in safetensors. A folder
holding one loads with ``SentenceTransformer(DIR, trust_remote_code=True)`` where modalign is
installed (sentence-transformers >= 6 imports classes outside its own package only then).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from torch import nn

from modalign.config import HeadConfig
from modalign.encoders import build_encoder
from modalign.errors import ConfigError
from modalign.model.heads import HEADS


def _st_module_base() -> type[nn.Module]:
    """sentence-transformers' ``Module`` base class (its place moved in version 6)."""
    for where in ("sentence_transformers.base.modules", "sentence_transformers.models"):
        try:
            base: type[nn.Module] = importlib.import_module(where).Module
            return base
        except (ImportError, AttributeError):
            continue
    return nn.Module  # no sentence-transformers >= 5: from_parts refuses to build one


_Base: Any = _st_module_base()


class TowerHead(_Base):
    """``head(encoder(sentence_embedding))``: a modalign encoder and head as one ST module.

    Args:
        encoder: registry name of the encoder over features. encoder_options: its options.
        input_dim: width of the sentence embedding. head: a ``HeadConfig`` as a dict.
        embed_dim: width of the shared space.

    Example:
        >>> import torch
        >>> head = TowerHead("precomputed", {}, 8, {"kind": "mlp", "hidden_dim": 16}, 4).eval()
        >>> head({"sentence_embedding": torch.randn(2, 8)})["sentence_embedding"].shape
        torch.Size([2, 4])
    """

    config_keys = ["encoder", "encoder_options", "input_dim", "head", "embed_dim"]  # noqa: RUF012

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
        if _Base is nn.Module:
            raise ConfigError("exporting this head to sentence-transformers needs version >= 5")
        card = model.card["modalities"][modality]
        name, options = (
            ("precomputed", {}) if middle is None else (card["encoder"], card["options"])
        )
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

    def get_embedding_dimension(self) -> int:
        return self.embed_dim

    def save(
        self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any
    ) -> None:
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=True)  # never a pickle

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> TowerHead:
        """Rebuild from ``config.json`` and ``model.safetensors`` (a folder or a Hub repository)."""
        hub = {"subfolder": subfolder, "token": token, "cache_folder": cache_folder,
               "revision": revision, "local_files_only": local_files_only}  # fmt: skip
        module = cls(**cls.load_config(model_name_or_path, **hub))
        cls.load_torch_weights(model_name_or_path, model=module, **hub)
        return module.eval()
