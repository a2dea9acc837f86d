"""Wall time of a whole small ``modalign eval --embeddings FILE.npz --out DIR`` (report included).

A small evaluation is dominated by start-up: Python, the imports (torch, matplotlib, ...), then a
few hundred milliseconds of metrics, figures and HTML. This script writes two embeddings files of
``--rows`` items (three modalities, D=``--dim``): ``unlabelled.npz`` (retrieval and diagnostics
only) and ``labelled.npz`` (also ``label``, ``label_names`` and ``classes`` prototypes: zero-shot
and the cross-validated probes), then times the CLI in fresh processes, the source trees given by
``--tree`` alternated within every repeat (A, B, A, B, ...). One JSON line per tree and input:
median and spread of the wall time, median CPU time (user + system: steadier on a loaded
machine), and the load average.

Usage:
    python benchmarks/bench_eval_cli.py                                   # this tree
    python benchmarks/bench_eval_cli.py --tree before=/work/main/src --tree after=src --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import alternate, load, rounded, summary


def write_inputs(folder: Path, rows: int, dim: int, classes: int = 10, seed: int = 0) -> None:
    """``unlabelled.npz`` and ``labelled.npz``: image, text and audio views of ``rows`` items
    around ``classes`` class centres (audio missing for every fifth item)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim))
    label = np.arange(rows) % classes
    latent = centres[label] + 0.8 * rng.standard_normal((rows, dim))
    views = {m: latent + s * rng.standard_normal((rows, dim)) for m, s in
             (("image", 0.6), ("text", 0.8), ("audio", 1.0))}  # fmt: skip
    views["audio"][::5] = np.nan
    plain = {m: v.astype(np.float32) for m, v in views.items()}
    np.savez(folder / "unlabelled.npz", **plain)
    names = np.asarray([f"class{c}" for c in range(classes)], dtype=str)
    protos = np.stack([centres, centres + 0.3 * rng.standard_normal(centres.shape)])  # (T, C, D)
    np.savez(
        folder / "labelled.npz",
        **plain,
        label=label,
        label_names=names,
        classes=protos.astype(np.float32),
    )


def time_cli(pythonpath: str, npz: Path, out: Path) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one ``python -m modalign eval --embeddings npz
    --out out`` in a fresh process. On a loaded machine the CPU time is the steadier figure."""
    env = {**os.environ, "PYTHONPATH": pythonpath}
    cmd = [sys.executable, "-m", "modalign", "eval", "--embeddings", str(npz), "--out", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=300)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--tree",
        action="append",
        default=[],
        help="NAME=PYTHONPATH of a source tree to time (repeatable; default this=src)",
    )
    args = p.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree) or {"this": "src"}
    trees = {k: str(Path(v).resolve()) for k, v in trees.items()}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_inputs(folder, args.rows, args.dim)
        for kind in ("unlabelled", "labelled"):
            npz = folder / f"{kind}.npz"
            runners = {
                name: partial(time_cli, pp, npz, folder / f"out-{name}-{kind}")
                for name, pp in trees.items()
            }
            runners[next(iter(runners))]()  # warm the file cache once, untimed
            for name, runs in alternate(runners, args.repeats).items():
                wall, cpu = summary([w for w, _ in runs]), summary([c for _, c in runs])
                row = {"tree": name, "input": kind, "rows": args.rows, "dim": args.dim}
                row.update(seconds_median=wall["median"], seconds_spread=wall["spread"])
                row.update(cpu_seconds_median=cpu["median"], seconds=[w for w, _ in runs])
                print(json.dumps(rounded({**row, "load": load()})), flush=True)


if __name__ == "__main__":
    main()
