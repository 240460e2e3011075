"""`latentsurgeon explain features|examples`: label-free feature importance and example importance
for a model (or one of its layers) on the user's data, written as .npy scores, image grids and an
HTML page."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path
from typing import Any

import torch

from latentsurgeon.cli._common import (
    analysed_model,
    count,
    data_args,
    finite_float,
    load_data,
    load_object,
    model_args,
    output_folder,
    run_args,
    split_of,
)
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.explain.features import FEATURE_METHODS
from latentsurgeon.explain.methods import METHODS, cli_name, method_from_cli

#: ``--method`` of ``explain features``: the table's names, spelled with hyphens.
FEATURE_CHOICES = tuple(cli_name(name) for name in FEATURE_METHODS)
#: ``--method`` of ``explain examples``: the table's names, spelled with hyphens.
EXAMPLE_METHODS = tuple(cli_name(name) for name in METHODS)
DEFAULT_LAYER = "classifier.1"  # the reference DigitCNN's first hidden layer


def _inputs(split: Any, n: int | None) -> torch.Tensor:
    images = getattr(split, "images", split)
    if not isinstance(images, torch.Tensor):
        raise InvalidParameterError(f"the --data split must hold an images tensor; got "
                                    f"{type(images).__name__}.")
    return images if n is None else images[:n]


def _layer(args: argparse.Namespace, *, required: bool) -> str | None:
    if args.layer:
        return args.layer
    if not args.model:
        return DEFAULT_LAYER
    if required:
        raise InvalidParameterError("--layer is needed with --model (the representation "
                                    "explained; see `latentsurgeon layers`).")
    return None


def _save_npy(path: Path, tensor: torch.Tensor) -> None:
    import numpy as np

    from latentsurgeon._io import atomic_write

    atomic_write(path, lambda handle: np.save(handle, tensor.detach().cpu().numpy()))


def cmd_features(args: argparse.Namespace) -> int:

    from latentsurgeon.explain import label_free_attribution
    from latentsurgeon.report import figures
    from latentsurgeon.report.html import HtmlReport

    data = load_data(args.data, args.seed)
    model = analysed_model(args, data)
    split = split_of(data, args.split, what="explain features")
    images = _inputs(split, args.n)
    layer = _layer(args, required=False)
    method = FEATURE_METHODS[args.method.replace("-", "_")].attribution
    # methods that compare with a reference (integrated gradients, GradientShap, DeepLift) get
    # the --baseline image; the others take none
    takes_baselines = "baselines" in inspect.signature(method.attribute).parameters
    attribution = label_free_attribution(
        model, images, method, layer=layer, batch_size=args.batch_size, seed=args.seed,
        baselines=torch.full_like(images[:1], args.baseline) if takes_baselines else None,
        progress=not args.quiet)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _save_npy(out / "attributions.npy", attribution)
    where = f"layer {layer}" if layer else "the model's output"
    print(f"label-free {args.method} of {where} for {len(images)} inputs of the "
          f"{args.split!r} split: {out / 'attributions.npy'} {tuple(attribution.shape)}")
    report = HtmlReport("Label-free feature importance",
                        f"{args.method} of the representation at {where} (g(x~) = <f(x~), f(x)>).")
    masks = getattr(split, "masks", None)
    if masks is not None and images.dim() == 4:
        masks = torch.as_tensor(masks)[:len(images)]
        magnitude = attribution.abs().flatten(1)
        area = masks.float().flatten(1)
        has = area.sum(1) > 0
        if bool(has.any()):
            inside = ((magnitude * area).sum(1) / magnitude.sum(1).clamp_min(1e-30))[has].mean()
            line = (f"share of the attribution inside the artifact masks: {float(inside):.1%} "
                    f"on {float(area[has].mean()):.1%} of the pixels ({int(has.sum())} inputs "
                    "with an artifact)")
            print(line)
            report.paragraph(line)
    if images.dim() == 4:
        shown = min(len(images), 16)
        report.figure(figures.attribution_rows(
            images[:shown], {args.method: attribution[:shown]},
            masks=None if masks is None else torch.as_tensor(masks)[:shown].bool()),
            "Inputs and the absolute attribution (artifact outlined where masks are known).",
            alt="attribution heatmaps")
    report.write(out / "report.html")
    print(f"report: {out / 'report.html'}")
    return 0


def cmd_examples(args: argparse.Namespace) -> int:
    from latentsurgeon._io import save_figure_atomic
    from latentsurgeon.explain import flagged_share
    from latentsurgeon.report import figures
    from latentsurgeon.report.html import HtmlReport

    layer = _layer(args, required=True)
    data = load_data(args.data, args.seed)
    model = analysed_model(args, data)
    train = split_of(data, "train", what="explain examples")
    test_split = split_of(data, args.split, what="explain examples")
    test = _inputs(test_split, args.n)
    if args.test_indices:
        test = _inputs(load_object(args.test_indices, "--test-inputs"), None)
    train_data = (train.images, train.labels) if args.loss == "cross_entropy" else train.images
    method = method_from_cli(args.method)
    explainer = method.build(
        layer, loss=args.loss, test_loss="predicted" if args.loss == "cross_entropy" else None,
        checkpoints=args.checkpoints or "current", damping=args.damping,
        batch_size=args.batch_size, progress=not args.quiet)
    scores = explainer.scores(model, train_data, test)
    top = method.top(scores, args.top)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _save_npy(out / "scores.npy", scores)
    _save_npy(out / "top.npy", top)
    print(f"{args.method} at {layer}: scores {tuple(scores.shape)} -> {out / 'scores.npy'}; "
          f"top {args.top} training examples per test input -> {out / 'top.npy'}")
    report = HtmlReport(f"Example importance: {args.method}",
                        f"The training examples each test input relies on most (layer {layer}).")
    artifact = getattr(train, "artifact", None)
    if artifact is not None:
        artifact = torch.as_tensor(artifact).bool()
        line = (f"artifact-carrying training examples among the top {args.top}: "
                f"{flagged_share(top, artifact):.1%} (base rate {float(artifact.float().mean()):.1%})")
        print(line)
        report.paragraph(line)
    if test.dim() == 4:
        rows = min(len(test), 6)
        images = torch.cat([torch.cat([test[i:i + 1], train.images[top[i]]]) for i in range(rows)])
        labels = getattr(train, "labels", None)
        titles = []
        for i in range(rows):
            titles.append("test")
            titles += [f"#{int(t)}" + (f" y={int(labels[t])}" if labels is not None else "")
                       for t in top[i]]
        masks = getattr(train, "masks", None)
        grid_masks = None
        if masks is not None:
            masks = torch.as_tensor(masks).bool()
            blank = torch.zeros_like(masks[:1])
            grid_masks = torch.cat([torch.cat([blank, masks[top[i]]]) for i in range(rows)])
        fig = figures.image_grid(images, titles, masks=grid_masks, ncols=args.top + 1)
        save_figure_atomic(fig, out / "top_examples.png", close=False)  # the report closes it
        report.figure(fig, "Each row: a test input, then its top training examples (artifact "
                           "outlined where known).", alt="top examples")
        print(f"image grid: {out / 'top_examples.png'}")
    report.write(out / "report.html")
    print(f"report: {out / 'report.html'}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("explain", help="label-free feature importance or example importance")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="features|examples")

    f = kinds.add_parser("features", help="which input features shape a representation")
    model_args(f)
    data_args(f)
    run_args(f)
    f.add_argument("--layer", metavar="LAYER",
                   help="the layer whose output is the representation (default: "
                        f"{DEFAULT_LAYER} for the reference CNN, the model's output otherwise)")
    f.add_argument("--method", default="integrated-gradients", choices=list(FEATURE_CHOICES),
                   help="captum attribution method (default integrated-gradients)")
    f.add_argument("--baseline", type=finite_float, default=0.0, metavar="VALUE",
                   help="the reference image of the methods that compare with one (integrated "
                        "gradients, GradientShap, DeepLift): every pixel VALUE (default 0.0, "
                        "black, as lfxai)")
    f.add_argument("--split", default="test", help="split of --data to explain (default test)")
    f.add_argument("--n", type=count(1), default=64, help="how many inputs (default 64)")
    f.add_argument("--out", default="explain-features", type=output_folder, help="output folder")
    f.set_defaults(func=cmd_features)

    e = kinds.add_parser("examples", help="which training examples a representation relies on")
    model_args(e)
    data_args(e)
    run_args(e)
    e.add_argument("--layer", metavar="LAYER",
                   help=f"representation (nearest neighbours, SimplEx) or parameters (TracIn, "
                        f"influence) (default {DEFAULT_LAYER} for the reference CNN)")
    e.add_argument("--method", default="tracin-normalized", choices=list(EXAMPLE_METHODS),
                   help="example-importance method (default tracin-normalized): "
                        + "; ".join(f"{cli_name(m.name)}: {m.description}"
                                    for m in METHODS.values()))
    e.add_argument("--loss", default="cross_entropy", choices=["cross_entropy", "reconstruction"],
                   help="loss of TracIn/influence: cross-entropy (training labels; test inputs "
                        "with their predicted class) or an autoencoder's reconstruction")
    e.add_argument("--checkpoints", metavar="DIR",
                   help="TracIn's checkpoints (a folder of epoch_*.pt; default: the weights)")
    e.add_argument("--damping", type=finite_float, default=0.01, help="influence functions' damping")
    e.add_argument("--split", default="test", help="split whose inputs are explained "
                                                   "(default test; poisoned for the decoys)")
    e.add_argument("--test-inputs", dest="test_indices", metavar="PKG.MOD:FN",
                   help="a function returning the test inputs instead of --split")
    e.add_argument("--n", type=count(1), default=64, help="how many test inputs (default 64)")
    e.add_argument("--top", type=count(1), default=8, help="training examples per test input")
    e.add_argument("--out", default="explain-examples", type=output_folder, help="output folder")
    e.set_defaults(func=cmd_examples)
