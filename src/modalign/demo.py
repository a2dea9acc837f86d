"""The demo: align Tux Paint images, captions, sounds and spoken descriptions with real
pretrained encoders.

It reads top to bottom like README's paragraph: build the manifest from the installed stamps,
embed every item with frozen encoders into a feature cache (a second run reuses it), train heads
over the cached features, score the test split against baselines fitted on the same features,
and write ``report.html``. The run's parts (manifest, feature stores, model) are built once, by
the trainer, and passed down.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modalign.config import Config, load_config, with_overrides
from modalign.data.manifest import Manifest, read_manifest
from modalign.data.tuxpaint import DEFAULT_ROOT, build_tuxpaint_manifest
from modalign.encoders import build_encoder
from modalign.eval.baselines import score_baselines
from modalign.io import write_json_atomic
from modalign.report import RetrievalExample
from modalign.train.loop import Trainer
from modalign.types import EmbeddingSet

log = logging.getLogger(__name__)

CONFIG = Path(__file__).parent / "configs" / "tuxpaint.yaml"


@dataclass(frozen=True)
class DemoResult:
    run_dir: Path
    report: Path
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    seconds: dict[str, float]


@dataclass
class _Stopwatch:
    """Seconds per named step, and in total."""

    start: float = field(default_factory=time.perf_counter)
    last: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=dict)

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name], self.last = now - self.last, now
        self.seconds["total"] = now - self.start


def default_cache() -> Path:
    """Feature cache shared by demo runs: ``$XDG_CACHE_HOME/modalign`` or ``~/.cache/modalign``."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "modalign"


def run_demo(
    out: Path,
    root: Path = DEFAULT_ROOT,
    cache: Path | None = None,
    smoke: bool = False,
    limit: int | None = None,
) -> DemoResult:
    """Run the whole demo into ``out`` (its ``run/`` subfolder is replaced)."""
    clock = _Stopwatch()
    out = Path(out).resolve()
    manifest_path = build_tuxpaint_manifest(out / "tuxpaint.csv", root)
    if limit:
        _truncate_manifest(manifest_path, limit)
    cfg = demo_config(manifest_path, out / "features", smoke)
    embed_features(cfg, read_manifest(manifest_path, cfg.data.modalities), cache or default_cache())
    clock.lap("embed")
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    trainer = Trainer(cfg, run_dir)
    metrics = trainer.fit()
    clock.lap("train")
    baselines = score_baselines(trainer.parts.data, cfg.eval.splits, cfg.eval.ks)
    write_json_atomic(run_dir / "baselines.json", baselines)
    report = write_demo_report(trainer, metrics, baselines)
    clock.lap("report")
    build_demo_index(trainer, out / "index")
    clock.lap("index")
    write_json_atomic(run_dir / "timings.json", clock.seconds)
    return DemoResult(run_dir, report, metrics, baselines, clock.seconds)


def build_demo_index(trainer: Trainer, folder: Path) -> None:
    """An exact index of every stamp's items in every modality (all splits), embedded by the
    trained run from the cached features, for ``modalign serve``."""
    from modalign.index.build import add_manifest
    from modalign.index.store import Index
    from modalign.model.load import load

    shutil.rmtree(folder, ignore_errors=True)
    index = Index(backend="exact", run=str(trainer.run_dir))
    add_manifest(index, load(trainer.run_dir), trainer.parts.data.manifest, trainer.parts.stores)
    index.save(folder)


def _truncate_manifest(path: Path, limit: int) -> None:
    import pandas as pd

    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.iloc[:limit].to_csv(path, index=False)


def demo_config(manifest_path: Path, feature_dir: Path, smoke: bool) -> Config:
    """The packaged demo config with the data paths filled in (and a tiny setting for smoke runs)."""
    cfg = load_config(CONFIG)
    overrides = [f"data.manifest={manifest_path}"] + [
        f"data.features.{m}={feature_dir / (m + '.npy')}" for m in cfg.data.modalities
    ]
    if smoke:
        overrides += ["train.epochs=2", "train.warmup_steps=2", "data.min_rows=2"]
    return with_overrides(cfg, overrides)


def embed_features(cfg: Config, manifest: Manifest, cache: Path) -> None:
    """Run the config's frozen encoders into its ``data.features`` files, through the cache."""
    from modalign.features.extract import embed_manifest

    encoders = {
        m: build_encoder(e.name, m, None, dict(e.options)) for m, e in cfg.model.encoders.items()
    }
    results = embed_manifest(manifest, encoders, cfg.data.features, cache_dir=cache / "embed")
    for m, r in results.items():
        log.info(
            "%s: %d items (%d from cache) in %.1fs; skipped %s",
            m, r.n_items, r.n_cached, r.seconds, r.skipped or "none",
        )  # fmt: skip


def write_demo_report(
    trainer: Trainer, metrics: dict[str, float], baselines: dict[str, dict[str, float]]
) -> Path:
    """``report.html``: training curves, evaluation of the test split, baselines, examples."""
    from modalign import report as rp
    from modalign.eval.suite import evaluate_split
    from modalign.model.inference import embed_split

    cfg, data = trainer.cfg, trainer.parts.data
    emb = embed_split(trainer.model, data, "test", cfg.eval.chunk_size)
    ev = evaluate_split(emb, "test", cfg.eval.ks)
    sections = [rp.training_section(trainer.run_dir / "metrics.jsonl"), *rp.evaluation_sections(ev)]
    sections.insert(2, rp.baseline_section(metrics, baselines))
    sections.append(rp.examples_section(caption_to_image_examples(emb, data.manifest)))
    path = trainer.run_dir / "report.html"
    rp.write_report(
        path,
        "modalign demo: Tux Paint images, captions, sounds and spoken descriptions",
        sections,
        subtitle=f"test split, {len(emb)} stamps; frozen EfficientNet-Lite0 (images, spectrograms), all-MiniLM-L6-v2 (captions, transcripts)",
    )
    return path


def _thumbnail(path: Path, size: int = 96) -> np.ndarray | None:
    """An (H, W, 3) thumbnail on white (SVGs rasterised), or None if it cannot be read."""
    from modalign.encoders.common import ItemSkipped
    from modalign.encoders.image import open_image

    try:
        image = open_image(path, size)
    except (ItemSkipped, OSError):
        return None
    image.thumbnail((size, size))
    return np.asarray(image.convert("RGB"))


def caption_to_image_examples(
    emb: EmbeddingSet, manifest: Manifest, n: int = 6, k: int = 5
) -> list[RetrievalExample]:
    """A few caption queries with their top images, from the test split."""
    row_of = {key: i for i, key in enumerate(manifest.ids)}
    cap, img = emb.embeddings["caption"], emb.embeddings["image"]
    has_cap, has_img = emb.present("caption"), emb.present("image")
    gallery = np.flatnonzero(has_img)
    queries = np.flatnonzero(has_cap & has_img)[:: max(1, int(has_cap.sum()) // n)][:n]
    groups = emb.group_ids()
    examples = []
    for q in queries:
        scores = img[gallery] @ cap[q]
        results = []
        for g in gallery[np.argsort(-scores)[:k]]:
            row = row_of[emb.ids[g]]
            image = _thumbnail(manifest.resolve(manifest.cells["image"][row] or ""))
            caption = manifest.cells["caption"][row] or ""
            results.append((image, caption, float(img[g] @ cap[q]), bool(groups[g] == groups[q])))
        examples.append(
            RetrievalExample(manifest.cells["caption"][row_of[emb.ids[q]]] or "", results)
        )
    return examples
