"""`latentsurgeon probe`: linear probes per layer for class or artifact labels."""

from __future__ import annotations

import argparse
from typing import Any

from torch import nn

from latentsurgeon.cli._common import (
    analysed_model,
    data_args,
    load_data,
    model_args,
    need,
    output_file,
    pooling_arg,
    run_args,
    split_of,
)


def cmd_probe(args: argparse.Namespace) -> int:
    from latentsurgeon.concepts import probe_layers

    data = load_data(args.data, args.seed)
    model = analysed_model(args, data)
    split = split_of(data, "train", what="probe")
    targets = need(split, "labels" if args.target == "labels" else "artifact", "probe").long()
    report = probe_layers(model, args.layers or [nn.Conv2d, nn.Linear], split.images, targets,
                          pooling=args.pooling, seed=args.seed, batch_size=args.batch_size,
                          progress=not args.quiet)
    print(f"Linear probes for {args.target!r} (held-out, {args.data}):")
    print(report.format())
    print(f"best layer: {report.best_layer}")
    if args.plot:
        from latentsurgeon._io import save_figure_atomic

        fig = report.plot()
        save_figure_atomic(getattr(fig, "figure", fig), args.plot)
        print(f"plot: {args.plot}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("probe", help="linear probes per layer for class or artifact labels")
    model_args(p)
    data_args(p)
    run_args(p)
    p.add_argument("--target", default="artifact", choices=["artifact", "labels"],
                   help="what the probes read: the artifact flags or the class labels")
    p.add_argument("--layers", nargs="+", metavar="SEL",
                   help="layer selectors (default: every Conv2d and Linear)")
    pooling_arg(p)
    p.add_argument("--plot", metavar="PNG", type=output_file, help="save the per-layer plot to this PNG file")
    p.set_defaults(func=cmd_probe)
