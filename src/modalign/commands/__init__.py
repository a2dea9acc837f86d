"""Sub-commands of the ``modalign`` command line, one module each (see ``modalign.cli``)."""

from __future__ import annotations

import argparse


def add_override_option(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable), collected in ``args.overrides``."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value, e.g. --set train.lr=3e-4 (repeatable; type-checked)",
    )
