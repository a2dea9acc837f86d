"""Feature extraction: ``modalign``'s ``embed_manifest`` against the encoders' own library calls.

* text: ``--texts`` generated descriptions of one to five sentences, through ``embed_manifest``
  (a fresh cache each time) and through ``SentenceTransformer.encode`` (its defaults: batch 32,
  length-sorted) on the same model;
* image: ``--images`` generated PNGs (300-700 px) through ``embed_manifest`` (DataLoader workers
  decode while the model runs) and through a plain loop (open, preprocess, batch, run the net,
  one after the other) with the same preprocessing and network.

Methods alternate within each repeat (A, B, A, B, ...); one JSON line per run, then one per
modality: ``{"modality", "modalign_items_per_s", "plain_items_per_s", "ratio", "max_abs_diff",
"load_avg"}`` (ratio = modalign / plain items per second, median over repeats).

Usage:
    python benchmarks/bench_embed.py                           # 3,000 texts, 500 images, 3 repeats
    python benchmarks/bench_embed.py --texts 300 --images 64 --repeats 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

WORDS = [
    "the",
    "a",
    "of",
    "sample",
    "protein",
    "cell",
    "measured",
    "signal",
    "under",
    "light",
    "model",
    "small",
    "large",
    "river",
    "stone",
    "bright",
    "cold",
    "during",
    "after",
    "observed",
    "reaction",
    "between",
    "two",
    "three",
    "layers",
    "surface",
    "energy",
    "grows",
    "slowly",
    "quickly",
    "field",
    "pattern",
    "structure",
    "thin",
    "dense",
    "water",
    "metal",
    "glass",
    "forms",
    "changes",
    "shows",
]


def make_texts(n: int, seed: int = 0) -> list[str]:
    """n descriptions of 1-5 sentences of 5-20 words each (lengths vary as in real captions)."""
    rng = np.random.default_rng(seed)
    texts = []
    for _ in range(n):
        sentences = [
            " ".join(rng.choice(WORDS, size=rng.integers(5, 21))).capitalize() + "."
            for _ in range(rng.integers(1, 6))
        ]
        texts.append(" ".join(sentences))
    return texts


def make_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    """n PNGs of random ellipses and rectangles on coloured backgrounds, 300-700 px a side."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"img{i:04d}.png"
        paths.append(str(path))
        if path.exists():
            continue
        w, h = (int(x) for x in rng.integers(300, 701, size=2))
        image = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            box = (x0, y0, x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2)))
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        image.save(path)
    return paths


def run_modalign(
    encoder: torch.nn.Module, modality: str, cells: list[str], folder: Path
) -> np.ndarray:
    """``embed_manifest`` over a one-column manifest, into a fresh cache: (N, D) in cell order."""
    import pandas as pd

    from modalign.data.manifest import read_manifest
    from modalign.features.extract import embed_manifest
    from modalign.features.store import FeatureStore

    out = Path(tempfile.mkdtemp(dir=folder))
    pd.DataFrame({modality: cells}).to_csv(out / "m.csv", index=False)
    manifest = read_manifest(out / "m.csv")
    embed_manifest(manifest, {modality: encoder}, {modality: out / "f.npy"}, progress=False)  # type: ignore[dict-item]
    store = FeatureStore.open(out / "f.npy")
    return store.rows(cells)


def plain_text(encoder: torch.nn.Module, texts: list[str]) -> np.ndarray:
    return encoder.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)  # type: ignore[no-any-return]


def plain_images(encoder: torch.nn.Module, paths: list[str], batch_size: int = 32) -> np.ndarray:
    """Open, preprocess and embed one batch after another, in this process only."""
    from modalign.encoders.image import image_to_tensor, open_image

    out = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            batch = torch.stack(
                [
                    image_to_tensor(open_image(p), 224, (0.5,) * 3, (0.5,) * 3)
                    for p in paths[start : start + batch_size]
                ]
            )  # (B, 3, 224, 224)
            maps = encoder.net.extract_features(batch.contiguous(memory_format=torch.channels_last))
            out.append(maps.mean(dim=(2, 3)).numpy())
    return np.concatenate(out)


def compare(name: str, n: int, methods: dict[str, Callable[[], np.ndarray]], repeats: int) -> None:
    """Alternate the methods ``repeats`` times; print each run and the median summary."""
    rates: dict[str, list[float]] = {m: [] for m in methods}
    results: dict[str, np.ndarray] = {}
    for repeat in range(repeats):
        for method, fn in methods.items():
            start = time.perf_counter()
            results[method] = fn()
            rates[method].append(n / (time.perf_counter() - start))
            print(
                json.dumps(
                    {
                        "modality": name,
                        "method": method,
                        "repeat": repeat,
                        "items_per_s": round(rates[method][-1], 1),
                    }
                ),
                flush=True,
            )
    ratios = [a / b for a, b in zip(rates["modalign"], rates["plain"], strict=True)]
    summary = {
        "modality": name,
        "items": n,
        "modalign_items_per_s": round(statistics.median(rates["modalign"]), 1),
        "plain_items_per_s": round(statistics.median(rates["plain"]), 1),
        "ratio": round(statistics.median(ratios), 3),
        "ratio_spread": [round(min(ratios), 3), round(max(ratios), 3)],
        "max_abs_diff": float(np.abs(results["modalign"] - results["plain"]).max()),
        "threads": torch.get_num_threads(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(summary), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=3000)
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "modalign-bench-embed"))
    args = p.parse_args()
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    if args.texts:
        from modalign.encoders.text import SentenceTransformerEncoder

        text_enc = SentenceTransformerEncoder("text")
        texts = make_texts(args.texts)
        methods = {
            "modalign": lambda: run_modalign(text_enc, "text", texts, folder),
            "plain": lambda: plain_text(text_enc, texts),
        }
        compare("text", len(texts), methods, args.repeats)
    if args.images:
        from modalign.encoders.image import EfficientNetLite0Encoder

        image_enc = EfficientNetLite0Encoder("image").eval()
        paths = make_images(folder / "images", args.images)
        methods = {
            "modalign": lambda: run_modalign(image_enc, "image", paths, folder),
            "plain": lambda: plain_images(image_enc, paths),
        }
        compare("image", len(paths), methods, args.repeats)


if __name__ == "__main__":
    main()
