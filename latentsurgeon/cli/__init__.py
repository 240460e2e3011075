"""Command line: ``latentsurgeon <command>``; one module per command, each with ``register``.

Every command prints its results; every error reaches the user as one line on stderr and exit
code 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from latentsurgeon.cli import bench, cbm, correct, demo, extract, layers, probe, tcav
from latentsurgeon.cli._common import load_object
from latentsurgeon.errors import LatentSurgeonError

__all__ = ["COMMANDS", "build_parser", "load_object", "main"]

#: The command modules, in the order ``--help`` lists them.
COMMANDS = [layers, extract, probe, tcav, correct, cbm, demo, bench]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentsurgeon",
        description="Reveal, explain, correct and verify what a PyTorch model learned.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except LatentSurgeonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
