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
from typing import NoReturn

from modalign import __version__
from modalign.errors import ModalignError
from modalign.io import DISK_FULL

COMMAND_MODULES = [
    "modalign.commands.train",
    "modalign.commands.embed",
    "modalign.commands.encode",
    "modalign.commands.zeroshot",
    "modalign.commands.export",
    "modalign.commands.eval",
    "modalign.commands.compare",
    "modalign.commands.demo",
    "modalign.commands.synth",
    "modalign.commands.codebook",
    "modalign.commands.codes",
    "modalign.commands.transfer",
    "modalign.commands.index",
    "modalign.commands.search",
    "modalign.commands.serve",
    "modalign.commands.mine",
]


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command registered."""
    parser = OneLineParser(
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
    except (ModalignError, OSError) as err:  # OSError: the last line of defence (see below)
        if args.verbose:
            raise
        print(f"modalign {args.command}: error: {error_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"modalign {args.command}: interrupted", file=sys.stderr)
        return 130


def error_line(err: BaseException) -> str:
    """One line for a user's mistake or an environment failure (``-v`` shows the traceback).

    Readers turn their own failures into a ``DataError`` naming the file; an ``OSError`` that got
    past them (a full disk, a permission, a folder where a file was expected) still gets one line,
    with its file name, and a full disk says so.

    Example:
        >>> import errno
        >>> error_line(OSError(errno.ENOSPC, "No space left on device", "runs/x/last.pt"))
        'runs/x/last.pt: No space left on device (the disk is full: free some space and run again)'
    """
    if isinstance(err, OSError) and not isinstance(err, ModalignError):
        where = f"{err.filename}: " if err.filename else ""
        text = f"{where}{err.strerror or err}"
        if err.errno in DISK_FULL:
            text += " (the disk is full: free some space and run again)"
        return text
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
