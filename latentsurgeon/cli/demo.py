"""`latentsurgeon demo`: the end-to-end demo on the bundled watermark digits."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from latentsurgeon.demo_stages import STAGES


def cmd_demo(args: argparse.Namespace) -> int:
    from latentsurgeon.demo import DemoConfig, run_demo

    config = DemoConfig(out=Path(args.out), seed=args.seed, epochs=args.epochs,
                        progress=not args.quiet, stop_after=args.stage)
    run_demo(config, echo=print)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="reveal -> correct -> verify on the watermark decoy digits")
    p.add_argument("--out", default="latentsurgeon-report", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--stage", default="all", choices=list(STAGES),
                   help="stop after this stage (default: run everything)")
    p.set_defaults(func=cmd_demo)
