"""`latentsurgeon explain-experiment`: lfxai's experiments on bundled data, with a report."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from latentsurgeon.cli._common import output_folder, say

#: ``latentsurgeon.experiments.EXPERIMENTS``, spelled out so that building the parser does not
#: import the experiments (captum, scikit-learn: a second or more on every command's start);
#: tests/cli keeps the two equal.
NAMES = ("consistency-features", "consistency-examples", "roar", "pretext", "disvae")


def cmd_explain_experiment(args: argparse.Namespace) -> int:
    from latentsurgeon.experiments import run_experiment, run_experiments

    names = list(NAMES) if args.name == "all" else [args.name]
    _check_out(Path(args.out), names)
    if len(set(args.seeds)) != len(args.seeds):
        from latentsurgeon.errors import InvalidParameterError

        raise InvalidParameterError(
            "--seeds must be distinct (each seed is one run); got "
            f"{' '.join(map(str, args.seeds))}.")
    say(args, f"Running {', '.join(names)} over seeds {' '.join(map(str, args.seeds))}"
              f"{' (quick settings)' if args.quick else ''} ...")
    if args.name == "all":
        results = run_experiments("all", seeds=args.seeds, quick=args.quick, out=args.out,
                                  progress=not args.quiet, threads=args.threads)
        report = Path(args.out) / "report.html"
    else:
        results = [run_experiment(args.name, seeds=args.seeds, quick=args.quick, out=args.out,
                                  progress=not args.quiet, threads=args.threads)]
        report = Path(args.out) / args.name / "report.html"
    for result in results:
        print(result.summary())
        print(f"  time: {result.wall_seconds:.1f} s wall, {result.cpu_seconds:.1f} s CPU")
    print(f"report: {report}")
    print(f"tables and plots: {', '.join(str(Path(args.out) / r.name) for r in results)}")
    return 0


def _check_out(out: Path, names: list[str]) -> None:
    """Refuse an --out that cannot hold the folders before minutes of training are spent."""
    from latentsurgeon.errors import InvalidParameterError

    for folder in (out, *(out / name for name in names)):
        if folder.exists() and not folder.is_dir():
            raise InvalidParameterError(
                f"--out must be a folder (it gets NAME/ subfolders and report.html); {folder} "
                "is an existing file.")


def _threads(text: str) -> int | None:
    if text == "unchanged":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"--threads takes a positive integer or 'unchanged'; got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seed is an integer >= 0; got {text!r}")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser(
        "explain-experiment",
        help="run lfxai's label-free explanation experiments on bundled data, with a report",
        description="Run one of lfxai's experiments (Crabbe & van der Schaar 2022) on "
                    "scikit-learn's digits and generated heartbeats over several seeds: write "
                    "CSV tables, PNG plots and a self-contained HTML report, and print the "
                    "headline with 95% t-intervals over seeds.")
    p.add_argument("name", choices=[*NAMES, "all"],
                   help="the experiment: " + ", ".join(NAMES) + ", or all (every "
                        "experiment into one report)")
    p.add_argument("--out", default="explain-experiments", type=output_folder, metavar="DIR",
                   help="output folder: DIR/NAME/ holds the tables, plots and report of NAME; "
                        "with all, DIR/report.html holds every section (default "
                        "explain-experiments)")
    p.add_argument("--seeds", nargs="+", type=_seed, default=[0, 1, 2], metavar="SEED",
                   help="seeds; each draws its own data split, initialisation and training "
                        "(default 0 1 2; at least two for intervals)")
    p.add_argument("--quick", action="store_true",
                   help="CI-sized settings: small data, few epochs (seconds instead of minutes)")
    p.add_argument("--threads", type=_threads, default=1, metavar="N|unchanged",
                   help="torch threads during the run, restored afterwards (default 1: faster "
                        "for these small models on a shared CPU; 'unchanged' keeps torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or status lines")
    p.set_defaults(func=cmd_explain_experiment)
