"""Training throughput on cached features: modalign's ``Trainer`` against a plain PyTorch loop.

Both sides train the same heads (built by ``modalign.model.aligner.build_model`` from the same
config and seed) with the same loss (the engine's ``pair_loss``, i.e. the tiled kernel modalign
uses; ``--plain-loss functional`` gives the plain loop ``info_nce_loss`` instead), the same AdamW
(fused, no decay on vectors), the same warm-up + cosine schedule, clipping and batches (the same
``EpochBatches`` order over the same train rows). The plain loop holds the features in memory
as tensors; modalign reads them from its memory-mapped feature store, validates after every epoch,
logs and writes checkpoints, as ``modalign train`` does.

Throughput excludes one-time start-up: samples per second over epochs 2..n (modalign: from the
end of epoch 1 to the end of epoch n, validation and checkpoints included). Each run is a fresh
process; the two run alternately (modalign, plain, modalign, plain, ...), the plain loop with the
intra-op threads modalign chose automatically in the run just before it (so the ratio measures
the loop, not the thread choice). One JSON line per config::

    {"config", "modalign_samples_per_s", "plain_samples_per_s", "ratio", "ratio_spread",
     "modalign_steps_samples_per_s", "ratio_steps", "ratio_steps_spread",
     "modalign_end_epoch_share", "overlapped", "threads", "repeats", "gemm_gflops", "load"}

``ratio`` is the median over repeats of modalign / plain samples per second (whole epochs for
modalign: its validation and checkpoints count against it, while the plain loop validates
nothing and writes nothing); ``ratio_steps`` the same with only modalign's training steps timed
(what the plain loop does); ``modalign_end_epoch_share`` the median share of modalign's epochs
spent outside the steps (validation of the val split, ``best.pt``/``last.pt``, the epoch's log).
Where the Trainer validates an epoch in a background thread while the next one trains
(``overlapped``: one per run), the steps' time leaves out closing that epoch (waiting for its
validation, writing its checkpoints), which counts as end of epoch.
The plain loop starts from PyTorch's random heads, modalign from its fitted start (the config's
``model.head.init``, fitted before any timing); a step costs the same from either.
``gemm_gflops`` is the 4096^2 fp32 GEMM rate before and after the runs; ``load`` the load
average at the end.

Usage:
    python benchmarks/bench_train.py                       # small and large, 3 repeats
    python benchmarks/bench_train.py --configs small --repeats 5
    python benchmarks/bench_train.py --large-rows 12288 --epochs 3   # a quicker large config
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import alternate, gemm_gflops, load, paired_ratio, rounded, run_json

REPO = Path(__file__).resolve().parents[1]
CONFIGS: dict[str, dict[str, Any]] = {
    # configs/synthetic.yaml (embed 64, MLP heads 256 wide, batch 256) over 50,000 rows
    "small": {"rows": 50_000, "dims": {"image": 48, "text": 32}, "overrides": []},
    # 1024-d features into a 512-d space, batch 4,096 (MLP heads 1024 wide)
    "large": {
        "rows": 24_576,
        "dims": {"image": 1024, "text": 1024},
        "overrides": [
            "model.embed_dim=512",
            "model.head.hidden_dim=1024",
            "train.batch_size=4096",
            "train.warmup_steps=2",
        ],
    },
}


def dataset(cache: Path, name: str, rows: int) -> Path:
    """The synthetic dataset of a config (written once into ``cache``); returns its manifest."""
    from modalign.data.synthetic import write_synthetic_dataset

    folder = cache / f"{name}-{rows}"
    manifest = folder / "pairs.csv"
    if not manifest.exists():
        write_synthetic_dataset(folder, n=rows, dims=CONFIGS[name]["dims"], noise=0.3)
    return manifest


def make_config(manifest: Path, name: str, epochs: int, extra: list[str]) -> Any:
    from modalign.config import load_config

    folder = manifest.parent
    data = [f"data.manifest={manifest}"] + [
        f"data.features.{m}={folder / f'{m}.npy'}" for m in CONFIGS[name]["dims"]
    ]
    overrides = [*data, f"train.epochs={epochs}", *CONFIGS[name]["overrides"], *extra]
    return load_config(REPO / "configs" / "synthetic.yaml", overrides)


def run_modalign(cfg: Any, overlap: bool | None = None) -> dict[str, Any]:
    """``Trainer.fit`` with the end of every epoch timed; samples/s over epochs 2..n."""
    from modalign.train.loop import Trainer

    ends: list[float] = []
    steps_s: list[float] = []  # time in the training steps of each epoch (no validation)
    closing: list[float] = [0.0]  # time closing an epoch validated beside the next one's steps
    threads: list[int | None] = []

    class TimedTrainer(Trainer):
        def _step_threads(self) -> int | None:
            threads.append(super()._step_threads())
            return threads[-1]

        def _train_epoch(self) -> None:
            start, closed = time.perf_counter(), closing[0]
            super()._train_epoch()
            steps_s.append(time.perf_counter() - start - (closing[0] - closed))

        def _resolve(self) -> None:  # waits for the validation, writes best.pt and last.pt
            start = time.perf_counter()
            super()._resolve()
            closing[0] += time.perf_counter() - start

        def _end_epoch(self) -> None:
            super()._end_epoch()
            ends.append(time.perf_counter())

    out = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        trainer = TimedTrainer(cfg, out / "run", overlap=overlap)
        trainer.fit()
        samples = len(trainer.sampler) * cfg.train.batch_size
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if len(ends) < 2:
        raise SystemExit("needs at least 2 epochs (early stopping cut the run?)")
    per_s = samples * (len(ends) - 1) / (ends[-1] - ends[0])
    steps_per_s = samples * (len(ends) - 1) / sum(steps_s[1:])
    return {
        "samples_per_s": per_s,
        "steps_samples_per_s": steps_per_s,
        # share of epochs 2..n spent after the steps: validation, checkpoints, the epoch's log
        "end_epoch_share": 1 - sum(steps_s[1:]) / (ends[-1] - ends[0]),
        "threads": threads[-1],
        "overlapped": closing[0] > 0,
        "dynamo_imported": "torch._dynamo" in sys.modules,
    }


def run_plain(cfg: Any, threads: int | None, loss: str) -> dict[str, Any]:
    """A hand-written loop over the same heads, loss, optimiser, schedule and batches."""
    import numpy as np
    import torch

    from modalign.data.manifest import assign_splits, read_manifest
    from modalign.data.paired import EpochBatches
    from modalign.losses.engine import pair_loss
    from modalign.losses.functional import info_nce_loss
    from modalign.model.aligner import build_model
    from modalign.train.checkpoint import seed_everything

    if threads:
        torch.set_num_threads(threads)
    tc = cfg.train
    manifest = read_manifest(cfg.data.manifest)
    rows = np.flatnonzero(
        np.array(assign_splits(manifest, cfg.data.split_fractions, cfg.data.split_seed)) == "train"
    )
    feats = {
        m: torch.from_numpy(np.load(p)) for m, p in cfg.data.features.items()
    }  # row i = item i
    seed_everything(tc.seed)
    model = build_model(cfg, {m: f.shape[1] for m, f in feats.items()})
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": tc.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=tc.lr, fused=True)
    batches = EpochBatches(rows, tc.batch_size, tc.seed)
    total = len(batches) * tc.epochs

    def lr_factor(s: int) -> float:
        if s < tc.warmup_steps:
            return (s + 1) / tc.warmup_steps
        t = min(1.0, (s - tc.warmup_steps) / max(1, total - tc.warmup_steps))
        return tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    fn = pair_loss if loss == "engine" else lambda _, x, y, s: info_nce_loss(x, y, s)
    ends = []
    for epoch in range(tc.epochs):
        model.train()
        batches.set_epoch(epoch)
        for batch in batches:
            idx = torch.as_tensor(batch)
            emb = model({m: f[idx] for m, f in feats.items()})
            fn("infonce", emb["image"], emb["text"], model.scale()).backward()
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip or math.inf)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            model.clamp_scale()
        ends.append(time.perf_counter())
    per_s = len(batches) * tc.batch_size * (len(ends) - 1) / (ends[-1] - ends[0])
    return {"samples_per_s": per_s, "threads": torch.get_num_threads()}


def worker(args: argparse.Namespace) -> None:
    manifest = dataset(args.cache, args.config, args.rows)
    cfg = make_config(manifest, args.config, args.epochs, args.set)
    if args.worker == "modalign":
        result = run_modalign(cfg, {"auto": None, "on": True, "off": False}[args.overlap])
    else:
        result = run_plain(cfg, args.threads, args.plain_loss)
    print(json.dumps(result), flush=True)


def compare(name: str, args: argparse.Namespace) -> dict[str, Any]:
    rows = args.large_rows if name == "large" else CONFIGS[name]["rows"]
    dataset(args.cache, name, rows)  # written before any timing
    base = [sys.executable, __file__, "--config", name, "--rows", str(rows)]
    base += [
        "--epochs",
        str(args.epochs),
        "--cache",
        str(args.cache),
        "--plain-loss",
        args.plain_loss,
        "--overlap",
        args.overlap,
    ]
    base += [x for s in args.set for x in ("--set", s)]
    chosen: list[int] = []

    def modalign() -> dict[str, Any]:
        out = run_json([*base, "--worker", "modalign"])
        chosen.append(out["threads"])
        return out

    def plain() -> dict[str, Any]:
        return run_json([*base, "--worker", "plain", "--threads", str(chosen[-1] or 0)])

    env_threads = os.environ.get("OMP_NUM_THREADS")
    gemm_before = gemm_gflops()
    runs = alternate({"modalign": modalign, "plain": plain}, args.repeats)
    gemm_after = gemm_gflops()
    m = [r["samples_per_s"] for r in runs["modalign"]]
    m_steps = [r["steps_samples_per_s"] for r in runs["modalign"]]
    p = [r["samples_per_s"] for r in runs["plain"]]
    ratio, ratio_steps = paired_ratio(m, p), paired_ratio(m_steps, p)
    return rounded({
        "config": name, "modalign_samples_per_s": statistics.median(m),
        "plain_samples_per_s": statistics.median(p), "ratio": ratio["median"],
        "ratio_spread": ratio["spread"],
        "modalign_steps_samples_per_s": statistics.median(m_steps),
        "ratio_steps": ratio_steps["median"], "ratio_steps_spread": ratio_steps["spread"],
        "modalign_end_epoch_share": statistics.median(r["end_epoch_share"] for r in runs["modalign"]),
        "overlapped": [r["overlapped"] for r in runs["modalign"]], "threads": chosen, "omp_num_threads": env_threads,
        "repeats": args.repeats, "plain_loss": args.plain_loss,
        "gemm_gflops": [gemm_before, gemm_after], "load": load(),
    })  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["small", "large"], choices=list(CONFIGS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=4, help="epochs per run (2..n are timed)")
    p.add_argument("--large-rows", type=int, default=CONFIGS["large"]["rows"])
    p.add_argument("--plain-loss", choices=("engine", "functional"), default="engine")
    p.add_argument(
        "--overlap",
        choices=("auto", "on", "off"),
        default="auto",
        help="validate each epoch beside the next one's steps (Trainer(overlap=...))",
    )
    p.add_argument("--set", action="append", default=[], help="extra config override (both sides)")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache/modalign/bench_train")
    p.add_argument("--worker", choices=("modalign", "plain"), help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return
    for name in args.configs:
        print(json.dumps(compare(name, args)), flush=True)


if __name__ == "__main__":
    main()
