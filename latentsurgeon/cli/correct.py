"""`latentsurgeon correct`: remove a shortcut with one correction method and measure the effect."""

from __future__ import annotations

import argparse
from typing import Any

from latentsurgeon.cli._common import (
    analysed_model,
    data_args,
    load_data,
    model_args,
    output_file,
    run_args,
    say,
    split_of,
)
from latentsurgeon.cli.verify import correction_path, measure, print_rows
from latentsurgeon.errors import InvalidParameterError

DEFAULT_LAYER = "features"  # the reference DigitCNN's conv block output


def _training_data(data: Any) -> Any:
    """What the corrections fit on: the bundled decoys' correction split (the watermark's fixed
    region as masks on every image), or the train split of ``--data``."""
    if callable(getattr(data, "correction_data", None)):
        return data.correction_data()
    return split_of(data, "train", what="correct")


def cmd_correct(args: argparse.Namespace) -> int:
    from latentsurgeon.correct import correction_entry

    entry = correction_entry(args.method)
    data = load_data(args.data, args.seed)
    model = analysed_model(args, data)
    training = _training_data(data)
    overrides: dict[str, Any] = {"progress": not args.quiet}
    if entry.takes_layer:
        layer = args.layer or (DEFAULT_LAYER if not args.model else None)
        if not layer:
            raise InvalidParameterError(
                f"--layer is needed with --model for {entry.name} (the layer whose output it "
                "corrects; see `latentsurgeon layers`).")
        overrides["layer"] = layer
    if "seed" in entry.parameters:
        overrides["seed"] = args.seed
    say(args, f"fitting {entry.name} ...")
    correction = entry.build(**overrides)
    fixed = correction.corrected(model, training)
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
    from latentsurgeon.correct.registry import REGISTRY

    p.add_argument("--method", default="p-clarc", choices=list(REGISTRY),
                   help="the correction (default p-clarc): "
                        + "; ".join(f"{e.name}: {e.summary}" for e in REGISTRY.values())
                        + ". Settings: latentsurgeon.correct.REGISTRY")
    p.add_argument("--layer", metavar="LAYER",
                   help=f"layer the ClArC methods act on (default for the reference CNN: "
                        f"{DEFAULT_LAYER})")
    p.add_argument("--save", metavar="FILE", type=output_file,
                   help="write the corrected model's state_dict here, and the correction beside "
                        "it (FILE stem + .correction.pt)")
    p.set_defaults(func=cmd_correct)

