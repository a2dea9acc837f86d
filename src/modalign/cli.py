"""The ``modalign`` command line: one sub-command per job, each a thin call into the library.

Each sub-command lives in its own module, which defines ``add_parser(subparsers)`` (registering
its name, help and options, and ``set_defaults(run=...)``) and a ``run(args) -> int``. Add a new
one by listing its module in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from modalign import __version__
from modalign.errors import ModalignError

COMMAND_MODULES = [
    "modalign.commands.train",
    "modalign.commands.embed",
    "modalign.commands.eval",
    "modalign.commands.compare",
    "modalign.commands.demo",
    "modalign.commands.synth",
    "modalign.commands.mine",
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="modalign",
        description="Train and measure one embedding space shared by several modalities.",
    )
    parser.add_argument("--version", action="version", version=f"modalign {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log debug messages and show tracebacks"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except ModalignError as err:
        if args.verbose:
            raise
        print(f"modalign {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"modalign {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
