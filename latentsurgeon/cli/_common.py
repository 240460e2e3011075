"""What every command shares: loading the user's model and data, the model arguments."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

import torch
from torch import nn

from latentsurgeon.errors import LatentSurgeonError


def load_object(spec: str) -> Any:
    """Import ``"package.module:attribute"``; call it (without arguments) if it is callable
    and not already a module instance. The current directory is importable."""
    if ":" not in spec:
        raise LatentSurgeonError(f"Expected 'module:function', got {spec!r}.")
    module_name, attr = spec.split(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LatentSurgeonError(f"Cannot import {module_name!r}: {exc}") from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise LatentSurgeonError(f"{module_name!r} has no attribute {attr!r}.") from None
    if callable(obj) and not isinstance(obj, nn.Module):
        obj = obj()
    return obj


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.replace("x", ",").split(",") if s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"A shape like 1,1,16,16 is expected, got {text!r}.") from None


def reference_model(args: argparse.Namespace) -> nn.Module:
    from latentsurgeon.models import DigitCNN

    model = DigitCNN()
    if getattr(args, "weights", None):
        model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    return model


def user_model(args: argparse.Namespace) -> nn.Module:
    if args.model:
        model = load_object(args.model)
        if not isinstance(model, nn.Module):
            raise LatentSurgeonError(f"{args.model} gave a {type(model).__name__}, not an nn.Module.")
        return model
    return reference_model(args)


def bundled_data(name: str, seed: int) -> Any:
    from latentsurgeon.data import decoy_digits

    kind = {"decoy-watermark": "watermark", "decoy-swatch": "swatch"}[name]
    return decoy_digits(kind, seed=seed)


def analysed_model(args: argparse.Namespace, data: Any) -> nn.Module:
    """The user's model, the reference CNN with given weights, or a freshly trained one."""
    if args.model or args.weights:
        return user_model(args)
    from latentsurgeon.models import DigitCNN, train_classifier

    print(f"No --model/--weights given: training the reference DigitCNN on the {data.kind} "
          f"decoy digits (seed {args.seed}, {args.epochs} epochs) ...")
    torch.manual_seed(args.seed)
    model = DigitCNN()
    train_classifier(model, data.train, epochs=args.epochs, seed=args.seed,
                     progress=not args.quiet)
    return model



def model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="'module:function' returning an nn.Module "
                                   "(default: the reference DigitCNN)")
    p.add_argument("--weights", help="state_dict file for the reference DigitCNN")


def bundled_model_args(p: argparse.ArgumentParser) -> None:
    model_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=15,
                   help="epochs when the reference model is trained here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
