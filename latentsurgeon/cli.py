"""Command line: ``latentsurgeon layers | extract | demo | probe | tcav | correct | bench``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentsurgeon.demo_stages import STAGES
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


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.replace("x", ",").split(",") if s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"A shape like 1,1,16,16 is expected, got {text!r}.") from None


def _reference_model(args: argparse.Namespace) -> nn.Module:
    from latentsurgeon.models import DigitCNN

    model = DigitCNN()
    if getattr(args, "weights", None):
        model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    return model


def _model(args: argparse.Namespace) -> nn.Module:
    if args.model:
        model = load_object(args.model)
        if not isinstance(model, nn.Module):
            raise LatentSurgeonError(f"{args.model} gave a {type(model).__name__}, not an nn.Module.")
        return model
    return _reference_model(args)


# -- layers ----------------------------------------------------------------------------------------
def layer_table(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str, str, int]]:
    """``(name, class, output shape, own parameters)`` for every named module, in module order."""
    from latentsurgeon.hooks import HookGroup, preserve_model_state

    shapes: dict[str, str] = {}

    def record(name: str, module: nn.Module, inputs: tuple, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            shapes[name] = str(tuple(output.shape))
        elif isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            shapes[name] = f"{tuple(output[0].shape)} (+{len(output) - 1} more)"
        else:
            shapes.setdefault(name, type(output).__name__)

    with preserve_model_state(model), HookGroup() as group, torch.no_grad():
        model.eval()
        group.forward(model, "*", record)
        model(example)
    rows = []
    for name, module in model.named_modules():
        if not name:
            continue
        own = sum(p.numel() for p in module.parameters(recurse=False))
        rows.append((name, type(module).__name__, shapes.get(name, "(not run)"), own))
    return rows


def cmd_layers(args: argparse.Namespace) -> int:
    model = _model(args)
    example = torch.zeros(args.input_shape)
    rows = layer_table(model, example)
    width = max(len(r[0]) for r in rows) + 2
    print(f"{'layer':<{width}}{'type':<18}{'output shape':<24}params")
    for name, kind, shape, params in rows:
        print(f"{name:<{width}}{kind:<18}{shape:<24}{params}")
    return 0


# -- extract ---------------------------------------------------------------------------------------
def _bundled_data(name: str, seed: int) -> Any:
    from latentsurgeon.data import decoy_digits

    kind = {"decoy-watermark": "watermark", "decoy-swatch": "swatch"}[name]
    return decoy_digits(kind, seed=seed)


def cmd_extract(args: argparse.Namespace) -> int:
    from latentsurgeon.activations import ActivationStore

    if args.data in ("decoy-watermark", "decoy-swatch"):
        data = _bundled_data(args.data, args.seed).train.images
    else:
        data = load_object(args.data)
    if args.model or args.weights:
        model = _model(args)
    else:
        from latentsurgeon.models import DigitCNN, train_classifier

        print("No --model given: training the reference DigitCNN on the bundled data "
              f"(seed {args.seed}, {args.epochs} epochs)...")
        decoy = _bundled_data(args.data if args.data.startswith("decoy") else "decoy-watermark",
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


# -- demo ------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from latentsurgeon.demo import DemoConfig, run_demo

    config = DemoConfig(out=Path(args.out), seed=args.seed, epochs=args.epochs,
                        progress=not args.quiet, stop_after=args.stage)
    run_demo(config, echo=print)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "runner.py").exists():
        raise LatentSurgeonError("`latentsurgeon bench` runs from a source checkout (bench/ is "
                                 "not part of the installed package).")
    sys.path.insert(0, str(root))
    from bench.__main__ import main as bench_main

    bench_main([args.name, "--repeats", str(args.repeats)])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentsurgeon",
        description="Reveal, explain, correct and verify what a PyTorch model learned.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", help="'module:function' returning an nn.Module "
                                       "(default: the reference DigitCNN)")
        p.add_argument("--weights", help="state_dict file for the reference DigitCNN")

    p = sub.add_parser("layers", help="print a model's hookable layers with output shapes")
    model_args(p)
    p.add_argument("--input-shape", type=_parse_shape, default=(1, 1, 16, 16),
                   help="example input shape (default 1,1,16,16)")
    p.set_defaults(func=cmd_layers)

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

    p = sub.add_parser("demo", help="reveal -> correct -> verify on the watermark decoy digits")
    p.add_argument("--out", default="latentsurgeon-report", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--stage", default="all", choices=list(STAGES),
                   help="stop after this stage (default: run everything)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="run a side-by-side benchmark (from a source checkout)")
    p.add_argument("name")
    p.add_argument("--repeats", type=int, default=7)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except LatentSurgeonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
