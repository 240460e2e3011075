"""`latentsurgeon bench`: side-by-side benchmarks against peer libraries (from a source checkout)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from latentsurgeon.cli._common import count
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError


def cmd_bench(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parents[2]
    if not (root / "bench" / "runner.py").exists():
        raise LatentSurgeonError("`latentsurgeon bench` runs from a source checkout (bench/ is "
                                 "not part of the installed package).")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from bench import runner
    from bench.__main__ import main as bench_main

    if args.name and args.name != "all" and args.name not in runner.available():
        raise InvalidParameterError(f"no benchmark {args.name!r}; available: "
                                    f"{', '.join(runner.available())} (or 'all').")

    argv = ["--list"] if args.list or not args.name else [args.name]
    argv += ["--repeats", str(args.repeats)] + (["--write"] if args.write else [])
    bench_main(argv)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="run a side-by-side benchmark (from a source checkout)")
    p.add_argument("name", nargs="?", help="benchmark to run, or 'all' (none: list them)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and their cases")
    p.add_argument("--repeats", type=count(1), default=7,
                   help="timed repeats of ours and the peer, alternated (default 7)")
    p.add_argument("--write", action="store_true",
                   help="record the results in bench/results/*.json and docs/benchmarks.md "
                        "(tracked files; without it nothing is written)")
    p.set_defaults(func=cmd_bench)
