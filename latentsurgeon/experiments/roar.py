"""ROAR, RemOve And Retrain (Hooker et al. 2019), for a label-free feature importance (lfxai's
``roar_test``).

An autoencoder is trained on the digits; label-free Integrated Gradients ranks the pixels of
every *training* digit. The top-ranked pixels are set to zero in the training set, a new
autoencoder is trained on the masked digits from the same initialisation, and the damage is
measured on the clean test digits, against removing as many random pixels:

* the test reconstruction error of the retrained autoencoder (lfxai's measure; the headline);
* the accuracy of a linear probe (logistic regression) on the retrained encoder's codes of the
  clean digits, trained on the training digits' codes (Hooker et al. measure a downstream
  classifier; labels are used for this probe only).

Retraining is what separates ROAR from masking at test time: a model that never saw the
important pixels cannot use them, while random removal leaves every pixel visible in most
training digits, so if the importance is right, important-first removal hurts more.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from latentsurgeon._validation import Interval
from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.experiments._base import ExperimentResult, Section, check_seeds, seeded
from latentsurgeon.experiments._data import Split, digit_split
from latentsurgeon.experiments._features import (
    LABELS,
    STUDIED_METHODS,
    feature_importance,
    random_scores,
    top_feature_masks,
)
from latentsurgeon.experiments._stats import mean_interval
from latentsurgeon.explain import representations
from latentsurgeon.hooks import preserve_model_state
from latentsurgeon.models import PerturbedAutoencoder, train_autoencoder

__all__ = ["CLAIM", "NAME", "TITLE", "RoarResult", "Settings", "linear_probe_accuracy",
           "reconstruction_error", "report", "run"]

logger = logging.getLogger(__name__)

NAME = "roar"
TITLE = "ROAR: remove the important pixels and retrain"
#: pixels of a 16 x 16 digit
_N_PIXELS = 256
CLAIM = ("Retraining an autoencoder on images whose most important pixels (by label-free "
         "feature importance) were removed degrades it more than removing as many random "
         "pixels (lfxai's ROAR test on MNIST: the test reconstruction loss rises faster).")


@dataclass(frozen=True)
class Settings:
    """Settings of the experiment (defaults: the full run; :meth:`quick`: CI-sized).

    Attributes:
        n_train, n_test: digits (None: all 1300 training digits of the split).
        latent_dim, epochs, batch_size, lr: every autoencoder and its training (lfxai's ROAR
            trains 10 epochs).
        method: the label-free feature importance that ranks the pixels.
        ig_steps, shap_samples: its settings.
        fractions: shares of the 256 pixels removed from every training digit: distinct,
            in ``(0, 1]``, each removing at least one pixel (checked when the settings are
            built: with none, ROAR would measure nothing and its check hold vacuously).

    Raises:
        InvalidParameterError: an unknown ``method``; ``fractions`` empty, repeated, out of
            range or removing no pixel.
    """

    n_train: int | None = None
    n_test: int = 497
    latent_dim: int = 4
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    method: str = "integrated_gradients"
    ig_steps: int = 32
    shap_samples: int = 16
    fractions: tuple[float, ...] = (0.1, 0.2, 0.5)

    def __post_init__(self) -> None:
        """Refuse settings that would measure nothing: an unknown method, or ``fractions``
        that are empty (every check would then hold vacuously), repeated (one measurement
        counted twice), outside ``(0, 1]`` or removing no pixel."""
        if self.method not in STUDIED_METHODS:
            raise InvalidParameterError(
                f"Settings.method must be one of {STUDIED_METHODS}; got {self.method!r}.")
        fractions = self.fractions
        expected = ("a non-empty tuple of distinct shares of the pixels in (0, 1], each "
                    f"removing at least one of the {_N_PIXELS} pixels (e.g. (0.1, 0.2, 0.5))")
        if not isinstance(fractions, (tuple, list)) or not fractions:
            raise InvalidParameterError(f"Settings.fractions must be {expected}; got "
                                        f"{fractions!r}.")
        share = Interval(float, 0, 1, closed="right")
        bad = [f for f in fractions if not share.accepts(f) or round(f * _N_PIXELS) < 1]
        if bad:
            raise InvalidParameterError(
                f"Settings.fractions must be {expected}; got {list(fractions)!r} "
                f"({bad[0]!r} is not).")
        counts = [round(f * _N_PIXELS) for f in fractions]
        if len(set(counts)) != len(counts):  # the same measurement counted twice
            raise InvalidParameterError(
                f"Settings.fractions must be {expected}; got {list(fractions)!r}, which repeats "
                f"a fraction (pixels removed per digit: {counts}).")
        object.__setattr__(self, "fractions", tuple(fractions))  # frozen: one spelling

    @classmethod
    def quick(cls) -> Settings:
        # smaller batches and a larger step than the defaults: with 400 digits the default
        # batches give too few steps for the autoencoder to learn anything in 6 epochs
        return cls(n_train=400, n_test=200, epochs=6, batch_size=32, lr=3e-3, ig_steps=16,
                   fractions=(0.2, 0.5))


@dataclass(kw_only=True)
class RoarResult(ExperimentResult):
    """Adds ``fractions``; ``test_mse[ranking]`` and ``probe[ranking]`` ``(n_seeds,
    n_fractions)`` for ``ranking`` in ``("important", "random")``; ``baseline_mse`` and
    ``baseline_probe`` ``(n_seeds,)`` of the autoencoder trained on unmasked digits."""

    fractions: tuple[float, ...]
    test_mse: dict[str, np.ndarray]
    probe: dict[str, np.ndarray]
    baseline_mse: np.ndarray
    baseline_probe: np.ndarray


def reconstruction_error(model: nn.Module, inputs: torch.Tensor) -> float:
    """Mean squared error of ``model``'s reconstructions of ``inputs`` (eval mode)."""
    with preserve_model_state(model), torch.no_grad():
        model.eval()
        return float(((ModelAccess(model, head=None).output(inputs) - inputs) ** 2).mean())


def linear_probe_accuracy(model: nn.Module, data: Split) -> float:
    """Test accuracy of the library's default classification probe (a logistic regression on
    the standardised codes, :func:`~latentsurgeon.concepts.probe.default_probe`) on the
    encoder's codes, trained on the training digits' codes."""
    from latentsurgeon.concepts.probe import default_probe  # scikit-learn: imported on use

    train = representations(model, "encoder", data.train_x).numpy()
    test = representations(model, "encoder", data.test_x).numpy()
    probe = default_probe("classification")
    probe.fit(train, data.train_y.numpy())
    return float(probe.score(test, data.test_y.numpy()))


def run(seeds: Sequence[int] = (0, 1, 2), *, settings: Settings | None = None,
        quick: bool = False, progress: bool = True) -> RoarResult:
    """Run the experiment over ``seeds`` (each: its own split, initialisation and training).

    Returns a :class:`RoarResult`; no file is written (see
    :func:`~latentsurgeon.experiments.run_experiment`).
    """
    seeds = check_seeds(seeds)
    settings = settings or (Settings.quick() if quick else Settings())  # validated when built
    rankings = ("important", "random")
    shape = (len(seeds), len(settings.fractions))
    test_mse = {r: np.zeros(shape) for r in rankings}
    probe = {r: np.zeros(shape) for r in rankings}
    baseline_mse, baseline_probe = np.zeros(len(seeds)), np.zeros(len(seeds))
    rows = []
    bar = tqdm(total=len(seeds) * (1 + 2 * len(settings.fractions)), desc=NAME,
               unit="model", disable=None if progress else True)

    def trained(initial: nn.Module, inputs: torch.Tensor, seed: int) -> nn.Module:
        model = copy.deepcopy(initial)
        train_autoencoder(model, inputs, epochs=settings.epochs, lr=settings.lr,
                          batch_size=settings.batch_size, seed=seed, progress=False)
        bar.update()
        return model

    for s, seed in enumerate(seeds):
        data = digit_split(seed, n_train=settings.n_train, n_test=settings.n_test)
        initial = seeded(seed, lambda: PerturbedAutoencoder(latent_dim=settings.latent_dim))
        model = trained(initial, data.train_x, seed)
        baseline_mse[s] = reconstruction_error(model, data.test_x)
        baseline_probe[s] = linear_probe_accuracy(model, data)
        rows.append({"seed": seed, "ranking": "none", "fraction": 0.0,
                     "test_mse": baseline_mse[s], "probe_accuracy": baseline_probe[s]})
        scores = {
            "important": feature_importance(model, data.train_x, settings.method,
                                            layer="encoder", seed=seed,
                                            ig_steps=settings.ig_steps,
                                            shap_samples=settings.shap_samples),
            "random": random_scores(data.train_x.shape, seed),
        }
        for ranking in rankings:
            for i, fraction in enumerate(settings.fractions):
                masks = top_feature_masks(scores[ranking], int(round(fraction * _N_PIXELS)))
                retrained = trained(initial, data.train_x * masks, seed)
                test_mse[ranking][s, i] = reconstruction_error(retrained, data.test_x)
                probe[ranking][s, i] = linear_probe_accuracy(retrained, data)
                rows.append({"seed": seed, "ranking": ranking, "fraction": fraction,
                             "test_mse": test_mse[ranking][s, i],
                             "probe_accuracy": probe[ranking][s, i]})
        logger.info("%s seed %d: mse %s, probe %s", NAME, seed,
                    {r: np.round(v[s], 4).tolist() for r, v in test_mse.items()},
                    {r: np.round(v[s], 3).tolist() for r, v in probe.items()})
    bar.close()
    return _summarise(seeds, settings, quick, test_mse, probe, baseline_mse, baseline_probe,
                      rows)


def _summarise(seeds: tuple[int, ...], settings: Settings, quick: bool,
               test_mse: dict[str, np.ndarray], probe: dict[str, np.ndarray],
               baseline_mse: np.ndarray, baseline_probe: np.ndarray, rows: list[dict]
               ) -> RoarResult:
    summary = [{"ranking": "none", "fraction": 0.0, "measure": measure,
                "mean": mean_interval(values).mean,
                "half_width_95": mean_interval(values).half_width, "n_seeds": len(seeds)}
               for measure, values in (("test_mse", baseline_mse),
                                       ("probe_accuracy", baseline_probe))]
    for measure, table in (("test_mse", test_mse), ("probe_accuracy", probe)):
        for ranking, values in table.items():
            for i, fraction in enumerate(settings.fractions):
                interval = mean_interval(values[:, i])
                summary.append({"ranking": ranking, "fraction": fraction, "measure": measure,
                                "mean": interval.mean, "half_width_95": interval.half_width,
                                "n_seeds": interval.n})
    method = LABELS[settings.method]
    headline = [f"unmasked training: test MSE {mean_interval(baseline_mse).format(4)}, probe "
                f"accuracy {mean_interval(baseline_probe)}"]
    for i, fraction in enumerate(settings.fractions):
        headline.append(
            f"{fraction:.0%} of the pixels removed: test MSE {method}-first "
            f"{mean_interval(test_mse['important'][:, i]).format(4)} vs random "
            f"{mean_interval(test_mse['random'][:, i]).format(4)}; probe accuracy "
            f"{mean_interval(probe['important'][:, i])} vs {mean_interval(probe['random'][:, i])}")
    hurts = test_mse["important"].mean(axis=0) > test_mse["random"].mean(axis=0)
    checks = {f"removing the pixels {method} ranks highest raises the test reconstruction "
              "error more than removing random pixels, at every fraction": bool(hurts.all())}
    return RoarResult(
        name=NAME, title=TITLE, claim=CLAIM, seeds=seeds, quick=quick,
        settings=asdict(settings), records={"roar": rows, "summary": summary},
        headline=headline, checks=checks, fractions=tuple(settings.fractions),
        test_mse=test_mse, probe=probe, baseline_mse=baseline_mse,
        baseline_probe=baseline_probe)


def report(result: RoarResult, section: Section) -> None:
    """Fill the experiment's section of the HTML report."""
    import matplotlib.pyplot as plt

    from latentsurgeon.experiments._plots import curves

    method = LABELS[result.settings["method"]]
    section.heading(TITLE)
    section.paragraph(f"The paper's claim: {CLAIM}", note=True)
    section.paragraph(
        f"Label-free {method} ranks the pixels of every training digit for the trained "
        "encoder; the top-ranked (or random) pixels are set to zero in the training set and a "
        "new autoencoder is trained on it from the same initialisation. Measured on the clean "
        "test digits: the reconstruction error (headline) and the accuracy of a logistic "
        "regression on the retrained encoder's codes (labels used for this probe only).")
    for line in result.headline:
        section.paragraph(line)
    rows = [["0%", mean_interval(result.baseline_mse).format(4), "",
             mean_interval(result.baseline_probe).format(3), ""]]
    for i, fraction in enumerate(result.fractions):
        rows.append([f"{fraction:.0%}",
                     mean_interval(result.test_mse["important"][:, i]).format(4),
                     mean_interval(result.test_mse["random"][:, i]).format(4),
                     mean_interval(result.probe["important"][:, i]).format(3),
                     mean_interval(result.probe["random"][:, i]).format(3)])
    section.table(["pixels removed", f"test MSE, {method}-first", "test MSE, random",
                   f"probe accuracy, {method}-first", "probe accuracy, random"], rows)
    x = [0.0] + [100 * f for f in result.fractions]
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.3))
    for ax, table, baseline, label in ((axes[0], result.test_mse, result.baseline_mse,
                                        "test reconstruction MSE"),
                                       (axes[1], result.probe, result.baseline_probe,
                                        "linear-probe accuracy")):
        curves(ax, x, {f"{method}-first": np.column_stack([baseline, table["important"]]),
                       "random": np.column_stack([baseline, table["random"]])},
               dashed=["random"])
        ax.set_xlabel("pixels removed from the training digits (%)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    section.figure("roar", fig, "Retrained autoencoders on the clean test digits: mean over "
                                "seeds, band = 95% t-interval.")
