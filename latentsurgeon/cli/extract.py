"""`latentsurgeon extract`: stream layer activations over a dataset into an ActivationStore."""

from __future__ import annotations

import argparse
from typing import Any

from torch import nn

from latentsurgeon.cli._common import (
    analysed_model,
    data_args,
    load_data,
    model_args,
    output_folder,
    pooling_arg,
    run_args,
    split_of,
)


def cmd_extract(args: argparse.Namespace) -> int:
    from latentsurgeon.activations import ActivationStore

    data = load_data(args.data, args.seed)
    split = split_of(data, args.split, what="extract")
    model = analysed_model(args, data)
    inputs = getattr(split, "images", split)
    layers = args.layers or [nn.Conv2d]
    store = ActivationStore.extract(model, inputs, layers, args.out, pooling=args.pooling,
                                    batch_size=args.batch_size, overwrite=args.overwrite,
                                    progress=not args.quiet)
    print(store.summary())
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("extract", help="stream layer activations over a dataset into a store")
    model_args(p)
    data_args(p)
    run_args(p)
    p.add_argument("--split", default="train",
                   help="which split of --data to extract (default train)")
    p.add_argument("--layers", nargs="+", metavar="SEL",
                   help="layer names, globs or re: regexes (default: every Conv2d)")
    pooling_arg(p)
    p.add_argument("--out", default="activations", type=output_folder, help="store directory (default activations)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a store at --out (atomically: the old one stays until the new "
                        "one is complete)")
    p.set_defaults(func=cmd_extract)
