"""Run experiments by name: time them, write their CSV tables, plots and one HTML report."""

from __future__ import annotations

import datetime
import json
import logging
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from latentsurgeon import __version__
from latentsurgeon._io import write_json_atomic
from latentsurgeon._validation import Interval, validate_params
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.experiments import (
    consistency_examples,
    consistency_features,
    disvae,
    pretext,
    roar,
)
from latentsurgeon.experiments._base import (
    ExperimentResult,
    Section,
    check_seeds,
    torch_threads,
    write_csv,
)
from latentsurgeon.report.html import HtmlReport

__all__ = ["EXPERIMENTS", "run_experiment", "run_experiments"]

logger = logging.getLogger(__name__)

_MODULES: dict[str, ModuleType] = {
    module.NAME: module
    for module in (consistency_features, consistency_examples, roar, pretext, disvae)
}
#: The experiments, in the order ``all`` runs them.
EXPERIMENTS = tuple(_MODULES)


def _module(name: str) -> ModuleType:
    if name not in _MODULES:
        raise InvalidParameterError(
            f"name must be one of {', '.join(EXPERIMENTS)} (or 'all' for run_experiments); got "
            f"{name!r}.")
    return _MODULES[name]


def _check_threads(threads: int | None) -> None:
    validate_params({"threads": threads}, {"threads": [Interval(int, 1, None), None]},
                    owner="run_experiment")


def _check_out(out: str | Path | None, names: Sequence[str]) -> None:
    """Refuse an ``out`` that cannot hold the experiments' folders before any run starts (a run
    takes minutes; finding out after it is lost work)."""
    if out is None:
        return
    root = Path(out)
    for folder in (root, *(root / name for name in names)):
        if folder.exists() and not folder.is_dir():
            raise InvalidParameterError(
                f"out must be a folder (it gets one subfolder per experiment); {folder} is an "
                "existing file.")
    ancestor = next((p for p in (root, *root.parents) if p.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise InvalidParameterError(f"out must be a folder; {out} lies under the file {ancestor}.")


def _timed(name: str, seeds: tuple[int, ...], quick: bool, settings: Any, progress: bool,
           threads: int | None) -> ExperimentResult:
    module = _module(name)
    with torch_threads(threads):
        wall, cpu = time.perf_counter(), time.process_time()
        result = module.run(seeds, settings=settings, quick=quick, progress=progress)
        result.wall_seconds = time.perf_counter() - wall
        result.cpu_seconds = time.process_time() - cpu
    logger.info("%s: %.1f s wall, %.1f s CPU", name, result.wall_seconds, result.cpu_seconds)
    return result


def _write_files(result: ExperimentResult, folder: Path, report: HtmlReport) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for table, rows in result.records.items():
        result.files.append(write_csv(folder / f"{table}.csv", rows))
    _module(result.name).report(result, Section(report, folder, result.files))
    report.paragraph(
        f"Seeds {', '.join(map(str, result.seeds))}{' (quick settings)' if result.quick else ''}"
        f"; {result.wall_seconds:.1f} s wall, {result.cpu_seconds:.1f} s CPU. Settings: "
        f"{json.dumps(result.settings)}. Files: "
        f"{', '.join(p.name for p in result.files)} in {folder.name}/.")
    result.files.append(write_json_atomic(folder / "summary.json", _summary(result),
                                          sort_keys=False))


def _summary(result: ExperimentResult) -> dict[str, Any]:
    return {"name": result.name, "title": result.title, "claim": result.claim,
            "seeds": list(result.seeds), "quick": result.quick, "settings": result.settings,
            "headline": result.headline, "checks": result.checks, "holds": result.holds,
            "wall_seconds": result.wall_seconds, "cpu_seconds": result.cpu_seconds}


def _report(results: Sequence[ExperimentResult], threads: int | None) -> HtmlReport:
    title = (results[0].title if len(results) == 1
             else "lfxai's experiments on bundled data")
    report = HtmlReport(
        f"latentsurgeon: {title}",
        "Label-free explanations of unsupervised models (Crabbe & van der Schaar, ICML 2022), "
        "their consistency checks, ROAR, pretext-task sensitivity and disentangled VAEs, on "
        "scikit-learn's digits and generated heartbeats. Figures: mean over seeds with 95% "
        "t-intervals.")
    if len(results) > 1:
        report.heading("Summary")
        report.table(["experiment", "headline effects hold", "wall s", "CPU s"],
                     [[r.title, f"{sum(r.checks.values())} of {len(r.checks)}",
                       round(r.wall_seconds, 1), round(r.cpu_seconds, 1)] for r in results],
                     precision=1)
    return report


def _footer(report: HtmlReport, results: Sequence[ExperimentResult],
            threads: int | None) -> None:
    report.footer({
        "latentsurgeon": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "written": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seeds": ", ".join(map(str, results[0].seeds)),
        "settings": "quick" if results[0].quick else "default",
        "torch threads": "unchanged" if threads is None else threads,
        "time": "; ".join(f"{r.name} {r.wall_seconds:.1f} s wall, {r.cpu_seconds:.1f} s CPU"
                          for r in results),
    })


def run_experiment(
    name: str,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    quick: bool = False,
    settings: Any = None,
    out: str | Path | None = None,
    progress: bool = True,
    threads: int | None = 1,
) -> ExperimentResult:
    """Run one experiment over ``seeds``; with ``out``, write its files.

    Files (with ``out``): ``out/<name>/<table>.csv`` for every table of the result (per seed,
    and ``summary.csv`` with means and 95% t-intervals), ``out/<name>/*.png`` (the plots),
    ``out/<name>/summary.json`` (headline, checks, settings, times) and
    ``out/<name>/report.html``, a self-contained report.

    Args:
        name: one of :data:`EXPERIMENTS`.
        seeds: distinct ints >= 0; each seed draws its own data split, initialisation and
            training (at least two for intervals).
        quick: the CI-sized settings (each experiment's ``Settings.quick()``).
        settings: the experiment module's ``Settings`` (overrides ``quick``).
        out: the output folder; None writes nothing.
        progress: tqdm bars over seeds and models.
        threads: torch's intra-op threads during the run (the caller's count is restored
            after); None leaves them as they are. The default, 1, is measured to be faster
            for these small models on a shared 2-core machine (``docs/experiments.md``).

    Returns:
        The experiment's result (:class:`~latentsurgeon.experiments.ExperimentResult`
        subclass), with ``wall_seconds``, ``cpu_seconds`` and ``files`` filled.
    """
    _module(name)
    seeds = check_seeds(seeds)
    _check_threads(threads)
    _check_out(out, [name])
    result = _timed(name, seeds, quick, settings, progress, threads)
    if out is not None:
        folder = Path(out) / name
        report = _report([result], threads)
        _write_files(result, folder, report)
        _footer(report, [result], threads)
        result.files.append(report.write(folder / "report.html"))
    return result


def run_experiments(
    names: Sequence[str] | str = "all",
    *,
    seeds: Sequence[int] = (0, 1, 2),
    quick: bool = False,
    out: str | Path | None = None,
    progress: bool = True,
    threads: int | None = 1,
) -> list[ExperimentResult]:
    """Run several experiments (``"all"``: every one of :data:`EXPERIMENTS`) into one report.

    Files (with ``out``): each experiment's tables, plots and ``summary.json`` in
    ``out/<name>/``, and one report, ``out/report.html``, with a section per experiment.
    Other arguments as :func:`run_experiment`.
    """
    chosen = list(EXPERIMENTS) if names == "all" else (
        [names] if isinstance(names, str) else list(names))
    if not chosen:
        raise InvalidParameterError("names must name at least one experiment; got none.")
    for name in chosen:
        _module(name)
    seeds = check_seeds(seeds)
    _check_threads(threads)
    _check_out(out, chosen)
    results = [_timed(name, seeds, quick, None, progress, threads) for name in chosen]
    if out is not None:
        report = _report(results, threads)
        for result in results:
            _write_files(result, Path(out) / result.name, report)
        _footer(report, results, threads)
        report.write(Path(out) / "report.html")
    return results
