"""`latentsurgeon demo`: the end-to-end demo on the bundled watermark digits."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from latentsurgeon.cli._common import count, output_folder
from latentsurgeon.demo_stages import STAGES


def cmd_demo(args: argparse.Namespace) -> int:
    from latentsurgeon.demo import DemoConfig, run_demo

    config = DemoConfig(out=Path(args.out), seed=args.seed, epochs=args.epochs,
                        progress=not args.quiet, stop_after=args.stage)
    run_demo(config, echo=print)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="the whole loop on the bundled watermark digits",
                       description="Train the reference CNN on digits with a planted watermark, "
                                   "reveal the shortcut, explain it, correct it with every "
                                   "method and verify each; writes report.html, results.json "
                                   "and the model's weights (model.pt).")
    p.add_argument("--out", default="latentsurgeon-report", type=output_folder,
                   help="output directory (default latentsurgeon-report)")
    p.add_argument("--seed", type=count(0), default=0, help="seed of data and training (default 0)")
    p.add_argument("--epochs", type=count(1), default=15,
                   help="training epochs of the reference CNN (default 15)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--stage", default="all", choices=list(STAGES),
                   help="stop after this stage (default: run everything)")
    p.set_defaults(func=cmd_demo)
