"""``modalign train CONFIG [--set k=v ...] [--out DIR] [--resume]``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from modalign.commands import add_override_option
from modalign.config import load_config
from modalign.types import headline_keys


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a shared embedding space from a config",
        description="Train projection heads (and trainable encoders) that align the modalities of a "
        "paired manifest, then evaluate on the held-out splits. Writes a run folder.",
    )
    p.add_argument("config", type=Path, help="YAML config file (see configs/)")
    add_override_option(p)
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<name>)")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from modalign.train.loop import fit

    cfg = load_config(args.config, args.overrides)
    out = args.out or Path("runs") / cfg.name
    if cfg.codebook.method is not None:  # discrete unified representations (modalign.quantize)
        from modalign.errors import ConfigError
        from modalign.quantize.trainer import fit_codebook

        if args.resume:
            raise ConfigError("--resume: codebook runs (codebook.method set) start from scratch")

        summary = fit_codebook(cfg, out)
        print(json.dumps({"run_dir": str(out), **{k: round(v, 4) for k, v in summary.items()}}))
        return 0
    metrics = fit(cfg, out, resume=args.resume)
    if not metrics:  # not the first of several processes: it prints the result
        return 0
    headline = {k: round(metrics[k], 4) for k in headline_keys(metrics)}
    print_headline(metrics)
    print(json.dumps({"run_dir": str(out), **headline}))
    return 0


def print_headline(metrics: dict[str, float]) -> None:
    """A small table of test recall@1 and MRR per direction, on standard error."""
    from modalign.types import MetricKey

    rows = [(MetricKey.parse(k), metrics[k]) for k in headline_keys(metrics)]
    if not rows:
        return
    width = max(len(key.subject.label) for key, _ in rows)  # type: ignore[union-attr]
    lines = [f"{'test direction':<{width}}  recall@1     mrr"]
    for key, r1 in rows:
        mrr = metrics.get(dataclasses.replace(key, metric="mrr").flatten(), float("nan"))
        lines.append(f"{key.subject.label:<{width}}  {r1:8.3f}  {mrr:6.3f}")  # type: ignore[union-attr]
    print("\n".join(lines), file=sys.stderr)
