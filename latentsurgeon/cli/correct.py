"""`latentsurgeon correct`: remove a shortcut with one correction method and measure the effect."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from latentsurgeon.cli._common import (
    analysed_model,
    bundled_data,
    bundled_model_args,
)


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

    data = bundled_data("decoy-watermark", args.seed)
    model = analysed_model(args, data)
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


def register(sub: Any) -> None:
    p = sub.add_parser("correct", help="remove the watermark shortcut with one method")
    bundled_model_args(p)
    p.add_argument("--method", default="p-clarc",
                   choices=["p-clarc", "a-clarc", "rr-clarc", "rrr"])
    p.add_argument("--save", help="torch.save the corrected model (a plain module) here")
    p.set_defaults(func=cmd_correct)
