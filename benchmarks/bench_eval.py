"""Exact Recall@K: modalign's streamed evaluation against CLIP_benchmark's full-matrix approach.

Each (method, size) runs in a fresh process, the methods alternated within every repeat (modalign,
clip_benchmark, modalign, ...). One JSON line per method and size: the median time and its spread
over repeats, the peak memory of the metric call above the resident set just before it (the
interpreter, the imports and the inputs: ``mem_above_baseline_mib``), and ``bound_ratio``, the time
over that of the (Q, N) score matmul at the machine's 4096^2 GEMM rate measured before and after
the runs. Then one line per size with the ratios (peer / modalign): ``time`` (median of the
per-repeat ratios), ``mem_above_baseline``, the GEMM rates and the load average.

The peer is installed without its dependencies, because its wheel asks for torchvision and
open_clip (which do not fit the pinned CPU torch) while its retrieval module needs only torch and
tqdm: ``pip install --no-deps clip-benchmark``.

Usage:
    python benchmarks/bench_eval.py                      # 2,000 .. 20,000 at D=256, both methods
    python benchmarks/bench_eval.py --sizes 200000 --methods modalign   # the scale target
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import PeakRSS, alternate, gemm_gflops, load, paired_ratio, rounded, run_json, summary

KS = (1, 5, 10)


def make_pairs(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Paired normalised (n, d) queries and gallery, correlated so recall is neither 0 nor 1."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((n, d), dtype=np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = rng.standard_normal((n, d), dtype=np.float32)
    q *= 0.25
    q += g
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q, g


def run_modalign(q: np.ndarray, g: np.ndarray) -> dict[str, float]:
    from modalign.eval.retrieval import retrieval_metrics

    m = retrieval_metrics(q, g, ks=KS)
    return {f"recall@{k}": m[f"recall@{k}"] for k in KS}


def run_clip_benchmark(q: np.ndarray, g: np.ndarray) -> dict[str, float]:
    """CLIP_benchmark's evaluate(): full score matrix, full positive matrix, batched recall_at_k."""
    import torch
    from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k

    scores = torch.from_numpy(q) @ torch.from_numpy(g).T  # (Q, N) in memory at once
    positive_pairs = torch.zeros_like(scores, dtype=torch.bool)
    positive_pairs[torch.arange(len(scores)), torch.arange(len(scores))] = True
    out = {}
    for k in KS:
        r = batchify(recall_at_k, scores, positive_pairs, 64, "cpu", k=k)  # their default batch
        out[f"recall@{k}"] = (r > 0).float().mean().item()
    return out


def child(method: str, n: int, d: int) -> None:
    import importlib  # import before timing; each process imports only its own method

    importlib.import_module(
        "modalign.eval.retrieval"
        if method == "modalign"
        else "clip_benchmark.metrics.zeroshot_retrieval"
    )
    q, g = make_pairs(n, d)
    fn = run_modalign if method == "modalign" else run_clip_benchmark
    with PeakRSS() as mem:  # above the interpreter, the imports and the inputs
        t0 = time.perf_counter()
        metrics = fn(q, g)
        seconds = time.perf_counter() - t0
    record = {"seconds": seconds, "mem_above_baseline_mib": mem.above_mib}
    print(json.dumps({**record, "baseline_mib": mem.baseline_mib, **metrics}))


def compare(n: int, d: int, methods: list[str], repeats: int) -> list[dict[str, object]]:
    """Fresh processes, methods alternated within each repeat; one row per method, then ratios."""

    def runner(method: str) -> Callable[[], dict[str, Any]]:
        return lambda: run_json([sys.executable, __file__, "--child", method, str(n), str(d)])

    gemm = [gemm_gflops()]
    runs = alternate({m: runner(m) for m in methods}, repeats)
    gemm.append(gemm_gflops())
    rate = statistics.mean(gemm)
    rows: list[dict[str, object]] = []
    for method, rs in runs.items():
        secs = summary([r["seconds"] for r in rs])
        row: dict[str, object] = {"method": method, "queries": n, "gallery": n, "dim": d}
        row.update(seconds_median=secs["median"], seconds_spread=secs["spread"], repeats=repeats)
        row["mem_above_baseline_mib"] = statistics.median(r["mem_above_baseline_mib"] for r in rs)
        row["baseline_mib"] = statistics.median(r["baseline_mib"] for r in rs)
        row["bound_ratio"] = secs["median"] / (2.0 * n * n * d / rate / 1e9)  # scores matmul only
        row.update({k: v for k, v in rs[0].items() if k.startswith("recall")})
        rows.append(rounded(row))
    if {"modalign", "clip_benchmark"} <= runs.keys():
        a, b = runs["modalign"], runs["clip_benchmark"]
        time_ratio = paired_ratio([r["seconds"] for r in b], [r["seconds"] for r in a])
        mem_a = statistics.median(r["mem_above_baseline_mib"] for r in a)
        mem_b = statistics.median(r["mem_above_baseline_mib"] for r in b)
        rows.append(rounded({
            "ratio": "clip_benchmark / modalign", "queries": n,
            "time": time_ratio["median"], "time_spread": time_ratio["spread"],
            "mem_above_baseline": mem_b / max(mem_a, 1e-9),
            "same_recall": all(abs(a[0][f"recall@{k}"] - b[0][f"recall@{k}"]) < 1e-6 for k in KS),
            "gemm_gflops": gemm, "load": load(),
        }))  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000, 10000, 20000])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--methods", nargs="+", default=["modalign", "clip_benchmark"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    for n in args.sizes:
        for row in compare(n, args.dim, args.methods, args.repeats):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
