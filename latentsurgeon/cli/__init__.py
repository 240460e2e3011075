"""Command line: ``latentsurgeon <command>``; one module per command, each with ``register``.

Every command prints its results; every error reaches the user as one line on stderr naming
what to fix, with exit code 2 (``--debug`` shows the traceback instead).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from latentsurgeon import __version__
from latentsurgeon.cli import (
    bench,
    cbm,
    correct,
    demo,
    explain,
    explain_experiment,
    extract,
    layers,
    probe,
    tcav,
    train,
    verify,
)
from latentsurgeon.cli._common import load_object
from latentsurgeon.errors import LatentSurgeonError

__all__ = ["COMMANDS", "build_parser", "load_object", "main"]

#: The command modules, in the order ``--help`` lists them.
COMMANDS = [demo, layers, train, extract, probe, tcav, explain, explain_experiment, correct, verify,
            cbm, bench]


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming what to fix, exit code 2 (argparse
    prints the whole usage block first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="latentsurgeon",
        description="Reveal, explain, correct and verify what a PyTorch model learned.")
    parser.add_argument("--version", action="version", version=f"latentsurgeon {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, LatentSurgeonError):
        return text
    return f"{type(exc).__name__}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"error: {_one_line(exc)} (--debug shows the traceback)", file=sys.stderr)
        return 2
