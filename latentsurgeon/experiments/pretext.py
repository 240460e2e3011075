"""Pretext-task sensitivity (lfxai's ``pretext``): are encoders trained on different tasks
explained alike?

One encoder design is trained on five pretext tasks (reconstruction, denoising, inpainting,
classification, contrastive). For each, label-free GradientShap gives the feature importance of
every test digit and nearest neighbours in representation space (inverse squared distance,
lfxai's choice) give the example importance of every training digit for every test digit. The
Pearson (and Spearman) correlation between two tasks' importances, over all test digits and
pixels (features) or all test-train pairs (examples), says how alike they are explained.

Every encoder starts from its own random initialisation, as in lfxai. A control row trains a
second reconstruction encoder from yet another initialisation: its correlation with the first
is what the initialisation alone does, the scale on which differences between tasks read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from latentsurgeon.experiments._base import ExperimentResult, Section, check_seeds
from latentsurgeon.experiments._data import digit_split
from latentsurgeon.experiments._features import feature_importance
from latentsurgeon.experiments._stats import mean_interval, pearson_matrix, spearman_matrix
from latentsurgeon.explain import NearestNeighbours
from latentsurgeon.models import PRETEXT_TASKS, train_pretext

__all__ = ["CLAIM", "CONTROL", "NAME", "PAPER", "TITLE", "PretextResult", "Settings", "report",
           "run"]

logger = logging.getLogger(__name__)

NAME = "pretext"
TITLE = "Pretext-task sensitivity"
CLAIM = ("Encoders trained on different pretext tasks are explained differently: their label-"
         "free feature importances correlate only moderately and their example importances "
         "weakly (reproductions of lfxai on MNIST: Pearson 0.32-0.44 for features, 0.05-0.17 "
         "for examples).")
#: The control: a second reconstruction encoder from another initialisation.
CONTROL = "reconstruction (2nd init)"
#: The ranges reproductions of the paper report on MNIST (Pearson, off the diagonal).
PAPER = {"features": (0.32, 0.44), "examples": (0.05, 0.17)}
KINDS = ("features", "examples")


@dataclass(frozen=True)
class Settings:
    """Settings of the experiment (defaults: the full run; :meth:`quick`: CI-sized).

    Attributes:
        n_train, n_test: digits (None: all 1300 training digits of the split).
        latent_dim: the code's size (lfxai: 4; wider codes make every task's representation
            resemble the pixels, and all correlations rise).
        epochs, batch_size, lr: every task's training.
        shap_samples: GradientShap's draws (black baseline, as lfxai).
        control: also train the control encoder (:data:`CONTROL`).
    """

    n_train: int | None = None
    n_test: int = 497
    latent_dim: int = 4
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    shap_samples: int = 8
    control: bool = True

    @classmethod
    def quick(cls) -> Settings:
        return cls(n_train=400, n_test=100, epochs=3, shap_samples=4)


@dataclass(kw_only=True)
class PretextResult(ExperimentResult):
    """Adds ``tasks`` (the five tasks, then the control if run) and ``pearson[kind]``,
    ``spearman[kind]``: ``(n_seeds, n_tasks, n_tasks)`` correlation matrices for ``kind`` in
    ``("features", "examples")``; ``examples`` and ``example_attributions`` (six test digits of
    the first seed and each task's feature importance for them)."""

    tasks: tuple[str, ...]
    pearson: dict[str, np.ndarray]
    spearman: dict[str, np.ndarray]
    examples: torch.Tensor
    example_attributions: dict[str, torch.Tensor]


def run(seeds: Sequence[int] = (0, 1, 2), *, settings: Settings | None = None,
        quick: bool = False, progress: bool = True) -> PretextResult:
    """Run the experiment over ``seeds`` (each: its own split; task ``i`` initialised and
    trained with seed ``100 * seed + i``).

    Returns a :class:`PretextResult`; no file is written (see
    :func:`~latentsurgeon.experiments.run_experiment`).
    """
    seeds = check_seeds(seeds)
    settings = settings or (Settings.quick() if quick else Settings())
    tasks = (*PRETEXT_TASKS, CONTROL) if settings.control else PRETEXT_TASKS
    shape = (len(seeds), len(tasks), len(tasks))
    pearson = {k: np.zeros(shape) for k in KINDS}
    spearman = {k: np.zeros(shape) for k in KINDS}
    rows = []
    examples = torch.empty(0)
    example_attributions: dict[str, torch.Tensor] = {}
    bar = tqdm(total=len(seeds) * len(tasks), desc=NAME, unit="model",
               disable=None if progress else True)
    for s, seed in enumerate(seeds):
        data = digit_split(seed, n_train=settings.n_train, n_test=settings.n_test)
        importance: dict[str, list[np.ndarray]] = {k: [] for k in KINDS}
        for i, task in enumerate(tasks):
            model, _ = train_pretext(
                "reconstruction" if task == CONTROL else task, (data.train_x, data.train_y),
                latent_dim=settings.latent_dim, epochs=settings.epochs, lr=settings.lr,
                batch_size=settings.batch_size, seed=100 * seed + i, progress=False)
            features = feature_importance(model, data.test_x, "gradient_shap", layer="encoder",
                                          seed=seed, shap_samples=settings.shap_samples).abs()
            if s == 0:
                example_attributions[task] = features[:6]
            neighbours = NearestNeighbours("inverse_distance", layer="encoder")
            scores = neighbours.scores(model, data.train_x, data.test_x)
            importance["features"].append(features.reshape(-1).numpy())
            importance["examples"].append(scores.reshape(-1).numpy())
            bar.update()
        if s == 0:
            examples = data.test_x[:6]
        for kind in KINDS:
            stacked = np.stack(importance[kind])
            pearson[kind][s] = pearson_matrix(stacked)
            spearman[kind][s] = spearman_matrix(stacked)
            for a in range(len(tasks)):
                for b in range(a + 1, len(tasks)):
                    rows.append({"seed": seed, "importance": kind, "task_a": tasks[a],
                                 "task_b": tasks[b], "pearson": pearson[kind][s, a, b],
                                 "spearman": spearman[kind][s, a, b]})
        logger.info("%s seed %d: features %s, examples %s", NAME, seed,
                    np.round(pearson["features"][s], 2).tolist(),
                    np.round(pearson["examples"][s], 2).tolist())
    bar.close()
    return _summarise(seeds, settings, quick, tasks, pearson, spearman, rows, examples,
                      example_attributions)


def _pairs(tasks: Sequence[str], between_tasks: bool) -> list[tuple[int, int]]:
    """Index pairs ``a < b``: between two different tasks, or (``between_tasks=False``) the
    control against the reconstruction encoder."""
    if not between_tasks:
        return [(tasks.index("reconstruction"), tasks.index(CONTROL))] if CONTROL in tasks \
            else []
    real = [i for i, t in enumerate(tasks) if t != CONTROL]
    return [(a, b) for a in real for b in real if a < b]


def _summarise(seeds: tuple[int, ...], settings: Settings, quick: bool, tasks: tuple[str, ...],
               pearson: dict[str, np.ndarray], spearman: dict[str, np.ndarray],
               rows: list[dict], examples: torch.Tensor,
               example_attributions: dict[str, torch.Tensor]) -> PretextResult:
    summary, headline, checks = [], [], {}
    between = _pairs(tasks, True)
    control = _pairs(tasks, False)
    for kind in KINDS:
        for measure, table in (("pearson", pearson[kind]), ("spearman", spearman[kind])):
            for a in range(len(tasks)):
                for b in range(a + 1, len(tasks)):
                    interval = mean_interval(table[:, a, b])
                    summary.append({"importance": kind, "measure": measure,
                                    "task_a": tasks[a], "task_b": tasks[b],
                                    "mean": interval.mean, "half_width_95": interval.half_width,
                                    "n_seeds": interval.n})
        means = pearson[kind].mean(axis=0)
        pair_means = [means[a, b] for a, b in between]
        per_seed = np.array([[pearson[kind][s, a, b] for a, b in between]
                             for s in range(len(seeds))]).mean(axis=1)
        low, high = PAPER[kind]
        line = (f"{kind}: Pearson between different tasks {min(pair_means):.2f} to "
                f"{max(pair_means):.2f} (mean over pairs {mean_interval(per_seed)}; "
                f"reproductions of the paper: {low:.2f}-{high:.2f})")
        if control:
            a, b = control[0]
            line += f"; same task, another initialisation: {mean_interval(pearson[kind][:, a, b])}"
        headline.append(line)
        checks[f"{kind}: every correlation between two different tasks is below 0.9"] = \
            bool(max(pair_means) < 0.9)
    return PretextResult(
        name=NAME, title=TITLE, claim=CLAIM, seeds=seeds, quick=quick,
        settings=asdict(settings), records={"correlations": rows, "summary": summary},
        headline=headline, checks=checks, tasks=tasks, pearson=pearson, spearman=spearman,
        examples=examples, example_attributions=example_attributions)


def report(result: PretextResult, section: Section) -> None:
    """Fill the experiment's section of the HTML report."""
    import matplotlib.pyplot as plt

    from latentsurgeon.experiments._plots import heatmap
    from latentsurgeon.report import figures

    section.heading(TITLE)
    section.paragraph(f"The paper's claim: {CLAIM}", note=True)
    section.paragraph(
        "One encoder design (latent dimension "
        f"{result.settings['latent_dim']}) trained on each pretext task from its own "
        "initialisation. Features: |label-free GradientShap| (black baseline) of every test "
        "digit; examples: nearest neighbours in representation space, 1/||f(x) - f(x_n)||^2, "
        "for every test-train pair. Correlations over all entries; the control row is a second "
        "reconstruction encoder from another initialisation.")
    for line in result.headline:
        section.paragraph(line)
    for kind in KINDS:
        for measure, table in (("Pearson", result.pearson[kind]),
                               ("Spearman", result.spearman[kind])):
            rows = [[task] + [mean_interval(table[:, a, b]).format(2) if a != b else "1"
                              for b in range(len(result.tasks))]
                    for a, task in enumerate(result.tasks)]
            section.paragraph(f"{measure} correlation of {kind} importance")
            section.table(["task", *result.tasks], rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.3))
    for ax, kind in zip(axes, KINDS, strict=True):
        image = heatmap(ax, result.pearson[kind].mean(axis=0), result.tasks,
                        f"{kind}: Pearson (mean over seeds)")
    fig.colorbar(image, ax=list(axes), fraction=0.025)
    section.figure("correlations", fig, "Pearson correlation between the importances of "
                                        "encoders trained on different pretext tasks.")
    section.figure("saliency", figures.attribution_rows(result.examples,
                                                        result.example_attributions),
                   "|Label-free GradientShap| of six test digits (first seed), per task.")
