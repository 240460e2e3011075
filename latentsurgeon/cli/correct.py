"""`latentsurgeon correct`: remove a shortcut with one correction method and measure the effect."""

from __future__ import annotations

import argparse
import copy
from typing import Any

import torch

from latentsurgeon.cli._common import (
    analysed_model,
    data_args,
    load_data,
    model_args,
    need,
    run_args,
    say,
    split_of,
)
from latentsurgeon.cli.verify import correction_path, measure, print_rows
from latentsurgeon.errors import InvalidParameterError

METHODS = ("p-clarc", "a-clarc", "rr-clarc", "rrr")
DEFAULT_LAYER = "features"  # the reference DigitCNN's conv block output


def _masks(data: Any, train: Any) -> torch.Tensor:
    """RRR's shortcut region: the training split's masks, or (bundled watermark decoys, whose
    training masks mark only the watermarked images) the watermark's one fixed region."""
    poisoned = getattr(data, "poisoned", None)
    if getattr(data, "kind", None) == "watermark" and poisoned is not None:
        return poisoned.masks[0]
    return need(train, "masks", "rrr")


def cmd_correct(args: argparse.Namespace) -> int:
    from latentsurgeon.correct import (
        AClarc,
        ExplanationRegularization,
        PClarc,
        RRClarc,
        default_settings,
    )

    data = load_data(args.data, args.seed)
    model = analysed_model(args, data)
    train = split_of(data, "train", what="correct")
    layer = args.layer or (DEFAULT_LAYER if not args.model else None)
    if args.method != "rrr" and not layer:
        raise InvalidParameterError("--layer is needed with --model (the layer whose output the "
                                    "ClArC method corrects; see `latentsurgeon layers`).")
    progress = not args.quiet
    fixed = copy.deepcopy(model)
    say(args, f"fitting {args.method} ...")
    if args.method == "p-clarc":
        settings = {**default_settings("pclarc"), "layer": layer}
        correction = PClarc(**settings, progress=progress).fit(model, train)
        fixed = correction.export(model)
    elif args.method in ("a-clarc", "rr-clarc"):
        key, cls = ("aclarc", AClarc) if args.method == "a-clarc" else ("rrclarc", RRClarc)
        settings = {**default_settings(key), "layer": layer, "seed": args.seed}
        correction = cls(**settings, progress=progress).fit(fixed, train)
    else:
        settings = {**default_settings("rrr_finetune"), "progress": progress}
        correction = ExplanationRegularization(**settings).fit(
            fixed, train.images, train.labels, _masks(data, train))
    if hasattr(data, "test") and hasattr(data, "poisoned"):
        print_rows(measure({"before": model, "after": fixed}, data, batch_size=args.batch_size))
    else:
        say(args, "no test/poisoned splits in --data: nothing to measure")
    if args.save:
        from latentsurgeon._io import torch_save_atomic

        torch_save_atomic(fixed.state_dict(), args.save)
        extra = correction_path(args.save)
        correction.save(extra)
        print(f"corrected weights: {args.save}; the correction: {extra} "
              f"(verify with `latentsurgeon verify --weights <before> --corrected {args.save}`)")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("correct", help="remove a shortcut with one method and measure it")
    model_args(p)
    data_args(p)
    run_args(p)
    p.add_argument("--method", default="p-clarc", choices=METHODS,
                   help="the correction (default p-clarc); settings: correct.default_settings")
    p.add_argument("--layer", metavar="LAYER",
                   help=f"layer the ClArC methods act on (default for the reference CNN: "
                        f"{DEFAULT_LAYER})")
    p.add_argument("--save", metavar="FILE",
                   help="write the corrected model's state_dict here, and the correction beside "
                        "it (FILE stem + .correction.pt)")
    p.set_defaults(func=cmd_correct)

