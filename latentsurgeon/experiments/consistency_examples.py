"""Consistency of label-free example importance (lfxai's ``consistency_examples``).

An autoencoder is trained on the digits (and an LSTM autoencoder on the generated heartbeats);
each example-importance method ranks the training examples for every test example, without
labels. The *similarity rate* is the share of a test example's top-k training examples that
carry its label (labels are used for this evaluation only). A method that finds related
examples beats a random ranking, whose rate is the share of the test example's class in the
training set.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from latentsurgeon.experiments._base import ExperimentResult, Section, check_seeds, seeded
from latentsurgeon.experiments._data import Split, beat_split, digit_split
from latentsurgeon.experiments._stats import mean_interval
from latentsurgeon.explain import (
    InfluenceFunctions,
    NearestNeighbours,
    SimplEx,
    TracIn,
    top_examples,
)
from latentsurgeon.explain.methods import METHODS, ExampleMethod
from latentsurgeon.models import (
    PerturbedAutoencoder,
    RecurrentAutoencoder,
    train_autoencoder,
    train_recurrent_autoencoder,
)

__all__ = ["CLAIM", "EXAMPLE_METHODS", "NAME", "TITLE", "ConsistencyExamplesResult", "Settings",
           "report", "run", "similarity_rate"]

logger = logging.getLogger(__name__)

NAME = "consistency-examples"
TITLE = "Consistency of label-free example importance"
CLAIM = ("The training examples that label-free example importance ranks highest share the "
         "test example's label more often than randomly chosen ones, for every method "
         "(nearest neighbours, SimplEx, TracIn, influence functions; lfxai on MNIST, ECG5000 "
         "and CIFAR-10).")

#: The example-importance methods compared, by name: lfxai's variants of the methods of
#: ``latentsurgeon.explain.methods.METHODS`` (both neighbour metrics, the reconstruction loss).
EXAMPLE_METHODS = ("nn_cosine", "nn_inverse_distance", "simplex", "tracin", "influence")
LABELS = {"nn_cosine": "NN cosine", "nn_inverse_distance": "NN inverse distance",
          "simplex": "SimplEx", "tracin": "TracIn", "influence": "influence functions",
          "random": "random"}
DATASETS = {"digits": "digits (conv. autoencoder)", "beats": "heartbeats (LSTM autoencoder)"}


@dataclass(frozen=True)
class Settings:
    """Settings of the experiment (defaults: the full run; :meth:`quick`: CI-sized).

    Attributes:
        n_train, n_test: digits (None: all 1300 training digits of the split).
        latent_dim, epochs, batch_size, lr: the digits autoencoder and its training.
        checkpoint_every: TracIn sums over the checkpoints of every this many epochs.
        tracin_params: the layers whose parameters TracIn differentiates (the encoder, lfxai's
            choice).
        influence_params: the small parameter subset influence functions use (the decoder's
            output layer, 257 parameters: the exact Hessian is cheap; Koh & Liang also restrict
            to the last layer).
        damping: influence functions' damping.
        fractions: the top-k sizes, as shares of the training examples.
        beats: also run the LSTM autoencoder on the generated heartbeats.
        beats_train, beats_test, beats_epochs, beats_checkpoint_every: its data and training.
        beats_tracin_params, beats_influence_params: its parameter subsets (the encoder's LSTMs;
            the linear read-out ``decoder.output``).
    """

    n_train: int | None = None
    n_test: int = 497
    latent_dim: int = 4
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    checkpoint_every: int = 3
    tracin_params: str = "encoder"
    influence_params: str = "decoder.5"
    damping: float = 0.01
    fractions: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2)
    beats: bool = True
    beats_train: int = 500
    beats_test: int = 200
    beats_epochs: int = 20
    beats_checkpoint_every: int = 5
    beats_tracin_params: str = "encoder"
    beats_influence_params: str = "decoder.output"

    @classmethod
    def quick(cls) -> Settings:
        return cls(n_train=300, n_test=100, epochs=4, checkpoint_every=2,
                   fractions=(0.02, 0.1, 0.2), beats_train=120, beats_test=40, beats_epochs=6,
                   beats_checkpoint_every=3)


@dataclass(kw_only=True)
class ConsistencyExamplesResult(ExperimentResult):
    """Adds ``fractions`` and ``rates[dataset][method]``: ``(n_seeds, n_fractions)``
    similarity rates of the most important examples (``"random"`` included), and
    ``least[dataset][method]`` those of the least important ones."""

    fractions: tuple[float, ...]
    rates: dict[str, dict[str, np.ndarray]]
    least: dict[str, dict[str, np.ndarray]]


def similarity_rate(scores: torch.Tensor, train_labels: torch.Tensor,
                    test_labels: torch.Tensor, k: int, *, largest: bool = True) -> float:
    """Share of the top-``k`` training examples of each test example (by ``scores``
    ``(n_test, n_train)``; ``largest=False``: the lowest scores) that share its label, averaged
    over the test examples."""
    return _same_label_share(top_examples(scores, k, largest=largest), train_labels,
                             test_labels)


def _same_label_share(top: torch.Tensor, train_labels: torch.Tensor,
                      test_labels: torch.Tensor) -> float:
    return float((train_labels[top] == test_labels[:, None]).float().mean())


def _explainers(checkpoints: list, tracin_params: str, influence_params: str,
                damping: float) -> dict[str, tuple[Any, ExampleMethod]]:
    """``{method: (explainer, its entry in the table of methods)}``; the entry's sign
    convention decides which scores are the most important (influence functions follow Koh &
    Liang: the most negative scores are the most helpful examples)."""
    return {
        "nn_cosine": (NearestNeighbours("cosine", layer="encoder"),
                      METHODS["nearest_neighbours"]),
        "nn_inverse_distance": (NearestNeighbours("inverse_distance", layer="encoder"),
                                METHODS["nearest_neighbours"]),
        "simplex": (SimplEx(layer="encoder"), METHODS["simplex"]),
        "tracin": (TracIn(checkpoints, "reconstruction", params=tracin_params),
                   METHODS["tracin"]),
        "influence": (InfluenceFunctions("reconstruction", params=influence_params,
                                         damping=damping), METHODS["influence"]),
    }


def _rates(model: nn.Module, data: Split, checkpoints: list, tracin_params: str,
           influence_params: str, damping: float, ks: Sequence[int], seed: int
           ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    most: dict[str, list[float]] = {}
    least: dict[str, list[float]] = {}
    explainers = _explainers(checkpoints, tracin_params, influence_params, damping)
    for method, (explainer, entry) in explainers.items():
        scores = explainer.scores(model, data.train_x, data.test_x)
        most[method] = [_same_label_share(entry.top(scores, k), data.train_y, data.test_y)
                        for k in ks]
        least[method] = [_same_label_share(entry.top(scores, k, least=True), data.train_y,
                                           data.test_y) for k in ks]
    shape = (len(data.test_x), len(data.train_x))
    noise = torch.rand(shape, generator=torch.Generator().manual_seed(int(seed)))
    most["random"] = [similarity_rate(noise, data.train_y, data.test_y, k) for k in ks]
    least["random"] = [similarity_rate(noise, data.train_y, data.test_y, k, largest=False)
                       for k in ks]
    return most, least


def _digit_model(seed: int, settings: Settings, data: Split, folder: str) -> tuple[nn.Module, list]:
    model = seeded(seed, lambda: PerturbedAutoencoder(latent_dim=settings.latent_dim))
    history = train_autoencoder(model, data.train_x, epochs=settings.epochs, lr=settings.lr,
                                batch_size=settings.batch_size, seed=seed, progress=False,
                                checkpoint_dir=folder)
    return model, history.checkpoints[settings.checkpoint_every - 1::settings.checkpoint_every]


def _beat_model(seed: int, settings: Settings, data: Split, folder: str) -> tuple[nn.Module, list]:
    model = seeded(seed, RecurrentAutoencoder)
    history = train_recurrent_autoencoder(model, data.train_x, epochs=settings.beats_epochs,
                                          seed=seed, progress=False, checkpoint_dir=folder)
    every = settings.beats_checkpoint_every
    return model, history.checkpoints[every - 1::every]


def run(seeds: Sequence[int] = (0, 1, 2), *, settings: Settings | None = None,
        quick: bool = False, progress: bool = True) -> ConsistencyExamplesResult:
    """Run the experiment over ``seeds`` (each: its own data, initialisation and training).

    Returns a :class:`ConsistencyExamplesResult`; no file is written (see
    :func:`~latentsurgeon.experiments.run_experiment`).
    """
    seeds = check_seeds(seeds)
    settings = settings or (Settings.quick() if quick else Settings())
    datasets: dict[str, tuple[Callable[[int], Split], Callable, str, str]] = {
        "digits": (lambda s: digit_split(s, n_train=settings.n_train, n_test=settings.n_test),
                   _digit_model, settings.tracin_params, settings.influence_params)}
    if settings.beats:
        datasets["beats"] = (
            lambda s: beat_split(s, n_train=settings.beats_train, n_test=settings.beats_test),
            _beat_model, settings.beats_tracin_params, settings.beats_influence_params)
    methods = (*EXAMPLE_METHODS, "random")
    rates = {d: {m: np.zeros((len(seeds), len(settings.fractions))) for m in methods}
             for d in datasets}
    least = {d: {m: np.zeros((len(seeds), len(settings.fractions))) for m in methods}
             for d in datasets}
    rows = []
    bar = tqdm(total=len(seeds) * len(datasets), desc=NAME, unit="model",
               disable=None if progress else True)
    for s, seed in enumerate(seeds):
        for dataset, (load, build, tracin_params, influence_params) in datasets.items():
            data = load(seed)
            ks = [max(1, int(round(f * len(data.train_x)))) for f in settings.fractions]
            with tempfile.TemporaryDirectory(prefix="latentsurgeon-tracin-") as folder:
                model, checkpoints = build(seed, settings, data, folder)
                most, low = _rates(model, data, checkpoints, tracin_params, influence_params,
                                   settings.damping, ks, seed)
            for method in methods:
                rates[dataset][method][s] = most[method]
                least[dataset][method][s] = low[method]
                for ranking, values in (("most", most[method]), ("least", low[method])):
                    for fraction, k, value in zip(settings.fractions, ks, values, strict=True):
                        rows.append({"dataset": dataset, "seed": seed, "method": method,
                                     "ranking": ranking, "fraction": fraction, "k": k,
                                     "similarity_rate": value})
            logger.info("%s %s seed %d: %s", NAME, dataset, seed,
                        {m: np.round(v, 3).tolist() for m, v in most.items()})
            bar.update()
    bar.close()
    return _summarise(seeds, settings, quick, rates, least, rows)


def _summarise(seeds: tuple[int, ...], settings: Settings, quick: bool,
               rates: dict[str, dict[str, np.ndarray]], least: dict[str, dict[str, np.ndarray]],
               rows: list[dict]) -> ConsistencyExamplesResult:
    summary, headline, checks = [], [], {}
    middle = int(np.argmin([abs(f - 0.05) for f in settings.fractions]))
    for dataset, by_method in rates.items():
        for method, values in by_method.items():
            for i, fraction in enumerate(settings.fractions):
                interval = mean_interval(values[:, i])
                summary.append({"dataset": dataset, "method": method, "ranking": "most",
                                "fraction": fraction, "mean": interval.mean,
                                "half_width_95": interval.half_width, "n_seeds": interval.n})
        random_mean = by_method["random"].mean(axis=0)
        parts = [f"{LABELS[m]} {mean_interval(v[:, middle])}" for m, v in by_method.items()]
        headline.append(f"{DATASETS[dataset]}, top {settings.fractions[middle]:.0%} of the "
                        f"training examples: similarity rate {'; '.join(parts)}")
        for method in EXAMPLE_METHODS:
            beats_random = bool((by_method[method].mean(axis=0) > random_mean).all())
            checks[f"{DATASETS[dataset]}: {LABELS[method]} beats a random ranking at every "
                   "top-k"] = beats_random
    return ConsistencyExamplesResult(
        name=NAME, title=TITLE, claim=CLAIM, seeds=seeds, quick=quick,
        settings=asdict(settings), records={"similarity": rows, "summary": summary},
        headline=headline, checks=checks, fractions=tuple(settings.fractions), rates=rates,
        least=least)


def report(result: ConsistencyExamplesResult, section: Section) -> None:
    """Fill the experiment's section of the HTML report."""
    import matplotlib.pyplot as plt

    from latentsurgeon.experiments._plots import curves

    section.heading(TITLE)
    section.paragraph(f"The paper's claim: {CLAIM}", note=True)
    section.paragraph(
        "Each method ranks the training examples for every test example without labels; the "
        "similarity rate is the share of the top-k training examples with the test example's "
        "label (labels used for this evaluation only). 'random' ranks at random: its rate is "
        "the share of the test example's class among the training examples. TracIn sums over "
        f"checkpoints of the reconstruction loss's gradients ({result.settings['tracin_params']}"
        f" on the digits, {result.settings['beats_tracin_params']} on the heartbeats); "
        "influence functions use a small parameter subset "
        f"({result.settings['influence_params']}, "
        f"{result.settings['beats_influence_params']}) and rank the most helpful examples "
        "(most negative Koh & Liang scores) first.")
    for line in result.headline:
        section.paragraph(line)
    for dataset, by_method in result.rates.items():
        columns = ["top-k"] + [LABELS[m] for m in by_method]
        table = [[f"{f:.0%}"] + [mean_interval(v[:, i]).format(3) for v in by_method.values()]
                 for i, f in enumerate(result.fractions)]
        section.paragraph(f"{DATASETS[dataset]}: similarity rate of the most important "
                          "examples")
        section.table(columns, table)
    fig, axes = plt.subplots(1, len(result.rates), figsize=(5.2 * len(result.rates), 3.4),
                             squeeze=False)
    for ax, (dataset, by_method) in zip(axes[0], result.rates.items(), strict=True):
        x = [100 * f for f in result.fractions]
        curves(ax, x, {LABELS[m]: v for m, v in by_method.items()}, dashed=["random"])
        ax.set_title(DATASETS[dataset], fontsize=9)
        ax.set_xlabel("top-k (% of the training examples)")
        ax.set_ylabel("similarity rate")
        ax.set_ylim(0, 1.02)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    section.figure("similarity_rates", fig,
                   "Similarity rate of each method's most important training examples: mean "
                   "over seeds, band = 95% t-interval; dashed: random ranking.")
