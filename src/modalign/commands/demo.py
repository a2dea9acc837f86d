"""``modalign demo``: align Tux Paint images, captions and sounds, and write a report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo",
        help="align Tux Paint images, captions and sounds with real encoders; write a report",
        description="Builds a manifest from the Tux Paint stamps (Debian package tuxpaint-stamps-default), "
        "embeds images, captions and sounds with frozen pretrained encoders (cached), trains heads, "
        "evaluates the test split against baselines and writes OUT/run/report.html.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/demo"),
        help="output folder; its run/ subfolder is replaced (default: runs/demo)",
    )
    p.add_argument(
        "--stamps",
        type=Path,
        default=None,
        help="stamps folder (default: /usr/share/tuxpaint/stamps)",
    )
    p.add_argument(
        "--cache", type=Path, default=None, help="feature cache folder (default: ~/.cache/modalign)"
    )
    p.add_argument(
        "--smoke", action="store_true", help="a tiny setting (2 epochs) for a quick check"
    )
    p.add_argument("--limit", type=int, default=None, help="use only the first N stamps")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from modalign.data.tuxpaint import DEFAULT_ROOT
    from modalign.demo import run_demo
    from modalign.types import headline_keys

    result = run_demo(args.out, args.stamps or DEFAULT_ROOT, args.cache, args.smoke, args.limit)
    headline = {k: round(result.metrics[k], 3) for k in headline_keys(result.metrics)}
    print(
        json.dumps(
            {
                "report": str(result.report),
                "explore": f"modalign serve {result.run_dir.parent / 'index'}",
                "seconds": {k: round(v, 1) for k, v in result.seconds.items()},
                **headline,
            },
            indent=1,
        )
    )
    return 0
