"""A small real QueryEncoder for index and server tests (until ``modalign.load`` lands).

Real pretrained encoders (all-MiniLM-L6-v2 for text, EfficientNet-Lite0 for images, both
offline), each followed by a fixed seeded random linear projection to ``dim`` and L2
normalisation. Nothing is aligned, but every vector comes from the real model code path.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modalign.encoders import build_encoder


class SmallRealEncoder:
    """Text and image (file) queries to ``dim``-d unit vectors; ``model_id`` names the seed."""

    def __init__(self, dim: int = 32, seed: int = 0) -> None:
        self.modalities = ["image", "text"]
        self.model_id = f"test-encoder-{seed}-{dim}"
        self._enc = {
            "text": build_encoder("sentence_transformer", "text", None, {}),
            "image": build_encoder("efficientnet_lite0", "image", None, {}),
        }
        g = torch.Generator().manual_seed(seed)
        self._proj = {
            m: torch.randn(e.output_dim, dim, generator=g) / math.sqrt(e.output_dim)
            for m, e in sorted(self._enc.items())
        }

    def input_kind(self, modality: str) -> str:
        return "text" if modality == "text" else "file"

    @torch.no_grad()
    def encode(
        self, modality: str, items: Any, batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        enc, out = self._enc[modality], []
        enc.eval()
        for i in range(0, len(items), batch_size):
            batch = enc.collate([enc.load(str(x)) for x in items[i : i + batch_size]])
            out.append(F.normalize(enc(batch) @ self._proj[modality], dim=1))  # (B, dim)
        return torch.cat(out).numpy().astype(np.float32)


def write_images(folder: Path, n: int) -> list[Path]:
    """``n`` small PNGs of coloured rectangles (distinct colours and positions)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    rng = np.random.default_rng(0)
    for i in range(n):
        img = Image.new("RGB", (64, 64), tuple(int(c) for c in rng.integers(0, 256, 3)))
        x, y = (int(v) for v in rng.integers(0, 40, 2))
        img.paste(tuple(int(c) for c in rng.integers(0, 256, 3)), (x, y, x + 24, y + 24))
        paths.append(folder / f"img{i}.png")
        img.save(paths[-1])
    return paths


CAPTIONS = [
    "a red ball",
    "a small dog",
    "a tall tree",
    "a blue car",
    "a yellow sun",
    "a green frog",
    "an old house",
    "a cup of tea",
]


def build_test_index(folder: Path, encoder: SmallRealEncoder, backend: str = "exact") -> Path:
    """An index of 8 images and 8 captions embedded by ``encoder``, saved to ``folder/index``."""
    from modalign.index import Index

    paths = write_images(folder / "media", 8)
    index = Index(backend=backend, model_id=encoder.model_id)
    index.add(
        [f"img{i}" for i in range(8)],
        "image",
        encoder.encode("image", [str(p) for p in paths]),
        [{"source": str(p), "caption": CAPTIONS[i]} for i, p in enumerate(paths)],
    )
    index.add(
        [f"cap{i}" for i in range(8)],
        "text",
        encoder.encode("text", CAPTIONS),
        [{"caption": c} for c in CAPTIONS],
    )
    return index.save(folder / "index")


def load_helper_module() -> Any:
    """This module, importable from any test folder or a subprocess (tests are not a package)."""
    name = "modalign_test_real_encoder"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__))
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules[name]
