"""`latentsurgeon layers`: print a model's hookable layers with their output shapes."""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from latentsurgeon.cli._common import build_model, load_weights, model_args, parse_shape


def layer_table(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str, str, int]]:
    """``(name, class, output shape, own parameters)`` for every named module, in module order."""
    from latentsurgeon.activations.access import ModelAccess

    shapes = dict(ModelAccess(model).call_order(example, "*"))
    rows = []
    for name, module in model.named_modules():
        if not name:
            continue
        own = sum(p.numel() for p in module.parameters(recurse=False))
        rows.append((name, type(module).__name__, shapes.get(name, "(not run)"), own))
    return rows


def cmd_layers(args: argparse.Namespace) -> int:
    from latentsurgeon.errors import ShapeMismatchError

    model = build_model(args)
    if args.weights:
        load_weights(model, args.weights)
    example = torch.zeros(args.input_shape)
    try:
        rows = layer_table(model, example)
    except (RuntimeError, ShapeMismatchError) as exc:
        raise ShapeMismatchError(
            f"--input-shape {','.join(map(str, args.input_shape))} does not fit the model: "
            f"{str(exc).splitlines()[0]}") from exc
    width = max(len(r[0]) for r in rows) + 2
    print(f"{'layer':<{width}}{'type':<18}{'output shape':<24}params")
    for name, kind, shape, params in rows:
        print(f"{name:<{width}}{kind:<18}{shape:<24}{params}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("layers", help="print a model's hookable layers with output shapes")
    model_args(p, weights_help="optional state_dict for the model (shapes do not depend on it)")
    p.add_argument("--input-shape", type=parse_shape, default=(1, 1, 16, 16), metavar="N,C,H,W",
                   help="shape of an example input (default 1,1,16,16)")
    p.set_defaults(func=cmd_layers)
