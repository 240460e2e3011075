"""`latentsurgeon bench`: side-by-side benchmarks (from a source checkout)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from latentsurgeon.errors import LatentSurgeonError


def cmd_bench(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parents[2]
    if not (root / "bench" / "runner.py").exists():
        raise LatentSurgeonError("`latentsurgeon bench` runs from a source checkout (bench/ is "
                                 "not part of the installed package).")
    sys.path.insert(0, str(root))
    from bench.__main__ import main as bench_main

    bench_main([args.name, "--repeats", str(args.repeats)])
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="run a side-by-side benchmark (from a source checkout)")
    p.add_argument("name")
    p.add_argument("--repeats", type=int, default=7)
    p.set_defaults(func=cmd_bench)
