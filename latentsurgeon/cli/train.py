"""`latentsurgeon train`: train a classifier (the reference CNN or yours) and save its weights."""

from __future__ import annotations

import argparse
from typing import Any

from latentsurgeon.cli._common import (
    build_model,
    data_args,
    finite_float,
    load_data,
    model_args,
    output_file,
    run_args,
    say,
    split_of,
)


def cmd_train(args: argparse.Namespace) -> int:
    from latentsurgeon._io import torch_save_atomic
    from latentsurgeon.metrics import accuracy
    from latentsurgeon.models import train_classifier

    data = load_data(args.data, args.seed)
    train = split_of(data, "train", what="train")
    model = build_model(args)
    history = train_classifier(model, (train.images, train.labels), epochs=args.epochs,
                               lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                               progress=not args.quiet)
    torch_save_atomic(model.state_dict(), args.out)
    line = f"trained {type(model).__name__} for {history.epochs} epochs: loss " \
           f"{history.loss[-1]:.4f}, train accuracy {history.acc[-1]:.2%}"
    if hasattr(data, "test"):
        line += f", test accuracy {accuracy(model, data.test):.2%}"
    if hasattr(data, "poisoned"):
        line += f", poisoned {accuracy(model, data.poisoned):.2%}"
    print(line)
    say(args, f"weights: {args.out} (pass --weights {args.out})")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="train a classifier and save its state_dict",
                       description="Train the reference CNN (or --model) with cross-entropy on "
                                   "the train split of --data and save its state_dict.")
    model_args(p, weights_help=argparse.SUPPRESS)
    data_args(p)
    run_args(p)
    p.add_argument("--lr", type=finite_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--out", default="model.pt", type=output_file, help="where the state_dict goes (default model.pt)")
    p.set_defaults(func=cmd_train, weights=None)
