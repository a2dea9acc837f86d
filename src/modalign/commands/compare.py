"""``modalign compare RUN_A RUN_B``: paired-bootstrap differences of two evaluated runs.

Both folders need ``per_query.npz`` (written by ``modalign eval``). Queries are paired by item id
within each split and retrieval direction; each metric's difference B - A gets a 95% interval
and a p-value, and is marked significant when the interval excludes zero.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from modalign.errors import ConfigError, DataError


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "compare",
        help="which metric differences between two evaluated runs are significant",
        description="Paired bootstrap over the queries both runs answered.",
    )
    p.add_argument("run_a", type=Path, help="folder with per_query.npz (baseline)")
    p.add_argument("run_b", type=Path, help="folder with per_query.npz (candidate)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates")
    p.add_argument(
        "--metrics", nargs="+", default=["recall@1", "recall@5", "recall@10", "mrr", "map"]
    )
    p.add_argument("--out", type=Path, help="also write the comparison as JSON here")
    p.set_defaults(run=run)


def compare_runs(a: Path, b: Path, metrics: list[str], n_boot: int) -> dict[str, dict[str, float]]:
    """Paired-bootstrap comparison: flat metric key -> stats (see ``paired_bootstrap``)."""
    from modalign.eval.bootstrap import paired_bootstrap
    from modalign.eval.files import check_evaluation, load_per_query
    from modalign.types import MetricKey

    qa = load_per_query(check_evaluation(a, "per_query.npz"))
    qb = load_per_query(check_evaluation(b, "per_query.npz"))
    out: dict[str, dict[str, float]] = {}
    for split, direction in sorted(qa.keys() & qb.keys(), key=lambda k: (k[0], str(k[1]))):
        (ids_a, va), (ids_b, vb) = qa[split, direction], qb[split, direction]
        common, ia, ib = np.intersect1d(ids_a, ids_b, return_indices=True)
        if len(common) == 0:
            continue
        pick = [m for m in metrics if m in va and m in vb]
        res = paired_bootstrap({m: va[m][ia] for m in pick}, {m: vb[m][ib] for m in pick}, n_boot)
        for m, r in res.items():
            out[MetricKey(split, direction, m).flatten()] = {**r, "n_queries": float(len(common))}
    if not out:
        raise DataError(f"{a} and {b} share no evaluated queries (same splits and item ids needed)")
    return out


def run(args: argparse.Namespace) -> int:
    from modalign.io import write_json_atomic

    if args.bootstrap < 1:
        raise ConfigError(f"--bootstrap {args.bootstrap}: must be >= 1")

    result = compare_runs(args.run_a, args.run_b, args.metrics, args.bootstrap)
    print(f"{'metric':<42} {'A':>8} {'B':>8} {'B-A':>8}   95% interval        p")
    for key, r in result.items():
        star = " *" if r["significant"] else ""
        print(
            f"{key:<42} {r['a']:8.4f} {r['b']:8.4f} {r['diff']:+8.4f}   [{r['low']:+.4f}, {r['high']:+.4f}] {r['p_value']:.3f}{star}"
        )
    n_sig = sum(int(r["significant"]) for r in result.values())
    print(f"* significant at 95% (interval excludes 0): {n_sig} of {len(result)}")
    if args.out:
        write_json_atomic(args.out, result)
    return 0
