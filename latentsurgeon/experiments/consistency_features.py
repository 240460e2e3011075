"""Consistency of label-free feature importance (lfxai's ``consistency_features``).

An autoencoder is trained to reconstruct the digits; label-free Saliency, Integrated Gradients
and GradientShap rank the pixels of every test digit by their importance for the encoder's
representation. The ``k`` highest-ranked pixels are set to zero (black) and the representation
shift is measured as ``k`` grows, against masking ``k`` pixels chosen at random: the mean of
``||f(x) - f(x_masked)||`` over the test digits, relative to the mean ``||f(x)||`` (so that
seeds, whose codes differ in scale, can be averaged). If the importance means anything, the
important pixels move the representation further.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from latentsurgeon.experiments._base import ExperimentResult, Section, check_seeds, seeded
from latentsurgeon.experiments._data import digit_split
from latentsurgeon.experiments._features import (
    LABELS,
    STUDIED_METHODS,
    feature_importance,
    random_scores,
    top_feature_masks,
)
from latentsurgeon.experiments._stats import mean_interval
from latentsurgeon.explain import representations
from latentsurgeon.models import PerturbedAutoencoder, train_autoencoder

__all__ = ["CLAIM", "NAME", "TITLE", "ConsistencyFeaturesResult", "Settings", "report", "run"]

logger = logging.getLogger(__name__)

NAME = "consistency-features"
TITLE = "Consistency of label-free feature importance"
CLAIM = ("Masking the pixels that label-free feature importance ranks highest shifts the "
         "encoder's representation more than masking as many random pixels, for every "
         "attribution method (Saliency, Integrated Gradients, GradientShap; lfxai on MNIST, "
         "ECG5000 and CIFAR-10).")


@dataclass(frozen=True)
class Settings:
    """Settings of the experiment (the defaults are the full run, :meth:`quick` the CI-sized
    one).

    Attributes:
        n_train: training digits (None: all 1300 of the split).
        n_test: test digits explained and masked.
        latent_dim: size of the code (lfxai: 4).
        epochs, batch_size, lr: the autoencoder's training.
        fractions: shares of the 256 pixels masked.
        ig_steps: Integrated Gradients' steps.
        shap_samples: GradientShap's draws per sample.
    """

    n_train: int | None = None
    n_test: int = 497
    latent_dim: int = 4
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    fractions: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.8)
    ig_steps: int = 32
    shap_samples: int = 16

    @classmethod
    def quick(cls) -> Settings:
        return cls(n_train=400, n_test=100, epochs=4, fractions=(0.05, 0.2, 0.5),
                   ig_steps=16, shap_samples=8)


@dataclass(kw_only=True)
class ConsistencyFeaturesResult(ExperimentResult):
    """Adds: ``fractions``; ``shift[method]`` ``(n_seeds, n_fractions)`` mean representation
    shifts relative to the mean representation norm (``"random"`` included); ``examples`` and ``example_attributions`` (a few test
    digits of the first seed and each method's importance for them)."""

    fractions: tuple[float, ...]
    shift: dict[str, np.ndarray]
    examples: torch.Tensor
    example_attributions: dict[str, torch.Tensor]


def _shifts(model: torch.nn.Module, inputs: torch.Tensor, reference: torch.Tensor,
            scores: torch.Tensor, fractions: Sequence[float]) -> list[float]:
    n_pixels = int(np.prod(inputs.shape[2:]))
    scale = float(reference.norm(dim=1).mean())
    out = []
    for fraction in fractions:
        masks = top_feature_masks(scores, int(round(fraction * n_pixels)))
        masked = representations(model, "encoder", inputs * masks)
        out.append(float((reference - masked).norm(dim=1).mean()) / scale)
    return out


def run(seeds: Sequence[int] = (0, 1, 2), *, settings: Settings | None = None,
        quick: bool = False, progress: bool = True) -> ConsistencyFeaturesResult:
    """Run the experiment over ``seeds`` (each: its own split, initialisation and training).

    Returns a :class:`ConsistencyFeaturesResult`; no file is written (see
    :func:`~latentsurgeon.experiments.run_experiment`).
    """
    seeds = check_seeds(seeds)
    settings = settings or (Settings.quick() if quick else Settings())
    methods = (*STUDIED_METHODS, "random")
    shift = {m: np.zeros((len(seeds), len(settings.fractions))) for m in methods}
    rows = []
    examples = torch.empty(0)
    example_attributions: dict[str, torch.Tensor] = {}
    for s, seed in enumerate(tqdm(seeds, desc=NAME, unit="seed",
                                  disable=None if progress else True)):
        data = digit_split(seed, n_train=settings.n_train, n_test=settings.n_test)
        model = seeded(seed, lambda: PerturbedAutoencoder(latent_dim=settings.latent_dim))
        train_autoencoder(model, data.train_x, epochs=settings.epochs, lr=settings.lr,
                          batch_size=settings.batch_size, seed=seed, progress=False)
        reference = representations(model, "encoder", data.test_x)
        for method in methods:
            if method == "random":
                scores = random_scores(data.test_x.shape, seed)
            else:
                scores = feature_importance(model, data.test_x, method, layer="encoder",
                                            seed=seed, ig_steps=settings.ig_steps,
                                            shap_samples=settings.shap_samples)
            if s == 0:
                example_attributions[method] = scores[:6]
            shift[method][s] = _shifts(model, data.test_x, reference, scores,
                                       settings.fractions)
            for fraction, value in zip(settings.fractions, shift[method][s], strict=True):
                rows.append({"seed": seed, "method": method, "fraction": fraction,
                             "pixels_masked": int(round(fraction * 256)), "shift": value})
        if s == 0:
            examples = data.test_x[:6]
        logger.info("%s seed %d: %s", NAME, seed,
                    {m: np.round(v[s], 3).tolist() for m, v in shift.items()})
    return _summarise(seeds, settings, quick, shift, rows, examples, example_attributions)


def _summarise(seeds: tuple[int, ...], settings: Settings, quick: bool,
               shift: dict[str, np.ndarray], rows: list[dict], examples: torch.Tensor,
               example_attributions: dict[str, torch.Tensor]) -> ConsistencyFeaturesResult:
    summary, headline, checks = [], [], {}
    for method, values in shift.items():
        for i, fraction in enumerate(settings.fractions):
            interval = mean_interval(values[:, i])
            summary.append({"method": method, "fraction": fraction, "mean": interval.mean,
                            "half_width_95": interval.half_width, "n_seeds": interval.n})
    random_mean = shift["random"].mean(axis=0)
    middle = int(np.argmin([abs(f - 0.2) for f in settings.fractions]))
    for method in STUDIED_METHODS:
        ratio = mean_interval((shift[method] / shift["random"]).mean(axis=1))
        above = int((shift[method].mean(axis=0) > random_mean).sum())
        headline.append(
            f"{LABELS[method]}: shift {ratio} times random's (mean over the "
            f"{len(settings.fractions)} masked fractions); at "
            f"{settings.fractions[middle]:.0%} masked {mean_interval(shift[method][:, middle])}"
            f" vs random {mean_interval(shift['random'][:, middle])}; above random at {above} "
            f"of {len(settings.fractions)} fractions")
        checks[f"{LABELS[method]}: masking the most important pixels shifts the "
               "representation more than masking random pixels, at every fraction"] = \
            above == len(settings.fractions)
    return ConsistencyFeaturesResult(
        name=NAME, title=TITLE, claim=CLAIM, seeds=seeds, quick=quick,
        settings=asdict(settings), records={"shift": rows, "summary": summary},
        headline=headline, checks=checks, fractions=tuple(settings.fractions), shift=shift,
        examples=examples, example_attributions=example_attributions)


def report(result: ConsistencyFeaturesResult, section: Section) -> None:
    """Fill the experiment's section of the HTML report."""
    import matplotlib.pyplot as plt

    from latentsurgeon.experiments._plots import curves
    from latentsurgeon.report import figures

    section.heading(TITLE)
    section.paragraph(f"The paper's claim: {CLAIM}", note=True)
    section.paragraph(
        "An autoencoder (latent dimension "
        f"{result.settings['latent_dim']}) reconstructs the digits; each method ranks the "
        "pixels of every test digit by their label-free importance for the encoder's "
        "representation f. The top-ranked pixels are set to zero and the shift "
        "||f(x) - f(x_masked)|| is averaged over the test digits, relative to the mean "
        "||f(x)||; 'random' masks as many random pixels.")
    for line in result.headline:
        section.paragraph(line)
    columns = ["masked pixels"] + [LABELS[m] for m in result.shift]
    table = []
    for i, fraction in enumerate(result.fractions):
        table.append([f"{fraction:.0%}"] + [mean_interval(v[:, i]).format(2)
                                              for v in result.shift.values()])
    section.table(columns, table)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    curves(ax, [100 * f for f in result.fractions],
           {LABELS[m]: v for m, v in result.shift.items()}, dashed=["random"])
    ax.set_xlabel("pixels masked (%)")
    ax.set_ylabel("relative representation shift")
    ax.legend(fontsize=8)
    fig.tight_layout()
    section.figure("shift", fig, "Representation shift as more pixels are masked: mean over "
                                 "seeds, band = 95% t-interval.")
    attributions = {LABELS[m]: a for m, a in result.example_attributions.items()
                    if m != "random"}
    section.figure("attributions", figures.attribution_rows(result.examples, attributions),
                   "Label-free importance of six test digits (first seed), per method.")
