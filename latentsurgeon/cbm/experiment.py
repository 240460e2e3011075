"""One intervention experiment on a bundled concept data set: train per seed, curves, files.

What ``latentsurgeon cbm`` runs: for each seed, generate the data set, train a concept model (and
a black box of the same size for reference), then draw the intervention curves of every policy
over the seeds and write them as CSV, PNG, JSON and a self-contained HTML section.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from latentsurgeon._io import save_figure_atomic, write_json_atomic
from latentsurgeon._validation import Interval, Options, validate_params
from latentsurgeon.cbm.curves import InterventionCurves, intervention_curve
from latentsurgeon.cbm.models import BlackBoxModel, ConceptBottleneckModel, ConceptEmbeddingModel
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError
from latentsurgeon.metrics.accuracy import accuracy

__all__ = ["DATASETS", "ExperimentResult", "run_experiment"]

logger = logging.getLogger(__name__)

#: Data sets an experiment can run on.
DATASETS = ("xor", "trigonometry", "dot", "checkmark", "digits")


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` measured."""

    config: dict[str, Any]
    curves: InterventionCurves
    black_box: list[float]
    models: list[Any] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        """Configuration, black-box accuracy and the curves' summary (JSON-serialisable)."""
        return {"config": self.config, "black_box_accuracy": float(np.mean(self.black_box)),
                "black_box_runs": self.black_box, **self.curves.summary()}

    def headline(self) -> str:
        """One line: accuracy without and with every concept intervened, the best policy."""
        s = self.summary()
        policies = s["policies"]
        best = max(policies, key=lambda p: policies[p]["task_auc"])
        first = next(iter(policies.values()))
        c = self.config
        return (f"{c['model']} on {c['dataset']} ({len(c['seeds'])} seed(s)): task accuracy "
                f"{first['task_none']:.3f} without intervention, {first['task_all']:.3f} with "
                f"every concept set to the truth (black box {s['black_box_accuracy']:.3f}); best "
                f"policy {best} (task AUC {policies[best]['task_auc']:.3f}, random "
                f"{policies.get('random', policies[best])['task_auc']:.3f})")

    def write(self, out: str | Path) -> dict[str, Path]:
        """Write ``<stem>.csv`` (mean curves and intervals), ``.png``, ``.json`` (the summary and
        every run's curve) and ``.html`` (a self-contained section) into ``out``; returns their
        paths. ``stem`` is ``cbm_<dataset>_<model>``."""
        from latentsurgeon.report.html import HtmlReport

        out = Path(out)
        if out.exists() and not out.is_dir():
            raise LatentSurgeonError(f"--out {out} exists and is not a directory.")
        out.mkdir(parents=True, exist_ok=True)
        stem = f"cbm_{self.config['dataset']}_{self.config['model']}"
        paths = {kind: out / f"{stem}.{kind}" for kind in ("csv", "png", "json", "html")}
        self.curves.to_csv(paths["csv"])
        references = {"black box": float(np.mean(self.black_box))}
        figure = self.curves.plot(self._title(), references)
        save_figure_atomic(figure, paths["png"])
        runs = {"task_runs": {p: v.tolist() for p, v in self.curves.task.items()},
                "concept_runs": {p: v.tolist() for p, v in self.curves.concept.items()}}
        write_json_atomic(paths["json"], {**self.summary(), **runs}, sort_keys=False)
        report = HtmlReport("Concept interventions", self._title())
        self.curves.add_to_report(report, f"Intervention curves: {self._title()}",
                                  self._description(), references)
        report.write(paths["html"])
        return paths

    def _title(self) -> str:
        c = self.config
        what = (f"CBM ({c['scheme']}, {c['head']} head)" if c["model"] == "cbm"
                else f"CEM ({c['head']} head, RandInt 0.25)")
        return f"{what} on {c['dataset']}"

    def _description(self) -> str:
        c = self.config
        return (f"Ground-truth interventions on the concept layer, k = 0..{self.curves.n_concepts} "
                f"concepts per test sample chosen by each policy; mean over seeds "
                f"{', '.join(map(str, c['seeds']))}. A black box of the same size reaches "
                f"{np.mean(self.black_box):.3f} task accuracy.")


_CONSTRAINTS = {
    "dataset": Options(DATASETS),
    "model": Options(["cbm", "cem"]),
    "head": Options(["linear", "mlp"]),
    "scheme": Options(["joint", "sequential", "independent"]),
    "noise": [None, Interval(float, 0, None)],
    "epochs": [None, Interval(int, 1, None)],
}


def _load(dataset: str, seed: int, noise: float | None, quick: bool) -> Any:
    if dataset == "digits":
        from latentsurgeon.data.concept_digits import concept_digits

        if noise is not None:
            raise InvalidParameterError("noise applies to the toy data sets, not to digits.")
        return concept_digits(seed=seed)
    from latentsurgeon.data.toy_concepts import toy_concepts

    sizes = {"n_train": 600, "n_test": 400} if quick else {}
    return toy_concepts(dataset, seed=seed, noise=noise, **sizes)


def run_experiment(dataset: str = "xor", model: str = "cbm", *, seeds: Sequence[int] = (0, 1, 2),
                   head: str = "mlp", scheme: str = "independent", noise: float | None = None,
                   epochs: int | None = None, quick: bool = False, progress: bool = False
                   ) -> ExperimentResult:
    """Train per seed and draw the intervention curves of every policy.

    Args:
        dataset: one of :data:`DATASETS`.
        model: ``"cbm"`` (:class:`ConceptBottleneckModel`) or ``"cem"``
            (:class:`ConceptEmbeddingModel`).
        seeds: one run per seed (data, initialisation and training order follow it).
        head: the task head, ``"linear"`` or ``"mlp"``.
        scheme: the CBM's training scheme (ignored for CEM, which trains jointly).
        noise: input noise of the toy sets (None: the data set's default).
        epochs: training epochs (None: the models' default, 15 with ``quick``).
        quick: small data (600 train / 400 test toy samples), 15 epochs and the first seed
            only: a smoke run of a few seconds.
        progress: progress bars.

    Returns:
        An :class:`ExperimentResult`.
    """
    validate_params({"dataset": dataset, "model": model, "head": head, "scheme": scheme,
                     "noise": noise, "epochs": epochs}, _CONSTRAINTS, owner="run_experiment()")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise InvalidParameterError("run_experiment(): give at least one seed.")
    if quick:
        seeds = seeds[:1]
        epochs = epochs or 15
    options = {"head": head, "progress": progress, **({"epochs": epochs} if epochs else {})}
    models, tests, black_box = [], [], []
    for seed in seeds:
        data = _load(dataset, seed, noise, quick)
        if model == "cbm":
            net = ConceptBottleneckModel(data.n_features, data.n_concepts, data.n_classes,
                                         scheme=scheme, seed=seed, **options)
        else:
            net = ConceptEmbeddingModel(data.n_features, data.n_concepts, data.n_classes,
                                        seed=seed, **options)
        models.append(net.fit(data.train))
        tests.append(data.test)
        baseline = BlackBoxModel(data.n_features, data.n_classes, seed=seed, **options)
        black_box.append(accuracy(baseline.fit(data.train), data.test))
        logger.info("seed %d: %s trained", seed, model)
    curves = intervention_curve(models, tests, seed=seeds[0], progress=progress)
    config = {"dataset": dataset, "model": model, "head": head,
              "scheme": scheme if model == "cbm" else "joint+randint", "seeds": seeds,
              "noise": noise, "epochs": models[0].epochs, "quick": quick,
              "concepts": list(data.concept_names)}
    return ExperimentResult(config, curves, black_box, models)
