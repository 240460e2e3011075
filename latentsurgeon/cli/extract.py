"""`latentsurgeon extract`: stream layer activations over a dataset into an ActivationStore."""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from latentsurgeon.cli._common import (
    bundled_data,
    load_object,
    model_args,
    user_model,
)


def cmd_extract(args: argparse.Namespace) -> int:
    from latentsurgeon.activations import ActivationStore

    if args.data in ("decoy-watermark", "decoy-swatch"):
        data = bundled_data(args.data, args.seed).train.images
    else:
        data = load_object(args.data)
    if args.model or args.weights:
        model = user_model(args)
    else:
        from latentsurgeon.models import DigitCNN, train_classifier

        print("No --model given: training the reference DigitCNN on the bundled data "
              f"(seed {args.seed}, {args.epochs} epochs)...")
        decoy = bundled_data(args.data if args.data.startswith("decoy") else "decoy-watermark",
                              args.seed)
        torch.manual_seed(args.seed)
        model = DigitCNN()
        train_classifier(model, decoy.train, epochs=args.epochs, seed=args.seed,
                         progress=not args.quiet)
    layers = args.layers or [nn.Conv2d]
    store = ActivationStore.extract(model, data, layers, args.out, pooling=args.pooling,
                                    batch_size=args.batch_size, overwrite=args.overwrite,
                                    progress=not args.quiet)
    print(store.summary())
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("extract", help="stream layer activations over a dataset into a store")
    model_args(p)
    p.add_argument("--data", default="decoy-watermark",
                   help="decoy-watermark | decoy-swatch | 'module:function' returning a tensor, "
                        "Dataset or DataLoader")
    p.add_argument("--layers", nargs="+", help="layer names/globs/re: (default: every Conv2d)")
    p.add_argument("--pooling", default="max", choices=["max", "mean", "flatten", "none"])
    p.add_argument("--out", default="activations", help="store directory")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_extract)

    def bundled_model_args(p: argparse.ArgumentParser) -> None:
        model_args(p)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--epochs", type=int, default=15,
                       help="epochs when the reference model is trained here")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
