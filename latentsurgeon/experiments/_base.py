"""What every experiment shares: its result object, the CSV writer, the report section it fills,
seeded model construction."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from latentsurgeon._io import save_figure_atomic, write_text_atomic
from latentsurgeon._validation import check_finite
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.report.html import HtmlReport

__all__ = ["ExperimentResult", "Section", "check_seeds", "seeded", "torch_threads", "write_csv"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(kw_only=True)
class ExperimentResult:
    """What an experiment measured, over seeds.

    Attributes:
        name: the experiment (``"consistency-features"``, ...).
        title: one line naming it.
        claim: the paper's claim the experiment tests.
        seeds: the seeds run; each seed draws its own data split, initialisation and training.
        quick: whether the CI-sized settings ran.
        settings: the settings, as plain values.
        records: ``{table name: rows}``, each row a dict (one CSV file per table, per seed and
            setting; ``"summary"`` holds the means and intervals over seeds).
        headline: the headline lines (means with 95% t-intervals over seeds).
        checks: ``{effect: holds}`` for every headline effect, judged on the means over seeds.
        wall_seconds, cpu_seconds: the run's wall-clock and process CPU time (filled by
            :func:`~latentsurgeon.experiments.run_experiment`).
        files: the files written (CSV, PNG; the report is listed by the runner).
    """

    name: str
    title: str
    claim: str
    seeds: tuple[int, ...]
    quick: bool
    settings: dict[str, Any]
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    headline: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    files: list[Path] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        """Whether every headline effect holds (on the means over seeds)."""
        return all(self.checks.values())

    def summary(self) -> str:
        """The headline as text, one line each, then which effects hold."""
        lines = [f"{self.title} ({len(self.seeds)} seed{'s' if len(self.seeds) > 1 else ''}"
                 f"{', quick' if self.quick else ''}; mean +- 95% t-interval over seeds)"]
        lines += [f"  {line}" for line in self.headline]
        for effect, ok in self.checks.items():
            lines.append(f"  [{'holds' if ok else 'FAILS'}] {effect}")
        return "\n".join(lines)


def check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    """The seeds as a tuple of distinct ints >= 0 (at least one)."""
    if isinstance(seeds, (int, str)) or not isinstance(seeds, Sequence):
        raise InvalidParameterError(
            f"seeds must be a list of distinct ints >= 0 (e.g. [0, 1, 2]); got {seeds!r}.")
    out = tuple(seeds)
    if not out or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0
                      for s in out) or len(set(out)) != len(out):
        raise InvalidParameterError(
            f"seeds must be a non-empty list of distinct ints >= 0 (e.g. [0, 1, 2]); got "
            f"{list(out)!r}.")
    return tuple(int(s) for s in out)


def seeded(seed: int, factory: Callable[[], T]) -> T:
    """``factory()`` with torch's global RNG seeded by ``seed`` (for a model's initialisation);
    the caller's RNG state is restored."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return factory()


def _cell(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def write_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write ``rows`` (dicts; columns in order of first appearance) as CSV, atomically."""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        check_finite(np.asarray([v for v in row.values() if isinstance(v, float)],
                                dtype=np.float64), f"a row of {Path(path).name}")
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return write_text_atomic(path, buffer.getvalue())


class Section:
    """The part of the HTML report one experiment fills, and the folder its files go to.

    ``figure`` saves the figure as ``<folder>/<stem>.png`` and embeds it in the report.
    """

    def __init__(self, report: HtmlReport, folder: Path, files: list[Path]) -> None:
        self.report = report
        self.folder = folder
        self.files = files

    def heading(self, text: str) -> None:
        self.report.heading(text)

    def paragraph(self, text: str, *, note: bool = False) -> None:
        self.report.paragraph(text, note=note)

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], *,
              precision: int = 3) -> None:
        self.report.table(columns, rows, precision=precision)

    def figure(self, stem: str, figure: Any, caption: str) -> None:
        path = self.folder / f"{stem}.png"
        save_figure_atomic(figure, path, close=False)
        self.files.append(path)
        self.report.figure(figure, caption)  # closes the figure


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads (None: as they are); the caller's count is
    restored afterwards."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
