"""The concept-intervention experiment on a bundled concept data set: train per seed, curves, files.

What ``latentsurgeon cbm`` runs: for each seed, generate the data set, train a concept model (and
a black box of the same size for reference), then draw the intervention curves of every policy
over the seeds and write them as CSV, PNG, JSON and a self-contained HTML section.

It is an experiment of this package like the others (``run(seeds, settings=..., quick=...)``
returns an :class:`~latentsurgeon.experiments.ExperimentResult`, seeds checked by the same
rule); it is not one of lfxai's studies, so ``run_experiments("all")`` does not run it, and it
writes its own four files (:meth:`CbmResult.write`) rather than the runner's folder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from latentsurgeon._io import save_figure_atomic, write_json_atomic
from latentsurgeon._validation import Interval, Options, validate_params
from latentsurgeon.cbm.curves import InterventionCurves, intervention_curve
from latentsurgeon.cbm.models import BlackBoxModel, ConceptBottleneckModel, ConceptEmbeddingModel
from latentsurgeon.data.toy_concepts import TOY_CONCEPT_SETS
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError
from latentsurgeon.experiments._base import ExperimentResult, check_seeds
from latentsurgeon.metrics.accuracy import accuracy

__all__ = ["CLAIM", "DATASETS", "NAME", "CbmResult", "Settings", "run"]

logger = logging.getLogger(__name__)

NAME = "cbm"
CLAIM = ("Setting a concept model's concepts to the truth, k = 0..K per test sample, moves its "
         "task accuracy towards what the concepts allow, and a policy that picks the concepts "
         "the model is least sure of (or whose change moves the task most) gets there with "
         "fewer interventions than a random order (Koh et al. 2020; Espinosa Zarlenga et al. "
         "2022).")

#: Data sets the experiment can run on: the toy concept sets and the concept digits.
DATASETS = (*TOY_CONCEPT_SETS, "digits")


@dataclass(frozen=True)
class Settings:
    """Settings of the experiment.

    Attributes:
        dataset: one of :data:`DATASETS`.
        model: ``"cbm"`` (:class:`~latentsurgeon.cbm.ConceptBottleneckModel`) or ``"cem"``
            (:class:`~latentsurgeon.cbm.ConceptEmbeddingModel`).
        head_kind: the task head, ``"linear"`` or ``"mlp"``.
        scheme: the CBM's training scheme (ignored for CEM, which trains jointly).
        noise: input noise of the toy sets (None: the data set's default).
        epochs: training epochs (None: the models' default, 15 with ``quick``).
    """

    dataset: str = "xor"
    model: str = "cbm"
    head_kind: str = "mlp"
    scheme: str = "independent"
    noise: float | None = None
    epochs: int | None = None


_CONSTRAINTS = {
    "dataset": Options(DATASETS),
    "model": Options(["cbm", "cem"]),
    "head_kind": Options(["linear", "mlp"]),
    "scheme": Options(["joint", "sequential", "independent"]),
    "noise": [None, Interval(float, 0, None)],
    "epochs": [None, Interval(int, 1, None)],
}


@dataclass(kw_only=True)
class CbmResult(ExperimentResult):
    """Adds the intervention ``curves`` over seeds, the ``black_box`` accuracy of each seed's
    reference model and the trained ``models``; ``settings`` is the run's configuration
    (``dataset``, ``model``, ``head_kind``, ``scheme``, ``seeds``, ``noise``, ``epochs``, ``quick``,
    ``concepts``) and ``records["curves"]`` the curves' rows."""

    curves: InterventionCurves
    black_box: list[float]
    models: list[Any] = field(default_factory=list, repr=False)

    @property
    def config(self) -> dict[str, Any]:
        """The run's configuration (``settings``)."""
        return self.settings

    def measurements(self) -> dict[str, Any]:
        """Configuration, black-box accuracy and the curves' summary (JSON-serialisable)."""
        return {"config": self.config, "black_box_accuracy": float(np.mean(self.black_box)),
                "black_box_runs": self.black_box, **self.curves.summary()}

    def write(self, out: str | Path) -> dict[str, Path]:
        """Write ``<stem>.csv`` (mean curves and intervals), ``.png``, ``.json`` (the
        measurements and every run's curve) and ``.html`` (a self-contained section) into
        ``out``; returns their paths. ``stem`` is ``cbm_<dataset>_<model>``."""
        from latentsurgeon.report.html import HtmlReport

        out = Path(out)
        if out.exists() and not out.is_dir():
            raise LatentSurgeonError(f"--out {out} exists and is not a directory.")
        out.mkdir(parents=True, exist_ok=True)
        stem = f"cbm_{self.config['dataset']}_{self.config['model']}"
        paths = {kind: out / f"{stem}.{kind}" for kind in ("csv", "png", "json", "html")}
        self.curves.to_csv(paths["csv"])
        references = {"black box": float(np.mean(self.black_box))}
        save_figure_atomic(self.curves.plot(self.title, references), paths["png"])
        runs = {"task_runs": {p: v.tolist() for p, v in self.curves.task.items()},
                "concept_runs": {p: v.tolist() for p, v in self.curves.concept.items()}}
        write_json_atomic(paths["json"], {**self.measurements(), **runs}, sort_keys=False)
        report = HtmlReport("Concept interventions", self.title)
        self.curves.add_to_report(report, f"Intervention curves: {self.title}",
                                  self._description(), references)
        report.write(paths["html"])
        self.files.extend(paths.values())
        return paths

    def _description(self) -> str:
        c = self.config
        return (f"Ground-truth interventions on the concept layer, k = 0..{self.curves.n_concepts} "
                f"concepts per test sample chosen by each policy; mean over seeds "
                f"{', '.join(map(str, c['seeds']))}. A black box of the same size reaches "
                f"{np.mean(self.black_box):.3f} task accuracy.")


def _title(settings: Settings) -> str:
    what = (f"CBM ({settings.scheme}, {settings.head_kind} head)" if settings.model == "cbm"
            else f"CEM ({settings.head_kind} head, RandInt 0.25)")
    return f"{what} on {settings.dataset}"


def _headline(config: dict[str, Any], summary: dict[str, Any]) -> str:
    """One line: accuracy without and with every concept intervened, the best policy."""
    policies = summary["policies"]
    best = max(policies, key=lambda p: policies[p]["task_auc"])
    first = next(iter(policies.values()))
    return (f"{config['model']} on {config['dataset']} ({len(config['seeds'])} seed(s)): task "
            f"accuracy {first['task_none']:.3f} without intervention, {first['task_all']:.3f} "
            f"with every concept set to the truth (black box {summary['black_box_accuracy']:.3f}"
            f"); best policy {best} (task AUC {policies[best]['task_auc']:.3f}, random "
            f"{policies.get('random', policies[best])['task_auc']:.3f})")


def _load(dataset: str, seed: int, noise: float | None, quick: bool) -> Any:
    if dataset == "digits":
        from latentsurgeon.data.concept_digits import concept_digits

        if noise is not None:
            raise InvalidParameterError("noise applies to the toy data sets, not to digits.")
        return concept_digits(seed=seed)
    from latentsurgeon.data.toy_concepts import toy_concepts

    sizes = {"n_train": 600, "n_test": 400} if quick else {}
    return toy_concepts(dataset, seed=seed, noise=noise, **sizes)


def run(seeds: Sequence[int] = (0, 1, 2), *, settings: Settings | None = None,
        quick: bool = False, progress: bool = True) -> CbmResult:
    """Train per seed and draw the intervention curves of every policy.

    Args:
        seeds: one run per seed (data, initialisation and training order follow it); distinct
            ints >= 0.
        settings: data set, model and training (:class:`Settings`; default ``Settings()``).
        quick: small data (600 train / 400 test toy samples), 15 epochs and the first seed
            only: a smoke run of a few seconds.
        progress: progress bars.

    Returns:
        A :class:`CbmResult`; no file is written (see :meth:`CbmResult.write`).
    """
    settings = settings or Settings()
    validate_params(asdict(settings), _CONSTRAINTS, owner="cbm Settings")
    seeds = check_seeds(seeds)
    epochs = settings.epochs
    if quick:
        seeds = seeds[:1]
        epochs = epochs or 15
    options = {"head_kind": settings.head_kind, "progress": progress,
               **({"epochs": epochs} if epochs else {})}
    models, tests, black_box = [], [], []
    for seed in seeds:
        data = _load(settings.dataset, seed, settings.noise, quick)
        if settings.model == "cbm":
            net = ConceptBottleneckModel(data.n_features, data.n_concepts, data.n_classes,
                                         scheme=settings.scheme, seed=seed, **options)
        else:
            net = ConceptEmbeddingModel(data.n_features, data.n_concepts, data.n_classes,
                                        seed=seed, **options)
        models.append(net.fit(data.train))
        tests.append(data.test)
        baseline = BlackBoxModel(data.n_features, data.n_classes, seed=seed, **options)
        black_box.append(accuracy(baseline.fit(data.train), data.test))
        logger.info("seed %d: %s trained", seed, settings.model)
    curves = intervention_curve(models, tests, seed=seeds[0], progress=progress)
    config = {"dataset": settings.dataset, "model": settings.model,
              "head_kind": settings.head_kind,
              "scheme": settings.scheme if settings.model == "cbm" else "joint+randint",
              "seeds": list(seeds), "noise": settings.noise, "epochs": models[0].epochs,
              "quick": quick, "concepts": list(data.concept_names)}
    summary = {"black_box_accuracy": float(np.mean(black_box)), **curves.summary()}
    return CbmResult(name=NAME, title=_title(settings), claim=CLAIM, seeds=seeds, quick=quick,
                     settings=config, records={"curves": curves.rows()},
                     headline=[_headline(config, summary)], curves=curves,
                     black_box=black_box, models=models)
