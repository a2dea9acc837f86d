"""``modalign codebook toc RUN --keep K``: training-free codebook optimisation of a trained run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "codebook",
        help="work on the shared codebook of a trained codebook run (TOC)",
        description="Operations on a trained codebook run folder (see codebook.method in configs).",
    )
    sub = p.add_subparsers(dest="codebook_command", metavar="ACTION", required=True)
    toc = sub.add_parser(
        "toc",
        help="keep the K most informative codebook dimensions (TOC, Huang et al. 2024)",
        description="Scores every codebook dimension by J = -lambda*sim + (1-lambda)*var and writes "
        "RUN/toc.json with the kept dimensions; `modalign codes` and `modalign transfer --toc` use it.",
    )
    toc.add_argument("run_dir", type=Path, help="a codebook run folder")
    toc.add_argument("--keep", type=int, required=True, help="dimensions to keep")
    toc.add_argument("--lam", type=float, default=None, help="lambda (default codebook.toc.lam)")
    toc.add_argument(
        "--bottom-share",
        type=float,
        default=None,
        help="share of K taken from the lowest scores (default codebook.toc.bottom_share)",
    )
    toc.set_defaults(run=run_toc)


def run_toc(args: argparse.Namespace) -> int:
    from modalign.io import write_json_atomic
    from modalign.quantize.toc import select_dimensions, toc_scores
    from modalign.quantize.trainer import load_run

    run = load_run(args.run_dir)
    lam = run.cfg.codebook.toc.lam if args.lam is None else args.lam
    share = run.cfg.codebook.toc.bottom_share if args.bottom_share is None else args.bottom_share
    book = run.model.codebook.embedding.numpy()
    dims = select_dimensions(book, args.keep, lam, share)
    record = {
        "keep": args.keep,
        "lam": lam,
        "bottom_share": share,
        "dimensions": dims.tolist(),
        "scores": toc_scores(book, lam).tolist(),
    }
    write_json_atomic(args.run_dir / "toc.json", record)
    print(json.dumps({"toc": str(args.run_dir / "toc.json"), "keep": args.keep, "lam": lam}))
    return 0
