"""Search benchmarks: exact top-k against faiss, ANN recall and speed, IVF-PQ build memory.

Every part prints JSON lines.

``--exact`` (issue 15 part 5): top-10 of 2,000 queries over a 100,000 x 512 gallery of unit rows,
modalign's exact search (:func:`modalign.eval.topk.top_k_tensor`, the exact backend's code) in
two thread settings against faiss ``IndexFlatIP``, run alternately (A, B, C, A, B, C, ...; the
order rotates every repeat). After every repeat a 4096 x 4096 x 4096 fp32 GEMM measures the
machine's matmul rate in the same window; ``bound_ratio = seconds / (2 Q N D / gemm rate)`` of
that repeat. One line per implementation ``{"impl", "seconds", "bound_ratio", "spread"}``
(medians; spread = min and max seconds), then one line with ``"ratio"`` (the median over
repeats of faiss seconds / modalign seconds), the load average and the GEMM rate.

``--ann``: clustered vectors (default 1,000,000 x 256); every backend of
:mod:`modalign.index` (exact, flat, ivf, hnsw, ivfpq) with its default parameters; one line
each ``{"backend", "build_s", "qps", "recall@10", "speedup_vs_exact"}``; recall@10 is the
share of the exact top-10 found; ``speedup_vs_exact`` is the median over ``--pairs`` runs of
exact seconds / backend seconds, the two searches run back to back (exact, backend, exact, ...). Then the same index searched with other ``nprobe`` (ivf,
ivfpq) or ``efSearch`` (hnsw) values (``--nprobes``, ``--efs``): the recall/speed trade-off.

``--ivfpq-memory``: a fresh process builds the ``ivfpq`` backend over N x 256 float32 vectors
(default 5,000,000, 5 GB) streamed from a memory-mapped ``.npy`` file in ``--tmp``; prints the
peak resident set above the interpreter's baseline (measured in that process after imports,
before the build). The file is deleted afterwards.

Usage:
    python benchmarks/bench_search.py --exact [--repeats 7]
    python benchmarks/bench_search.py --ann [--n 1000000]
    python benchmarks/bench_search.py --ivfpq-memory [--n 5000000] [--tmp /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from modalign.eval.topk import top_k_tensor


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def gemm_rate(side: int = 4096) -> float:
    """fp32 matmul rate in FLOP/s of one side^3 GEMM (buffers made before the clock starts)."""
    a, b, out = torch.randn(side, side), torch.randn(side, side), torch.empty(side, side)
    t = time.perf_counter()
    torch.mm(a, b, out=out)
    return 2 * side**3 / (time.perf_counter() - t)


def exact_impls(q: np.ndarray, g: np.ndarray, k: int) -> dict[str, Callable[[], np.ndarray]]:
    import faiss

    qt, gt = torch.from_numpy(q), torch.from_numpy(g)
    flat = faiss.IndexFlatIP(g.shape[1])
    flat.add(g)
    threads = torch.get_num_threads()
    return {
        "modalign": lambda: top_k_tensor(qt, gt, k)[1].numpy(),
        f"modalign_1worker_{threads}threads": lambda: top_k_tensor(qt, gt, k, workers=1)[1].numpy(),
        "faiss_IndexFlatIP": lambda: flat.search(q, k)[1],
    }


def bench_exact(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    g, q = unit_rows(rng, args.gallery, args.dim), unit_rows(rng, args.queries, args.dim)
    impls = exact_impls(q, g, args.k)
    names = list(impls)
    results = {name: impls[name]() for name in names}  # warm-up, and the results to compare
    times: dict[str, list[float]] = {n: [] for n in names}
    bounds: list[float] = []
    flops = 2 * args.queries * args.gallery * args.dim
    for rep in range(args.repeats):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            t = time.perf_counter()
            impls[name]()
            times[name].append(time.perf_counter() - t)
        bounds.append(flops / max(gemm_rate(), gemm_rate()))
    for name in names:
        ratios = [t / b for t, b in zip(times[name], bounds, strict=True)]
        agree = float((results[name] == results["faiss_IndexFlatIP"]).mean())
        print(
            json.dumps(
                {
                    "impl": name,
                    "seconds": round(statistics.median(times[name]), 4),
                    "bound_ratio": round(statistics.median(ratios), 3),
                    "spread": [round(min(times[name]), 4), round(max(times[name]), 4)],
                    "same_ids_as_faiss": round(agree, 5),
                }
            )
        )
    per_rep = [f / m for f, m in zip(times["faiss_IndexFlatIP"], times["modalign"], strict=True)]
    print(
        json.dumps(
            {
                "ratio": round(statistics.median(per_rep), 3),
                "ratio_spread": [round(min(per_rep), 3), round(max(per_rep), 3)],
                "gallery": args.gallery,
                "queries": args.queries,
                "dim": args.dim,
                "k": args.k,
                "repeats": args.repeats,
                "matmul_gflops_per_s": round(flops / statistics.median(bounds) / 1e9, 1),
                "load_avg": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


def clustered(rng: np.random.Generator, n: int, d: int, clusters: int = 1000) -> np.ndarray:
    """Unit rows around ``clusters`` random centres (a mixture, like embeddings of many concepts)."""
    centres = unit_rows(rng, clusters, d)
    out = np.empty((n, d), np.float32)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        x = centres[rng.integers(0, clusters, m)] + 0.7 / np.sqrt(d) * rng.standard_normal(
            (m, d), dtype=np.float32
        )
        out[i : i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def bench_ann(args: argparse.Namespace) -> None:
    from modalign.index import BACKENDS

    rng = np.random.default_rng(1)
    data = clustered(rng, args.n, args.ann_dim)
    q = data[rng.choice(args.n, args.ann_queries, replace=False)] + 0.05 / np.sqrt(
        args.ann_dim
    ) * rng.standard_normal((args.ann_queries, args.ann_dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    labels = np.arange(args.n, dtype=np.int64)
    exact = BACKENDS.get("exact").build(labels, data, {})
    truth, _ = _timed_search(exact, q)
    for name in args.backends:
        t = time.perf_counter()
        backend = BACKENDS.get(name).build(labels, data, {}) if name != "exact" else exact
        build = time.perf_counter() - t
        for setting in [None, *_sweep(name, args)]:
            if setting is not None:
                _set_search_param(backend, *setting)
            found, qps, speedup = _alternated(backend, exact, q, args.pairs)
            recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
            print(
                json.dumps(
                    {
                        "backend": name,
                        "n": args.n,
                        "dim": args.ann_dim,
                        "build_s": round(build, 1),
                        "qps": round(qps, 1),
                        "recall@10": round(float(recall), 4),
                        "speedup_vs_exact": round(speedup, 1),
                        "params": backend.describe(),
                        "default_params": setting is None,
                        "load_avg": [round(x, 2) for x in os.getloadavg()],
                    }
                ),
                flush=True,
            )
        del backend


def _sweep(name: str, args: argparse.Namespace) -> list[tuple[str, int]]:
    if name in ("ivf", "ivfpq"):
        return [("nprobe", p) for p in args.nprobes]
    if name == "hnsw":
        return [("efSearch", e) for e in args.efs]
    return []


def _set_search_param(backend: object, key: str, value: int) -> None:
    import faiss

    index = backend.index  # type: ignore[attr-defined]
    if key == "nprobe":
        index.nprobe = value
    else:
        faiss.downcast_index(index.index).hnsw.efSearch = value


def _alternated(
    backend: object, exact: object, q: np.ndarray, pairs: int
) -> tuple[np.ndarray, float, float]:
    """Results, median queries/s and the median over (exact, backend) pairs run back to back of
    exact seconds / backend seconds."""
    backend.search(q, 10)  # type: ignore[attr-defined]  # warm-up: thread-local scratch, caches
    runs = [(_timed_search(exact, q)[1], _timed_search(backend, q)) for _ in range(pairs)]
    found = runs[0][1][0]
    return (
        found,
        statistics.median(r[1][1] for r in runs),
        statistics.median(r[1][1] / r[0] for r in runs),
    )


def _timed_search(backend: object, q: np.ndarray) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    _, found = backend.search(q, 10)  # type: ignore[attr-defined]
    return found, len(q) / (time.perf_counter() - t)


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def ivfpq_child(path: str) -> None:
    """In a fresh process: build ivfpq from the memory-mapped file; print peak RSS above baseline."""
    from modalign.index import BACKENDS

    cls = BACKENDS.get("ivfpq")
    base = _rss_kib()
    shape = np.load(path, mmap_mode="r").shape  # (N, D) float32; only the header is read
    t = time.perf_counter()
    backend = cls.build_streamed(path, chunk=100_000)  # maps the file afresh for every chunk
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        json.dumps(
            {
                "backend": "ivfpq",
                "n": int(shape[0]),
                "dim": int(shape[1]),
                "build_s": round(seconds, 1),
                "baseline_mib": round(base / 1024, 1),
                "peak_above_baseline_mib": round((peak - base) / 1024, 1),
                "file_gib": round(os.path.getsize(path) / 2**30, 2),
                "params": backend.describe(),
                "load_avg": [round(x, 2) for x in os.getloadavg()],
            }
        ),
        flush=True,
    )


def bench_ivfpq_memory(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        path = Path(tmp) / "vectors.npy"
        rng = np.random.default_rng(2)
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(args.n, 256))
        centres = unit_rows(rng, 1000, 256)
        for i in range(0, args.n, 200_000):  # written in chunks: this process stays small too
            m = min(200_000, args.n - i)
            x = centres[rng.integers(0, 1000, m)] + 0.7 / 16 * rng.standard_normal(
                (m, 256), dtype=np.float32
            )
            out[i : i + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        out.flush()
        del out
        subprocess.run([sys.executable, __file__, "--ivfpq-child", str(path)], check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--exact", action="store_true")
    p.add_argument("--ann", action="store_true")
    p.add_argument("--ivfpq-memory", action="store_true")
    p.add_argument("--ivfpq-child", help=argparse.SUPPRESS)
    p.add_argument("--gallery", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=2000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument(
        "--n", type=int, default=None, help="--ann: 1,000,000; --ivfpq-memory: 5,000,000"
    )
    p.add_argument("--ann-dim", type=int, default=256)
    p.add_argument("--ann-queries", type=int, default=1000)
    p.add_argument("--backends", nargs="+", default=["exact", "flat", "ivf", "hnsw", "ivfpq"])
    p.add_argument(
        "--nprobes",
        type=int,
        nargs="*",
        default=[4, 8, 16],
        help="--ann: also search ivf/ivfpq with these",
    )
    p.add_argument(
        "--efs",
        type=int,
        nargs="*",
        default=[16, 32, 128],
        help="--ann: also search hnsw with these efSearch",
    )
    p.add_argument(
        "--pairs", type=int, default=3, help="--ann: alternated (exact, backend) timings"
    )
    p.add_argument("--tmp", default=tempfile.gettempdir())
    args = p.parse_args()
    if args.ivfpq_child:
        return ivfpq_child(args.ivfpq_child)
    if args.exact:
        bench_exact(args)
    if args.ann:
        args.n = args.n or 1_000_000
        bench_ann(args)
    if args.ivfpq_memory:
        args.n = args.n or 5_000_000
        bench_ivfpq_memory(args)


if __name__ == "__main__":
    main()
