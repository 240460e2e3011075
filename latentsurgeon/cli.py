"""Command line: ``latentsurgeon layers | extract | probe | tcav | correct | demo | bench``."""

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


# -- shared: the model to analyse ----------------------------------------------------------------
def _analysed_model(args: argparse.Namespace, data: Any) -> nn.Module:
    """The user's model, the reference CNN with given weights, or a freshly trained one."""
    if args.model or args.weights:
        return _model(args)
    from latentsurgeon.models import DigitCNN, train_classifier

    print(f"No --model/--weights given: training the reference DigitCNN on the {data.kind} "
          f"decoy digits (seed {args.seed}, {args.epochs} epochs) ...")
    torch.manual_seed(args.seed)
    model = DigitCNN()
    train_classifier(model, data.train, epochs=args.epochs, seed=args.seed,
                     progress=not args.quiet)
    return model


# -- probe -----------------------------------------------------------------------------------------
def cmd_probe(args: argparse.Namespace) -> int:
    from latentsurgeon.concepts import probe_layers

    data = _bundled_data(args.data, args.seed)
    model = _analysed_model(args, data)
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


# -- tcav ------------------------------------------------------------------------------------------
def cmd_tcav(args: argparse.Namespace) -> int:
    from latentsurgeon.concepts import tcav
    from latentsurgeon.data import watermark_concept_sets

    data = _bundled_data("decoy-watermark", args.seed)
    model = _analysed_model(args, data)
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


# -- correct ---------------------------------------------------------------------------------------
def cmd_correct(args: argparse.Namespace) -> int:
    import copy

    from latentsurgeon.correct import (
        AClarc,
        ExplanationRegularization,
        PClarc,
        RRClarc,
        default_settings,
    )
    from latentsurgeon.metrics import artifact_relevance, gap_closed, shortcut_gap

    data = _bundled_data("decoy-watermark", args.seed)
    model = _analysed_model(args, data)
    before = shortcut_gap(model, data.test, data.poisoned)
    fixed = copy.deepcopy(model)
    if args.method == "p-clarc":
        fixed = PClarc(**default_settings("pclarc"), progress=not args.quiet) \
            .fit(model, data.train).export(model)
    elif args.method == "a-clarc":
        AClarc(**default_settings("aclarc"), progress=not args.quiet).fit(fixed, data.train)
    elif args.method == "rr-clarc":
        RRClarc(**default_settings("rrclarc"), progress=not args.quiet).fit(fixed, data.train)
    else:
        ExplanationRegularization(**default_settings("rrr_finetune")).fit(
            fixed, data.train.images, data.train.labels, data.poisoned.masks[0])
    after = shortcut_gap(fixed, data.test, data.poisoned)
    split = data.poisoned
    rel = [float(artifact_relevance(m, split.images, split.masks, targets=split.labels))
           for m in (model, fixed)]
    print(f"{args.method}: clean {before['clean_acc']:.2%} -> {after['clean_acc']:.2%}, "
          f"poisoned {before['poisoned_acc']:.2%} -> {after['poisoned_acc']:.2%}, "
          f"gap closed {gap_closed(before, after):.0%}, artifact relevance "
          f"{rel[0]:.3f} -> {rel[1]:.3f}")
    if args.save:
        torch.save(fixed, args.save)
        print(f"corrected model saved to {args.save} (torch.save of the whole module, no hooks)")
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

    def bundled_model_args(p: argparse.ArgumentParser) -> None:
        model_args(p)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--epochs", type=int, default=15,
                       help="epochs when the reference model is trained here")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("probe", help="linear probes per layer for class or artifact labels")
    bundled_model_args(p)
    p.add_argument("--data", default="decoy-watermark", choices=["decoy-watermark", "decoy-swatch"])
    p.add_argument("--target", default="artifact", choices=["artifact", "labels"])
    p.add_argument("--layers", nargs="+", help="layer selectors (default: every Conv2d and Linear)")
    p.add_argument("--pooling", default="mean", choices=["max", "mean", "flatten"])
    p.add_argument("--plot", help="save the per-layer plot to this PNG file")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("tcav", help="TCAV of the watermark (or a random) concept, with p-values")
    bundled_model_args(p)
    p.add_argument("--layers", nargs="+", default=["features.0", "features.3", "features"])
    p.add_argument("--target-class", type=int, help="class whose logit is tested "
                                                    "(default: the shortcut class)")
    p.add_argument("--concept", default="watermark", choices=["watermark", "random"])
    p.add_argument("--runs", type=int, default=10, help="CAVs per concept")
    p.set_defaults(func=cmd_tcav)

    p = sub.add_parser("correct", help="remove the watermark shortcut with one method")
    bundled_model_args(p)
    p.add_argument("--method", default="p-clarc",
                   choices=["p-clarc", "a-clarc", "rr-clarc", "rrr"])
    p.add_argument("--save", help="torch.save the corrected model (a plain module) here")
    p.set_defaults(func=cmd_correct)

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
