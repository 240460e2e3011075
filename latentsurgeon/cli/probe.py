"""`latentsurgeon probe`: linear probes per layer for class or artifact labels."""

from __future__ import annotations

import argparse
from typing import Any

from torch import nn

from latentsurgeon.cli._common import (
    analysed_model,
    bundled_data,
    bundled_model_args,
)


def cmd_probe(args: argparse.Namespace) -> int:
    from latentsurgeon.concepts import probe_layers

    data = bundled_data(args.data, args.seed)
    model = analysed_model(args, data)
    split = data.train
    targets = split.labels if args.target == "labels" else split.artifact.long()
    report = probe_layers(model, split.images, targets, args.layers or [nn.Conv2d, nn.Linear],
                          pooling=args.pooling, seed=args.seed, progress=not args.quiet)
    print(f"Linear probes for {args.target!r} (held-out, {args.data}):")
    print(report.format())
    print(f"best layer: {report.best_layer}")
    if args.plot:
        import matplotlib.pyplot as plt

        fig = report.plot()
        fig = getattr(fig, "figure", fig)
        fig.savefig(args.plot, dpi=110, bbox_inches="tight")
        plt.close(fig)
        print(f"plot: {args.plot}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("probe", help="linear probes per layer for class or artifact labels")
    bundled_model_args(p)
    p.add_argument("--data", default="decoy-watermark", choices=["decoy-watermark", "decoy-swatch"])
    p.add_argument("--target", default="artifact", choices=["artifact", "labels"])
    p.add_argument("--layers", nargs="+", help="layer selectors (default: every Conv2d and Linear)")
    p.add_argument("--pooling", default="mean", choices=["max", "mean", "flatten"])
    p.add_argument("--plot", help="save the per-layer plot to this PNG file")
    p.set_defaults(func=cmd_probe)
