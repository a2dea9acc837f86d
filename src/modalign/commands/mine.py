"""``modalign mine RUN --out negatives.csv [--k 5]``: hard negatives for the next run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "mine",
        help="write each train row's hardest cross-modal negatives, found with a run's model",
        description="Embed a run's train rows with its best weights and write, for every row, the "
        "k rows (outside its own group) that score highest against it across modalities. Train "
        "the next run with --set data.negatives=FILE.",
    )
    p.add_argument("run_dir", type=Path, help="a finished run folder")
    p.add_argument("--out", type=Path, required=True, help="CSV to write (id, negatives)")
    p.add_argument("--k", type=int, default=5, help="negatives per row (default 5)")
    p.add_argument("--split", default="train", help="split to mine (default train)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import csv

    from modalign.data.samplers import SEPARATOR
    from modalign.errors import ConfigError
    from modalign.io import write_atomic
    from modalign.model.inference import embed_split, load_run
    from modalign.train.mine import hardest_negatives

    if args.k < 1:
        raise ConfigError(f"--k {args.k}: must be >= 1")
    cfg, model, data = load_run(args.run_dir)
    emb = embed_split(model, data, args.split, cfg.eval.chunk_size)
    idx, _ = hardest_negatives(emb, args.k)

    def write(f: Any) -> None:
        out = csv.writer(f)
        out.writerow(["id", "negatives"])
        for key, row in zip(emb.ids, idx, strict=True):
            out.writerow([key, SEPARATOR.join(emb.ids[j] for j in row if j >= 0)])

    write_atomic(args.out, write)
    print(f"{args.out}: {len(emb)} rows, up to {args.k} negatives each")
    return 0
