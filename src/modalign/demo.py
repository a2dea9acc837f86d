"""The demo: align Tux Paint images, captions and sounds with real pretrained encoders.

Steps, each reusing what an earlier run left: build the manifest from the installed stamps,
embed every item with frozen encoders into a feature cache, train heads over the cached
features, score the test split against baselines, and write ``report.html``.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modalign.config import Config, load_config
from modalign.data.manifest import read_manifest
from modalign.data.tuxpaint import DEFAULT_ROOT, build_tuxpaint_manifest
from modalign.encoders import build_encoder
from modalign.io import write_json_atomic
from modalign.report import RetrievalExample, Section
from modalign.types import EmbeddingSet, MetricKey, headline_keys

log = logging.getLogger(__name__)

CONFIG = Path(__file__).parent / "configs" / "tuxpaint.yaml"


@dataclass(frozen=True)
class DemoResult:
    run_dir: Path
    report: Path
    metrics: dict[str, float]
    baselines: dict[str, dict[str, float]]
    seconds: dict[str, float]


def default_cache() -> Path:
    """Feature cache shared by demo runs: ``$XDG_CACHE_HOME/modalign`` or ``~/.cache/modalign``."""
    import os

    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "modalign"


def run_demo(
    out: Path,
    root: Path = DEFAULT_ROOT,
    cache: Path | None = None,
    smoke: bool = False,
    limit: int | None = None,
) -> DemoResult:
    """Run the whole demo into ``out`` (its ``run/`` subfolder is replaced)."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    out = Path(out).resolve()
    manifest_path = build_tuxpaint_manifest(out / "tuxpaint.csv", root)
    if limit:
        _truncate_manifest(manifest_path, limit)
    cfg = demo_config(manifest_path, out / "features", smoke)
    embed_features(cfg, cache or default_cache())
    seconds["embed"] = time.perf_counter() - start
    run_dir = out / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    from modalign.train.loop import fit

    t = time.perf_counter()
    metrics = fit(cfg, run_dir)
    seconds["train"] = time.perf_counter() - t
    t = time.perf_counter()
    baselines = score_baselines(cfg, run_dir)
    report = write_demo_report(cfg, run_dir, metrics, baselines)
    seconds["report"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - start
    write_json_atomic(run_dir / "timings.json", seconds)
    return DemoResult(run_dir, report, metrics, baselines, seconds)


def _truncate_manifest(path: Path, limit: int) -> None:
    import pandas as pd

    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.iloc[:limit].to_csv(path, index=False)


def embed_features(cfg: Config, cache: Path) -> None:
    """Run the config's frozen encoders into its ``data.features`` files, through the cache."""
    from modalign.features.extract import embed_manifest

    manifest = read_manifest(cfg.data.manifest, list(cfg.data.modalities))
    encoders = {
        m: build_encoder(e.name, m, None, dict(e.options)) for m, e in cfg.model.encoders.items()
    }
    results = embed_manifest(manifest, encoders, cfg.data.features, cache_dir=cache / "embed")
    for m, r in results.items():
        log.info(
            "%s: %d items (%d from cache) in %.1fs; skipped %s",
            m,
            r.n_items,
            r.n_cached,
            r.seconds,
            r.skipped or "none",
        )


def demo_config(manifest_path: Path, feature_dir: Path, smoke: bool) -> Config:
    """The packaged demo config with the data paths filled in (and a tiny setting for smoke runs)."""
    modalities = load_config(CONFIG).data.modalities
    overrides = [f"data.manifest={manifest_path}"] + [
        f"data.features.{m}={feature_dir / (m + '.npy')}" for m in modalities
    ]
    if smoke:
        overrides += ["train.epochs=2", "train.warmup_steps=2", "data.min_rows=2"]
    return load_config(CONFIG, overrides)


def score_baselines(cfg: Config, run_dir: Path) -> dict[str, dict[str, float]]:
    """Baselines fitted on the same frozen features and splits as the model; ``baselines.json``."""
    from modalign.eval.baselines import evaluate_baselines, fit_baselines
    from modalign.pipeline import build_parts

    parts = build_parts(cfg)
    data = parts.data
    features = {}
    for m, store in parts.stores.items():
        rows = np.flatnonzero(data.present[m] & data.keep)
        arr = np.full((len(data.manifest), store.dim), np.nan, dtype=np.float32)
        arr[rows] = store.rows([data.keys[m][r] for r in rows])
        features[m] = arr
    splits = [
        s if keep else "skipped" for s, keep in zip(data.splits.tolist(), data.keep, strict=True)
    ]
    fitted = fit_baselines(features, splits, data.manifest.ids, data.manifest.groups, parts.pairs)
    scores: dict[str, dict[str, float]] = {}
    for split in cfg.eval.splits:
        for name, values in evaluate_baselines(fitted, split, cfg.eval.ks).items():
            scores.setdefault(name, {}).update(values)
    write_json_atomic(run_dir / "baselines.json", scores)
    return scores


def write_demo_report(
    cfg: Config, run_dir: Path, metrics: dict[str, float], baselines: dict[str, dict[str, float]]
) -> Path:
    """``report.html``: training curves, evaluation of the test split, baselines, examples."""
    from modalign import report as rp
    from modalign.eval.suite import evaluate_split
    from modalign.model.inference import embed_run

    emb = embed_run(run_dir, ["test"])["test"]
    ev = evaluate_split(emb, "test", cfg.eval.ks)
    sections = [rp.training_section(run_dir / "metrics.jsonl"), *rp.evaluation_sections(ev)]
    sections.insert(2, baseline_section(metrics, baselines))
    sections.append(rp.examples_section(caption_to_image_examples(emb, run_dir)))
    path = run_dir / "report.html"
    rp.write_report(
        path,
        "modalign demo: Tux Paint images, captions and sounds",
        sections,
        subtitle=f"test split, {len(emb)} stamps; frozen EfficientNet-Lite0, all-MiniLM-L6-v2 and log-mel statistics",
    )
    return path


def baseline_section(metrics: dict[str, float], baselines: dict[str, dict[str, float]]) -> Section:
    """Test R@1 of the trained model next to every baseline, per direction."""
    from modalign import report as rp

    keys = sorted(headline_keys(metrics))
    header = ["direction", "trained", *baselines]
    rows = [
        [
            str(MetricKey.parse(k).subject),
            metrics[k],
            *(b.get(k, float("nan")) for b in baselines.values()),
        ]
        for k in keys
    ]
    return rp.Section("Trained model vs baselines (test recall@1)", rp.table_html(rows, header))


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
    emb: EmbeddingSet, run_dir: Path, n: int = 6, k: int = 5
) -> list[RetrievalExample]:
    """A few caption queries with their top images, from the test split."""
    manifest = read_manifest(Path(load_config(run_dir / "config.yaml").data.manifest))
    row_of = {key: i for i, key in enumerate(manifest.ids)}
    cap, img = emb.embeddings["caption"], emb.embeddings["image"]
    has_cap, has_img = emb.present("caption"), emb.present("image")
    gallery = np.flatnonzero(has_img)
    queries = np.flatnonzero(has_cap & has_img)[:: max(1, int(has_cap.sum()) // n)][:n]
    groups = emb.group_ids()
    examples = []
    for q in queries:
        scores = img[gallery] @ cap[q]
        top = gallery[np.argsort(-scores)[:k]]
        results = []
        for g in top:
            row = row_of[emb.ids[g]]
            results.append(
                (
                    _thumbnail(manifest.resolve(manifest.cells["image"][row] or "")),
                    manifest.cells["caption"][row] or "",
                    float(img[g] @ cap[q]),
                    bool(groups[g] == groups[q]),
                )
            )
        examples.append(
            RetrievalExample(manifest.cells["caption"][row_of[emb.ids[q]]] or "", results)
        )
    return examples
