"""Exact Recall@K: modalign's streamed evaluation against CLIP_benchmark's full-matrix approach.

Each (method, size) runs in a fresh process, so its peak resident set is its own. One JSON line is
printed per configuration, then one per size with the time and memory ratios (peer / modalign).

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
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

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
    t0 = time.perf_counter()
    metrics = fn(q, g)
    seconds = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak_mib, **metrics}))


def measure(method: str, n: int, d: int, repeats: int) -> dict[str, object]:
    runs = []
    for _ in range(repeats):
        cmd = [sys.executable, __file__, "--child", method, str(n), str(d)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    row: dict[str, object] = {"method": method, "queries": n, "gallery": n, "dim": d}
    row["seconds_median"] = statistics.median(r["seconds"] for r in runs)
    row["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs)
    row.update({k: v for k, v in runs[0].items() if k.startswith("recall")})
    return row


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
        rows = {m: measure(m, n, args.dim, args.repeats) for m in args.methods}
        for row in rows.values():
            print(json.dumps(row), flush=True)
        if {"modalign", "clip_benchmark"} <= rows.keys():
            a, b = rows["modalign"], rows["clip_benchmark"]
            ratio = {
                "ratio": "clip_benchmark / modalign",
                "queries": n,
                "time": float(b["seconds_median"]) / float(a["seconds_median"]),  # type: ignore[arg-type]
                "peak_rss": float(b["peak_rss_mib"]) / float(a["peak_rss_mib"]),  # type: ignore[arg-type]
                "same_recall": all(
                    abs(float(a[f"recall@{k}"]) - float(b[f"recall@{k}"])) < 1e-6  # type: ignore[arg-type]
                    for k in KS
                ),
            }
            print(json.dumps(ratio), flush=True)


if __name__ == "__main__":
    main()
