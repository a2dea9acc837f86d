"""``modalign synth OUT_DIR``: write a synthetic paired dataset to try modalign without data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic paired dataset (manifest + feature files) to try modalign",
        description="Noisy non-linear views of shared latent vectors, one .npy feature file per "
        "modality and a pairs.csv manifest; configs/synthetic.yaml trains on OUT_DIR=runs/synthetic-data.",
    )
    p.add_argument("out_dir", type=Path, help="folder to write into")
    p.add_argument("--rows", type=int, default=3000, help="number of items (default 3000)")
    p.add_argument("--noise", type=float, default=0.3, help="noise std of each view (default 0.3)")
    p.add_argument(
        "--missing",
        type=float,
        default=0.0,
        help="share of cells left empty in the second modality",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from modalign.data.synthetic import write_synthetic_dataset

    path = write_synthetic_dataset(
        args.out_dir, n=args.rows, noise=args.noise, missing=args.missing, seed=args.seed
    )
    print(path)
    return 0
