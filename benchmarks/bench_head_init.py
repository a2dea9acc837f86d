"""Where does starting the heads at CCA help? Two head starts (default random vs auto), by train size and width.

For each (train size, feature width), trains the default MLP heads from a random start and from
the CCA start (``model.head.init``) on synthetic paired data (``modalign.data.synthetic``: two
noisy non-linear views of shared latents), for several seeds, and prints one JSON line with the
held-out MRR (mean of both directions) of each start, the paired difference and its standard
error, and the epochs each needed to reach its best val score.

Usage:
    python benchmarks/bench_head_init.py --sizes 300 1000 4000 --widths 64 768 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np


def run_one(
    folder: Path, n: int, width: int, seed: int, init: str, noise: float
) -> tuple[float, int]:
    """Held-out mean MRR and the best epoch of one training run."""
    from modalign.config import load_config
    from modalign.data.synthetic import write_synthetic_dataset
    from modalign.train.loop import fit
    from modalign.train.metrics_log import read_log
    from modalign.types import headline_keys

    data = folder / f"data-{n}-{width}-{seed}"
    if not (data / "pairs.csv").exists():
        dims = {"a": width, "b": max(8, width // 2)}
        write_synthetic_dataset(data, n=int(n / 0.8), dims=dims, noise=noise, seed=seed)
    cfg = load_config(None, [
        f"data.manifest={data / 'pairs.csv'}", f"data.features.a={data / 'a.npy'}",
        f"data.features.b={data / 'b.npy'}", f"model.head.init={init}", "train.epochs=30",
        "train.tensorboard=false", f"train.seed={seed}", "model.embed_dim=64",
        "train.early_stopping.patience=5", "eval.splits=[test]",
    ])  # fmt: skip
    run = folder / f"run-{n}-{width}-{seed}-{init}"
    metrics = fit(cfg, run)
    mrr = float(np.mean([metrics[k] for k in headline_keys(metrics, metric="mrr")]))
    epochs = [
        r for r in read_log(run) if "val/a_to_b/mrr" in r or any(k.startswith("val/") for k in r)
    ]
    scores = [np.mean([v for k, v in r.items() if k.endswith("/mrr")]) for r in epochs]
    best_epoch = int(epochs[int(np.argmax(scores))]["epoch"]) if scores else 0
    return mrr, best_epoch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[300, 1000, 4000])
    p.add_argument("--widths", type=int, nargs="+", default=[64, 768])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--noise", type=float, default=1.0, help="per-view noise std (views ~0.5)")
    p.add_argument("--inits", nargs=2, default=["random", "auto"], help="the two starts compared")
    args = p.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        for width in args.widths:
            for n in args.sizes:
                first, second = args.inits
                res = {init: [run_one(Path(tmp), n, width, s, init, args.noise) for s in args.seeds]
                       for init in (first, second)}  # fmt: skip
                diff = np.array([b[0] - a[0] for a, b in zip(res[first], res[second], strict=True)])
                print(json.dumps({
                    "train_pairs": n, "width": width, "noise": args.noise, "seeds": len(args.seeds),
                    f"mrr_{first}": round(float(np.mean([r[0] for r in res[first]])), 4),
                    f"mrr_{second}": round(float(np.mean([r[0] for r in res[second]])), 4),
                    f"{second}_minus_{first}": round(float(diff.mean()), 4),
                    "se": round(float(diff.std(ddof=1) / np.sqrt(len(diff))), 4) if len(diff) > 1 else None,
                    f"best_epoch_{first}": float(np.mean([r[1] for r in res[first]])),
                    f"best_epoch_{second}": float(np.mean([r[1] for r in res[second]])),
                    "load": round(os.getloadavg()[0], 1),
                }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
