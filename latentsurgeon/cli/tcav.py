"""`latentsurgeon tcav`: TCAV of a concept for a class, with a random-concept control and p-values."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from latentsurgeon.cli._common import (
    analysed_model,
    count,
    data_args,
    load_data,
    load_object,
    model_args,
    output_file,
    run_args,
    split_of,
)
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError

DEFAULT_LAYERS = ["features.0", "features.3", "features"]  # the reference DigitCNN's


def _inputs(value: Any, what: str) -> torch.Tensor:
    tensor = getattr(value, "images", value)
    if isinstance(tensor, (tuple, list)):
        tensor = tensor[0]
    if not isinstance(tensor, torch.Tensor):
        raise LatentSurgeonError(f"{what} must give a tensor of inputs, got {type(value).__name__}.")
    return tensor


def _rows_in(rows: torch.Tensor, among: torch.Tensor) -> torch.Tensor:
    """``(len(rows),)`` bool: which rows are exactly equal to a row of ``among``."""
    if len(among) == 0 or rows.shape[1:] != among.shape[1:]:
        return torch.zeros(len(rows), dtype=torch.bool)
    flat, other = rows.reshape(len(rows), -1), among.reshape(len(among), -1)
    found = torch.zeros(len(rows), dtype=torch.bool)
    for start in range(0, len(other), 256):  # (rows x 256) comparisons at a time
        block = other[start:start + 256]
        found |= (flat[:, None, :] == block[None]).all(-1).any(1)
    return found


def default_random_pool(data: Any, concept: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The train split without the concept's own examples, and how many were left out.

    Random CAVs drawn from a pool that holds the concept see the concept too, and TCAV's control
    then hides a real effect (ResNet-18 on patched digits: p = 0.175 against p = 0.00024 with a
    clean pool). So the split's artifact-flagged samples and any exact copy of a concept input
    are left out; a split without artifact flags cannot be cleaned and is refused, saying how to
    pass a clean pool.
    """
    split = split_of(data, "train", what="tcav's random inputs")
    images = _inputs(split, "--data train")
    artifact = getattr(split, "artifact", None)
    if artifact is None:
        raise InvalidParameterError(
            "tcav's default random pool is the --data train split, but that split carries no "
            "artifact flags, so the concept's own examples (e.g. the patched images) cannot be "
            "left out of it, and random CAVs that see the concept hide its effect. Pass "
            "--random PKG.MOD:FN returning concept-free inputs, or give the train split an "
            "'artifact' field (1 where a sample carries the concept) to have them left out.")
    flags = torch.as_tensor(artifact).reshape(-1).bool()
    if len(flags) != len(images):
        raise LatentSurgeonError(
            f"--data train: {len(flags)} artifact flags for {len(images)} inputs; they must "
            "match one to one.")
    keep = ~flags & ~_rows_in(images, concept)
    if int(keep.sum()) < 2:
        raise InvalidParameterError(
            f"tcav's default random pool: only {int(keep.sum())} of the {len(images)} train "
            "inputs are free of the concept; pass --random PKG.MOD:FN returning concept-free "
            "inputs.")
    return images[keep], int((~keep).sum())


def concept_sets(args: argparse.Namespace, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(concept inputs, random pool)`` for ``--concept`` and ``--random``."""
    if args.concept in ("watermark", "random"):
        if args.data != "decoy-watermark":
            raise InvalidParameterError(
                f"--concept {args.concept} is built from the bundled watermark digits; with "
                f"--data {args.data} pass --concept PKG.MOD:FN returning concept example inputs.")
        from latentsurgeon.data import watermark_concept_sets

        sets = watermark_concept_sets(data, seed=args.seed)
        concept = sets.concept if args.concept == "watermark" else sets.random_concept
        pool = sets.random_pool
    else:
        concept = _inputs(load_object(args.concept, "--concept"), "--concept")
        pool = None
    if args.random:
        pool = _inputs(load_object(args.random, "--random"), "--random")
    elif pool is None:
        pool, left_out = default_random_pool(data, concept)
        if not getattr(args, "quiet", False):
            print(f"random pool: the train split without the concept's examples ({len(pool)} "
                  f"inputs, {left_out} left out)")
    return concept, pool


def cmd_tcav(args: argparse.Namespace) -> int:
    from latentsurgeon.concepts import tcav

    data = load_data(args.data, args.seed)
    model = analysed_model(args, data)
    target = args.target
    if target is None:
        if not hasattr(data, "shortcut_class"):
            raise InvalidParameterError("--target CLASS is needed (the class whose logit is "
                                        "tested); only the bundled decoys know their shortcut "
                                        "class.")
        target = int(data.shortcut_class)
    layers = args.layers or (DEFAULT_LAYERS if not args.model else None)
    if not layers:
        raise InvalidParameterError("--layers is needed with --model (see `latentsurgeon layers`).")
    split = split_of(data, args.split, what="tcav")
    labels = getattr(split, "labels", None)
    if labels is None:
        raise LatentSurgeonError(f"tcav needs labels in the {args.split!r} split to pick the "
                                 "class inputs.")
    inputs = split.images[torch.as_tensor(labels) == target]
    if len(inputs) == 0:
        present = sorted(torch.unique(torch.as_tensor(labels)).tolist())
        raise InvalidParameterError(
            f"--target {target}: no input of class {target} in the {args.split!r} split (its "
            f"classes are {present}).")
    concept, pool = concept_sets(args, data)
    print(f"TCAV of the {args.concept!r} concept for class {target} ({args.runs} CAVs per layer, "
          f"pooling {args.pooling}):")
    rows = []
    for layer in layers:
        result = tcav(model, layer, inputs, target, concept, random=pool, n_runs=args.runs,
                      pooling=args.pooling, seed=args.seed, batch_size=args.batch_size,
                      progress=not args.quiet)
        rows.append(result.to_dict())
        print(f"  {layer:<14} score {result.mean:.3f} +- {result.std:.3f}  "
              f"random {result.random_mean:.3f}  p = {result.p_value:.3g}  "
              f"{'significant' if result.significant else 'not significant'}")
    if args.json:
        from latentsurgeon._io import write_json_atomic

        write_json_atomic(args.json, {"target": target, "concept": args.concept, "layers": rows},
                          sort_keys=False)
        print(f"results: {args.json}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("tcav", help="TCAV of a concept for a class, with p-values and a control")
    model_args(p)
    data_args(p)
    run_args(p)
    p.add_argument("--layers", nargs="+", metavar="LAYER",
                   help=f"layers to test (default for the reference CNN: {' '.join(DEFAULT_LAYERS)})")
    p.add_argument("--target", "--target-class", dest="target", type=int, metavar="CLASS",
                   help="class whose logit is tested (default: the decoy data's shortcut class)")
    p.add_argument("--split", default="test", help="split whose class inputs are tested "
                                                   "(default test)")
    p.add_argument("--concept", default="watermark", metavar="watermark|random|PKG.MOD:FN",
                   help="the concept's example inputs: the bundled watermark, a random control "
                        "concept, or a function returning your concept inputs")
    p.add_argument("--random", metavar="PKG.MOD:FN",
                   help="a function returning the inputs random sets are drawn from, free of "
                        "the concept (default: the bundled random pool, or your train split "
                        "without its artifact-flagged samples and copies of the concept inputs; "
                        "a train split without artifact flags is refused)")
    p.add_argument("--runs", type=count(1), default=10, help="CAVs per concept (default 10)")
    p.add_argument("--pooling", default="flatten", choices=["flatten", "max", "mean"],
                   help="CAV space (default flatten, as Kim et al.)")
    p.add_argument("--json", metavar="FILE", type=output_file, help="also write the results as JSON")
    p.set_defaults(func=cmd_tcav)
