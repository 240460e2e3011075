"""`latentsurgeon cbm`: train a concept model and draw the intervention curves of every policy."""

from __future__ import annotations

import argparse
from typing import Any

from latentsurgeon.cli._common import count, finite_float, output_folder


def cmd_cbm(args: argparse.Namespace) -> int:
    from latentsurgeon.experiments import cbm

    settings = cbm.Settings(dataset=args.dataset, model=args.model, head_kind=args.task_head,
                            scheme=args.scheme, noise=args.noise, epochs=args.epochs)
    result = cbm.run(args.seeds, settings=settings, quick=args.quick, progress=not args.quiet)
    paths = result.write(args.out)
    print(result.headline[0])
    print(f"{'policy':<12} {'none':>6} {'25%':>6} {'50%':>6} {'all':>6} {'AUC':>6}")
    for policy, s in result.measurements()["policies"].items():
        print(f"{policy:<12} {s['task_none']:6.3f} {s['task_at_25']:6.3f} {s['task_at_50']:6.3f} "
              f"{s['task_all']:6.3f} {s['task_auc']:6.3f}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def register(sub: Any) -> None:
    from latentsurgeon.experiments.cbm import DATASETS

    p = sub.add_parser(
        "cbm", help="train a concept bottleneck/embedding model and plot intervention curves",
        description="Train a concept model per seed on a bundled concept data set, intervene "
                    "on 0..K concepts per test sample with every policy (uniform, random, "
                    "uncertainty, gradient) and write the curves as CSV, PNG, JSON and HTML.")
    p.add_argument("--dataset", default="xor", choices=list(DATASETS),
                   help="bundled concept data set (default: xor)")
    p.add_argument("--model", default="cbm", choices=["cbm", "cem"],
                   help="concept bottleneck model or concept embedding model (default: cbm)")
    p.add_argument("--out", default="latentsurgeon-cbm", type=output_folder,
                   help="output directory (default: latentsurgeon-cbm)")
    p.add_argument("--seeds", type=count(0), nargs="+", default=[0, 1, 2],
                   help="one run per seed; curves are averaged over them (default: 0 1 2)")
    p.add_argument("--task-head", "--head", dest="task_head", default="mlp",
                   choices=["linear", "mlp"],
                   help="task head on the concepts (default: mlp; --head is the earlier "
                        "spelling)")
    p.add_argument("--scheme", default="independent",
                   choices=["joint", "sequential", "independent"],
                   help="CBM training scheme (default: independent; CEM always trains jointly)")
    p.add_argument("--noise", type=finite_float, default=None,
                   help="std of Gaussian noise on the toy inputs (default: the data set's own)")
    p.add_argument("--epochs", type=count(1), default=None,
                   help="training epochs (default: 60, or 15 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: small toy data, 15 epochs, the first seed only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_cbm)
