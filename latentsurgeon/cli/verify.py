"""`latentsurgeon verify`: compare two checkpoints on clean and poisoned data (accuracy, the share of
the shortcut gap closed, artifact relevance) and issue the reliance certificate of the corrected
one (``latentsurgeon.verify``); ``--require removed|reduced`` makes it a CI gate: exit code 3 when
the verdict falls short (2 is a usage or input error, as for every command)."""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from latentsurgeon.activations.fingerprint import model_fingerprint
from latentsurgeon.cli._common import (
    build_model,
    count,
    data_args,
    load_data,
    load_weights,
    model_args,
    output_file,
    run_args,
    split_of,
)
from latentsurgeon.errors import LatentSurgeonError, ModelMismatchError


def correction_path(weights: str | Path) -> Path:
    """Where ``correct --save W`` puts the correction beside the weights ``W``."""
    weights = Path(weights)
    return weights.with_name(weights.stem + ".correction" + (weights.suffix or ".pt"))


def load_correction(path: str | Path) -> Any:
    """A correction saved with ``save()``, whichever class it is (the one load,
    :meth:`Estimator.load <latentsurgeon._estimator.Estimator.load>`); errors name
    ``--correction``."""
    from latentsurgeon._estimator import Estimator
    from latentsurgeon.correct import Correction

    try:
        loaded = Estimator.load(path)
    except LatentSurgeonError as exc:
        raise LatentSurgeonError(f"--correction: {exc}") from exc
    if not isinstance(loaded, Correction):
        raise LatentSurgeonError(
            f"--correction: {path} is not a saved latentsurgeon correction (it holds a "
            f"{type(loaded).__name__}).")
    return loaded


def measure(models: dict[str, nn.Module], data: Any, *, batch_size: int) -> dict[str, dict]:
    """Clean/poisoned accuracy, gap closed (relative to the first model) and artifact relevance of
    the shortcut class (when the data know it and the poisoned split has masks)."""
    from latentsurgeon.metrics import artifact_relevance, gap_closed, shortcut_gap

    test = split_of(data, "test", what="verify")
    poisoned = split_of(data, "poisoned", what="verify")
    masks = getattr(poisoned, "masks", None)
    target = getattr(data, "shortcut_class", None)
    rows: dict[str, dict] = {}
    for name, model in models.items():
        row: dict[str, Any] = dict(shortcut_gap(model, test, poisoned, batch_size=batch_size))
        if masks is not None:
            row["artifact_relevance"] = float(artifact_relevance(
                model, poisoned.images, masks,
                target=int(target) if target is not None else poisoned.labels))
        rows[name] = row
    first = next(iter(rows.values()))
    for row in rows.values():
        row["gap_closed"] = gap_closed(first, row)
    return rows


def print_rows(rows: dict[str, dict]) -> None:
    print(f"  {'model':<12} {'clean':>7} {'poisoned':>9} {'gap':>7} {'gap closed':>11} "
          f"{'artifact relevance':>19}")
    for name, row in rows.items():
        rel = row.get("artifact_relevance")
        rel_text = f"{rel:19.3f}" if rel is not None else f"{'-':>19}"
        closed = row["gap_closed"]
        closed_text = f"{closed:11.0%}" if closed == closed else f"{'-':>11}"
        print(f"  {name:<12} {row['clean_acc']:7.2%} {row['poisoned_acc']:9.2%} "
              f"{100 * row['gap']:6.1f}p {closed_text} {rel_text}")


def _corrected_model(before: nn.Module, correction: Any, args: argparse.Namespace) -> nn.Module:
    """``--corrected`` loaded into the right architecture, checked against the correction: a
    correction that trains must find its fine-tuned weights in ``--corrected``; a P-ClArC file
    must have been fitted on ``--weights``, and ``--corrected`` must be its export of them."""
    allow = bool(args.allow_other_weights)
    if correction is None or correction.modifies_weights:
        after = load_weights(copy.deepcopy(before), args.corrected, "--corrected")
        if correction is not None:
            correction.check_weights(after, allow_other_weights=allow)
        return after
    exported = correction.export(before, allow_other_weights=allow)
    expected = model_fingerprint(exported)
    after = load_weights(exported, args.corrected, "--corrected")
    if model_fingerprint(after) != expected:
        message = (f"--corrected: {args.corrected} is not the export of the correction on "
                   f"--weights {args.weights} (its weights differ from export(model)'s); "
                   "pass the pair `correct --save` wrote, or --allow-other-weights to compare "
                   "anyway.")
        if not allow:
            raise ModelMismatchError(message)
        warnings.warn(message, UserWarning, stacklevel=2)
    return after


#: Exit code when the certificate's verdict falls short of ``--require``.
EXIT_SHORT = 3


def shortcut_class(data: Any, args: argparse.Namespace) -> int | None:
    """The class the certificate tests: ``--target``, else the data's own; ``--require``
    without either is refused (before any work)."""
    target = args.target if args.target is not None else getattr(data, "shortcut_class", None)
    if target is None and args.require:
        raise LatentSurgeonError(
            "--require: the certificate needs the shortcut class; --data names none, so pass "
            "--target CLASS.")
    return target


def certificate_of(before: nn.Module, after: nn.Module, data: Any, correction: Any,
                   args: argparse.Namespace) -> Any:
    """The certificate of ``after`` with ``before`` as the reference; None when the data name no
    shortcut class and ``--target`` is not given (nothing to certify against)."""
    from latentsurgeon.verify import certify, neighbour_layers

    target = shortcut_class(data, args)
    if target is None:
        return None
    test = split_of(data, "test", what="verify")
    poisoned = split_of(data, "poisoned", what="verify")
    corrected_layers = getattr(correction, "layers_", None) if correction is not None else None
    layers = None if args.no_concept or not corrected_layers else \
        neighbour_layers(after, corrected_layers[0])
    return certify(after, test, poisoned, target=int(target), reference=before, layers=layers,
                   n_boot=args.n_boot, seed=args.seed, batch_size=args.batch_size,
                   progress=not args.quiet)


def cmd_verify(args: argparse.Namespace) -> int:
    data = load_data(args.data, args.seed)
    if not args.weights:
        raise LatentSurgeonError("verify needs --weights (the uncorrected model's state_dict).")
    shortcut_class(data, args)
    before = load_weights(build_model(args), args.weights)
    correction_file = args.correction or (correction_path(args.corrected)
                                          if correction_path(args.corrected).exists() else None)
    correction = load_correction(correction_file) if correction_file else None
    after = _corrected_model(before, correction, args)
    rows = measure({"before": before, "after": after}, data, batch_size=args.batch_size)
    print_rows(rows)
    certificate = certificate_of(before, after, data, correction, args)
    if certificate is not None:
        print("certificate of --corrected (reference: --weights):")
        print("  " + certificate.summary().replace("\n", "\n  "))
    if args.json:
        from latentsurgeon._io import write_json_atomic

        out = dict(rows)
        if certificate is not None:
            out["certificate"] = certificate.to_dict()
        write_json_atomic(args.json, out, sort_keys=False)
        print(f"results: {args.json}")
    if args.require and not certificate.meets(args.require):
        print(f"verdict {certificate.verdict!r} falls short of --require {args.require}",
              file=sys.stderr)
        return EXIT_SHORT
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("verify", help="compare an uncorrected and a corrected checkpoint",
                       description="Clean vs poisoned accuracy, share of the shortcut gap closed "
                                   "and artifact relevance of two checkpoints of one model.")
    model_args(p, weights_help="state_dict of the uncorrected model")
    data_args(p)
    run_args(p)
    p.add_argument("--corrected", required=True, metavar="FILE",
                   help="state_dict written by `latentsurgeon correct --save FILE`")
    p.add_argument("--correction", metavar="FILE",
                   help="the correction file (default: FILE.correction.pt beside --corrected, "
                        "written by correct --save; needed for P-ClArC, whose exported model "
                        "carries the projection as a submodule)")
    p.add_argument("--json", metavar="FILE", type=output_file, help="also write the results as JSON")
    p.add_argument("--target", type=count(0), default=None, metavar="CLASS",
                   help="the shortcut class the certificate tests (default: the data's own)")
    p.add_argument("--require", choices=("removed", "reduced"), default=None,
                   help="exit with code 3 unless the certificate's verdict is at least this "
                        "(removed > reduced > not removed): a model audit as a CI gate")
    p.add_argument("--n-boot", type=count(10), default=1000, metavar="N",
                   help="bootstrap resamples of every figure's interval (default 1000)")
    p.add_argument("--no-concept", action="store_true",
                   help="skip the concept tests (TCAV and CAV accuracy at the corrected layer "
                        "and its neighbours)")
    p.add_argument("--allow-other-weights", action="store_true",
                   help="warn instead of refusing when the correction was fitted on other "
                        "weights than --weights / --corrected hold")
    p.set_defaults(func=cmd_verify)
