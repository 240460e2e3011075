"""`latentsurgeon tcav`: TCAV of a concept for a class, with a random-concept control and p-values."""

from __future__ import annotations

import argparse
from typing import Any

from latentsurgeon.cli._common import (
    analysed_model,
    bundled_data,
    bundled_model_args,
)


def cmd_tcav(args: argparse.Namespace) -> int:
    from latentsurgeon.concepts import tcav
    from latentsurgeon.data import watermark_concept_sets

    data = bundled_data("decoy-watermark", args.seed)
    model = analysed_model(args, data)
    target = data.shortcut_class if args.target_class is None else args.target_class
    sets = watermark_concept_sets(data, seed=args.seed)
    concept = sets.concept if args.concept == "watermark" else sets.random_concept
    inputs = data.test.images[data.test.labels == target]
    print(f"TCAV of the {args.concept!r} concept for class {target} ({args.runs} CAVs per run):")
    for layer in args.layers:
        result = tcav(model, layer, inputs, target, concept, sets.random_pool, n_runs=args.runs,
                      seed=args.seed, progress=not args.quiet)
        print(f"  {layer:<14} score {result.mean:.3f} +- {result.std:.3f}  "
              f"random {result.random_mean:.3f}  p = {result.p_value:.3g}  "
              f"{'significant' if result.significant else 'not significant'}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("tcav", help="TCAV of the watermark (or a random) concept, with p-values")
    bundled_model_args(p)
    p.add_argument("--layers", nargs="+", default=["features.0", "features.3", "features"])
    p.add_argument("--target-class", type=int, help="class whose logit is tested "
                                                    "(default: the shortcut class)")
    p.add_argument("--concept", default="watermark", choices=["watermark", "random"])
    p.add_argument("--runs", type=int, default=10, help="CAVs per concept")
    p.set_defaults(func=cmd_tcav)
