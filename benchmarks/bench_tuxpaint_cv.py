"""Does training beat the classical baselines on Tux Paint? Cross-validated, test split untouched.

The demo scores one test split of 99 captions, where a 95% interval on recall@1 spans about
±0.09: one run cannot tell a training recipe that is 0.01 better than CCA from one that is
0.01 worse. This benchmark repeats the demo's whole protocol on K group folds of the demo's
train+val stamps (the test stamps are never read), for several fold seeds:

* the held-out fold plays the test split; of the remaining caption groups, a seeded ~11% plays
  val (early stopping, and the baselines' choice of PCA width and shrinkage), the rest train;
* the recipe trains exactly as ``modalign demo`` does (the packaged config plus ``--set``
  overrides), and ``modalign.demo.score_baselines`` fits random, Procrustes and CCA on the same
  rows;
* it prints one JSON line per recipe: mean held-out recall@1 per direction of the model and of
  each baseline, and the mean paired difference model - baseline with its standard error over
  folds and the number of folds the model wins, ties and loses.

Usage (features come from the demo's feature cache; the first run fills it, about a minute):
    python benchmarks/bench_tuxpaint_cv.py                            # the demo's own recipe
    python benchmarks/bench_tuxpaint_cv.py --recipe demo \\
        --recipe scratch-mlp 'model.head.init=random' 'model.head.kind=mlp' 'train.lr=1e-3'
    python benchmarks/bench_tuxpaint_cv.py --recipe symile loss.objective=symile \\
        --recipe gram loss.objective=gram --recipe hn_nce loss.name=hn_nce
    python benchmarks/bench_tuxpaint_cv.py --recipe mined --mine 5   # mined explicit negatives

Baselines are cached per fold in ``DEMO_DIR/baselines/`` (pass ``--demo-dir`` to reuse them).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

DIRECTIONS = ("image_to_caption", "caption_to_image")
"""The demo's headline directions; ``summarise`` reports every direction the model scores."""


def fold_splits(
    groups: list[str], k: int, i: int, seed: int, val_share: float = 0.11
) -> np.ndarray:
    """Split names for fold ``i`` of ``k`` over groups: held-out ``test``, then ``val``, ``train``.

    ``groups`` are those of the demo's train and val rows only (its test rows are left out of
    every fold manifest: never trained on, never scored).
    """
    unique = sorted(set(groups))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique))
    fold_of = {unique[j]: rank % k for rank, j in enumerate(order)}
    inner = rng.random(len(unique)) < val_share  # which groups serve as val when not held out
    is_val = {g: bool(inner[j]) for j, g in enumerate(unique)}
    return np.array(
        ["test" if fold_of[g] == i else ("val" if is_val[g] else "train") for g in groups]
    )


def run_fold(
    manifest: Path,
    features: Path,
    overrides: list[str],
    work: Path,
    baselines: Path | None = None,
    mine: int = 0,
) -> dict[str, dict]:
    """Train the demo's recipe on one fold's manifest; model and baseline test metrics.

    Baselines depend only on the fold, so they are read from ``baselines`` (a JSON file) when
    it exists and written there otherwise. ``mine > 0``: train once, mine each train row's
    ``mine`` hardest negatives with that model (``modalign.train.mine``), train again with them
    (``data.negatives``) and score the second model.
    """
    from modalign.config import load_config
    from modalign.demo import CONFIG, score_baselines
    from modalign.io import write_json_atomic
    from modalign.train.loop import Trainer

    sets = [f"data.manifest={manifest}", "eval.splits=[test]", "train.tensorboard=false"]
    modalities = load_config(CONFIG).data.modalities
    sets += [f"data.features.{m}={features / (m + '.npy')}" for m in modalities]
    cfg = load_config(CONFIG, sets + overrides)
    run_dir = work / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    trainer = Trainer(cfg, run_dir)
    metrics = trainer.fit()
    if mine:
        negatives = mine_negatives(trainer, mine, work / "negatives.csv")
        shutil.rmtree(run_dir, ignore_errors=True)
        trainer = Trainer(
            load_config(CONFIG, sets + overrides + [f"data.negatives={negatives}"]), run_dir
        )
        metrics = trainer.fit()
    if baselines is not None and baselines.exists():
        return {"model": metrics, **json.loads(baselines.read_text())}
    scores = score_baselines(trainer.parts.data, cfg.eval.splits, cfg.eval.ks)
    if baselines is not None:
        write_json_atomic(baselines, scores)
    return {"model": metrics, **scores}


def mine_negatives(trainer: object, k: int, out: Path) -> Path:
    """Write the ``k`` hardest negatives of every train row under the trained model (as
    ``modalign mine`` does) and return the file."""
    import csv

    from modalign.data.samplers import SEPARATOR
    from modalign.model.inference import embed_split
    from modalign.train.mine import hardest_negatives

    emb = embed_split(trainer.model, trainer.parts.data, "train")  # type: ignore[attr-defined]
    idx, _ = hardest_negatives(emb, k)
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "negatives"])
        for key, row in zip(emb.ids, idx, strict=True):
            writer.writerow([key, SEPARATOR.join(emb.ids[j] for j in row if j >= 0)])
    return out


def directions(metrics: dict[str, float]) -> list[Any]:
    """Every retrieval direction (``Direction``) with a held-out recall@1 in ``metrics``."""
    from modalign.types import MetricKey, headline_keys

    return sorted((MetricKey.parse(k).subject for k in headline_keys(metrics)), key=str)


def summarise(name: str, folds: list[dict[str, dict]]) -> dict:
    """Mean held-out recall@1 per direction (with its standard error over folds) and the paired
    model - baseline differences in every direction a baseline scores on every fold."""
    from modalign.types import MetricKey

    out: dict = {"recipe": name, "folds": len(folds)}
    for d in directions(folds[0]["model"]):
        key = MetricKey("test", d, "recall@1").flatten()
        model = np.array([f["model"].get(key, np.nan) for f in folds])
        out[f"{d}/model"] = round(float(model.mean()), 4)
        out[f"{d}/model/se"] = round(float(model.std(ddof=1) / np.sqrt(len(model))), 4)
        out[f"{d}/model/per_fold"] = [round(float(v), 4) for v in model]  # to pair recipes
        for b in folds[0]:
            if b == "model" or not all(key in f[b] for f in folds):
                continue
            base = np.array([f[b][key] for f in folds])
            diff = model - base
            out[f"{d}/{b}"] = round(float(base.mean()), 4)
            out[f"{d}/model-{b}"] = round(float(diff.mean()), 4)
            out[f"{d}/model-{b}/se"] = round(float(diff.std(ddof=1) / np.sqrt(len(diff))), 4)
            out[f"{d}/model-{b}/win-tie-loss"] = [
                int((diff > 0).sum()),
                int((diff == 0).sum()),
                int((diff < 0).sum()),
            ]
        margins = [
            out[f"{d}/model-{b}"] - 2 * out[f"{d}/model-{b}/se"]
            for b in folds[0]
            if f"{d}/model-{b}" in out
        ]
        if margins:  # the demo's bar: beat every baseline by two standard errors
            out[f"{d}/bar_margin"] = round(min(margins), 4)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--recipe",
        nargs="+",
        action="append",
        metavar=("NAME", "KEY=VALUE"),
        help="a recipe: a name, then --set overrides of the demo config (default: demo)",
    )
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--demo-dir", type=Path, default=None, help="reuse a demo output folder")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared, loaded machine the thread barriers "
        "of small matrices cost more than they save)",
    )
    p.add_argument(
        "--mine", type=int, default=0, help="train, mine this many negatives per row, train again"
    )
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)

    import pandas as pd

    from modalign.data.manifest import read_manifest
    from modalign.data.tuxpaint import build_tuxpaint_manifest
    from modalign.demo import default_cache, demo_config, embed_features

    work = Path(tempfile.mkdtemp(prefix="bench_tuxpaint_"))
    demo_dir = args.demo_dir or work
    manifest = build_tuxpaint_manifest(demo_dir / "tuxpaint.csv")
    cfg = demo_config(manifest, demo_dir / "features", False)
    embed_features(cfg, read_manifest(manifest, cfg.data.modalities), default_cache())
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    frame = frame[frame["split"].isin(["train", "val"])].reset_index(drop=True)
    groups = frame["group"].tolist()
    for name, *overrides in args.recipe or [["demo"]]:
        folds = []
        for seed in args.seeds:
            for i in range(args.folds):
                fold = frame.copy()
                fold["split"] = fold_splits(groups, args.folds, i, seed)
                fold_manifest = work / f"fold_{seed}_{i}.csv"
                fold.to_csv(fold_manifest, index=False)
                cached = demo_dir / "baselines" / f"folds{args.folds}_seed{seed}_fold{i}.json"
                cached.parent.mkdir(parents=True, exist_ok=True)
                folds.append(
                    run_fold(
                        fold_manifest, demo_dir / "features", overrides, work, cached, args.mine
                    )
                )
        summary = summarise(name, folds)
        summary["load_average"] = [round(x, 1) for x in os.getloadavg()]
        print(json.dumps(summary), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
