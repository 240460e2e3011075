"""Disentangled VAEs under label-free explanations (lfxai's ``disvae``).

beta-VAE (Higgins et al. 2017) and beta-TC-VAE (Chen et al. 2018) raise ``beta`` to disentangle
the latent units. If disentangled units captured distinct aspects of an image, the saliency maps
of different units would become less alike as ``beta`` grows. For each loss and ``beta`` (beta 1
of beta-VAE is the plain VAE), a VAE is trained on the digits and label-free GradientShap
explains each unit of the posterior mean (``fc_mu``) for every test digit, weighted by the
unit's value (lfxai's ``attribute_individual_dim``). Measured:

* the Pearson correlation between the saliency maps of different units (over all test digits and
  pixels), averaged over the pairs of units;
* the entropy of the units' saliency per pixel: ``-sum_j p_j log p_j`` with ``p_j`` unit ``j``'s
  share of the pixel's saliency, averaged over the pixels with any saliency (``log D`` when every
  unit looks at the pixel equally, 0 when one unit alone does);
* the active units: units whose mean KL to the prior exceeds 0.1 nat.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from captum.attr import GradientShap
from tqdm.auto import tqdm

from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError
from latentsurgeon.experiments._base import ExperimentResult, Section, check_seeds, seeded
from latentsurgeon.experiments._data import digit_split
from latentsurgeon.experiments._stats import mean_interval, off_diagonal_mean, pearson_matrix
from latentsurgeon.explain import label_free_attribution_per_unit
from latentsurgeon.hooks import preserve_model_state
from latentsurgeon.models import VAE, BetaTCVAELoss, BetaVAELoss, train_vae

__all__ = ["CLAIM", "LOSSES", "NAME", "TITLE", "DisvaeResult", "Settings", "active_units",
           "report", "run", "saliency_entropy", "unit_correlation"]

logger = logging.getLogger(__name__)

NAME = "disvae"
TITLE = "Disentangled VAEs: are the units explained differently?"
CLAIM = ("Raising beta in beta-VAE and beta-TC-VAE does not make the saliency maps of different "
         "latent units less correlated: disentanglement does not make the units attend to "
         "different features (lfxai on MNIST and dSprites, beta in 1, 5, 10).")
#: The losses compared, by name.
LOSSES = ("beta_vae", "beta_tcvae")
LABELS = {"beta_vae": "beta-VAE", "beta_tcvae": "beta-TC-VAE"}


@dataclass(frozen=True)
class Settings:
    """Settings of the experiment (defaults: the full run; :meth:`quick`: CI-sized).

    Attributes:
        n_train, n_test: digits (None: all 1300 training digits of the split).
        latent_dim: latent units (lfxai: 3).
        epochs, batch_size, lr: every VAE's training.
        betas: the betas of both losses (beta 1 of beta-VAE is the VAE).
        losses: a subset of :data:`LOSSES`.
        likelihood, scale: the reconstruction likelihood. Gaussian with scale 0.1, because
            with a Bernoulli likelihood the small 16x16 digits carry so few nats that beta >= 5
            switches every unit off, and a dead unit's saliency is noise.
        shap_samples: GradientShap's draws per unit (black baseline, as lfxai).
        tolerance: how far the mean correlation (over seeds) at the largest beta may fall below
            the smallest beta's for the claim to count as holding. 0.05 by default: the seeds'
            standard deviation at full size is 0.01 to 0.06 (``docs/experiments.md``). The quick
            VAEs are undertrained, their units' maps nearly alike (about 0.9) and one seed in
            three can swing by 0.25, so quick runs only check that a larger beta does not
            lower the mean by more than 0.15.
    """

    n_train: int | None = None
    n_test: int = 497
    latent_dim: int = 3
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    betas: tuple[float, ...] = (1.0, 5.0, 10.0)
    losses: tuple[str, ...] = LOSSES
    likelihood: str = "gaussian"
    scale: float = 0.1
    shap_samples: int = 8
    tolerance: float = 0.05

    @classmethod
    def quick(cls) -> Settings:
        return cls(n_train=400, n_test=100, epochs=5, betas=(1.0, 10.0), shap_samples=4,
                   tolerance=0.15)


@dataclass(kw_only=True)
class DisvaeResult(ExperimentResult):
    """Adds ``betas`` and, per loss, ``(n_seeds, n_betas)`` arrays: ``correlation[loss]``
    (mean Pearson correlation between different units' saliency), ``entropy[loss]`` and
    ``active[loss]`` (active units)."""

    betas: tuple[float, ...]
    correlation: dict[str, np.ndarray]
    entropy: dict[str, np.ndarray]
    active: dict[str, np.ndarray]


def unit_correlation(saliency: torch.Tensor) -> float:
    """Mean Pearson correlation between the saliency maps of different units; ``saliency`` is
    ``(N, D, *input_shape)``, each unit's maps flattened over samples and features."""
    units = saliency.transpose(0, 1).reshape(saliency.shape[1], -1).double().numpy()
    return off_diagonal_mean(pearson_matrix(units))


def saliency_entropy(saliency: torch.Tensor) -> float:
    """Mean over features (of every sample) with any saliency of the entropy of the units'
    shares of it; ``saliency`` ``(N, D, *input_shape)``, non-negative."""
    d = saliency.shape[1]
    per_feature = saliency.transpose(1, -1).reshape(-1, d).double()
    total = per_feature.sum(dim=1)
    salient = per_feature[total > 0]
    if len(salient) == 0:
        raise LatentSurgeonError("No feature has any saliency: every unit's map is zero.")
    shares = salient / salient.sum(dim=1, keepdim=True)
    logs = torch.where(shares > 0, shares.log(), torch.zeros_like(shares))
    return float(-(shares * logs).sum(dim=1).mean())


def active_units(model: VAE, inputs: torch.Tensor, threshold: float = 0.1) -> int:
    """Units whose KL divergence to the prior, averaged over ``inputs``, exceeds
    ``threshold`` nats."""
    with preserve_model_state(model), torch.no_grad():
        model.eval()
        mu, logvar = model.posterior(inputs)
    kl = 0.5 * (mu ** 2 + logvar.exp() - 1.0 - logvar).mean(dim=0)
    return int((kl > threshold).sum())


def _loss(name: str, beta: float, n_data: int, settings: Settings) -> object:
    if name == "beta_vae":
        return BetaVAELoss(beta=float(beta), likelihood=settings.likelihood, scale=settings.scale)
    return BetaTCVAELoss(n_data=n_data, beta=float(beta), likelihood=settings.likelihood,
                         scale=settings.scale)


def run(seeds: Sequence[int] = (0, 1, 2), *, settings: Settings | None = None,
        quick: bool = False, progress: bool = True) -> DisvaeResult:
    """Run the experiment over ``seeds`` (each: its own split and initialisation, shared by
    every loss and beta of that seed, so they differ by their objective alone).

    Returns a :class:`DisvaeResult`; no file is written (see
    :func:`~latentsurgeon.experiments.run_experiment`).
    """
    seeds = check_seeds(seeds)
    settings = settings or (Settings.quick() if quick else Settings())
    unknown = [name for name in settings.losses if name not in LOSSES]
    if unknown or not settings.losses:
        raise InvalidParameterError(
            f"Settings.losses must be a non-empty subset of {LOSSES}; got {settings.losses!r}.")
    shape = (len(seeds), len(settings.betas))
    correlation = {name: np.zeros(shape) for name in settings.losses}
    entropy = {name: np.zeros(shape) for name in settings.losses}
    active = {name: np.zeros(shape) for name in settings.losses}
    rows = []
    bar = tqdm(total=len(seeds) * len(settings.losses) * len(settings.betas), desc=NAME,
               unit="model", disable=None if progress else True)
    black = torch.zeros(1, 1, 16, 16)
    for s, seed in enumerate(seeds):
        data = digit_split(seed, n_train=settings.n_train, n_test=settings.n_test)
        for name in settings.losses:
            for b, beta in enumerate(settings.betas):
                model = seeded(seed, lambda: VAE(latent_dim=settings.latent_dim))
                history = train_vae(model, data.train_x,
                                    loss=_loss(name, beta, len(data.train_x), settings),
                                    epochs=settings.epochs, lr=settings.lr,
                                    batch_size=settings.batch_size, seed=seed, progress=False)
                saliency = label_free_attribution_per_unit(
                    model, data.test_x, GradientShap, layer="fc_mu", baselines=black,
                    n_samples=settings.shap_samples, seed=seed, progress=False)
                correlation[name][s, b] = unit_correlation(saliency)
                entropy[name][s, b] = saliency_entropy(saliency)
                active[name][s, b] = active_units(model, data.test_x)
                rows.append({"seed": seed, "loss": name, "beta": beta,
                             "unit_correlation": correlation[name][s, b],
                             "saliency_entropy": entropy[name][s, b],
                             "active_units": int(active[name][s, b]),
                             "train_recon": history.metrics["recon"][-1],
                             "train_kl": history.metrics["kl"][-1],
                             **({"train_tc": history.metrics["tc"][-1]}
                                if "tc" in history.metrics else {})})
                bar.update()
        logger.info("%s seed %d: correlation %s", NAME, seed,
                    {n: np.round(v[s], 3).tolist() for n, v in correlation.items()})
    bar.close()
    return _summarise(seeds, settings, quick, correlation, entropy, active, rows)


def _summarise(seeds: tuple[int, ...], settings: Settings, quick: bool,
               correlation: dict[str, np.ndarray], entropy: dict[str, np.ndarray],
               active: dict[str, np.ndarray], rows: list[dict]) -> DisvaeResult:
    summary, headline, checks = [], [], {}
    for name in settings.losses:
        for measure, table in (("unit_correlation", correlation[name]),
                               ("saliency_entropy", entropy[name]),
                               ("active_units", active[name])):
            for b, beta in enumerate(settings.betas):
                interval = mean_interval(table[:, b])
                summary.append({"loss": name, "beta": beta, "measure": measure,
                                "mean": interval.mean, "half_width_95": interval.half_width,
                                "n_seeds": interval.n})
        parts = ", ".join(f"beta {beta:g} {mean_interval(correlation[name][:, b])}"
                          for b, beta in enumerate(settings.betas))
        ent = ", ".join(f"{mean_interval(entropy[name][:, b])}"
                        for b in range(len(settings.betas)))
        headline.append(f"{LABELS[name]}: correlation between units' saliency {parts}; "
                        f"saliency entropy {ent} (max log {settings.latent_dim} = "
                        f"{math.log(settings.latent_dim):.3f})")
        first, last = correlation[name][:, 0].mean(), correlation[name][:, -1].mean()
        checks[f"{LABELS[name]}: the units' saliency maps are not less correlated at beta "
               f"{settings.betas[-1]:g} than at beta {settings.betas[0]:g} (within "
               f"{settings.tolerance:g})"] = bool(last >= first - settings.tolerance)
    return DisvaeResult(
        name=NAME, title=TITLE, claim=CLAIM, seeds=seeds, quick=quick,
        settings=asdict(settings), records={"disvae": rows, "summary": summary},
        headline=headline, checks=checks, betas=tuple(settings.betas),
        correlation=correlation, entropy=entropy, active=active)


def report(result: DisvaeResult, section: Section) -> None:
    """Fill the experiment's section of the HTML report."""
    import matplotlib.pyplot as plt

    from latentsurgeon.experiments._plots import curves

    section.heading(TITLE)
    section.paragraph(f"The paper's claim: {CLAIM}", note=True)
    section.paragraph(
        f"VAEs with {result.settings['latent_dim']} latent units and a "
        f"{result.settings['likelihood']} likelihood (scale {result.settings['scale']}), one "
        "initialisation per seed for every loss and beta. Each unit of the posterior mean is "
        "explained by label-free GradientShap (black baseline), weighted by the unit's value.")
    for line in result.headline:
        section.paragraph(line)
    rows = []
    for name in result.correlation:
        for b, beta in enumerate(result.betas):
            rows.append([LABELS[name], f"{beta:g}",
                         mean_interval(result.correlation[name][:, b]).format(3),
                         mean_interval(result.entropy[name][:, b]).format(3),
                         mean_interval(result.active[name][:, b]).format(1)])
    section.table(["loss", "beta", "correlation between units", "saliency entropy",
                   "active units"], rows)
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.3))
    for ax, table, label in ((axes[0], result.correlation, "Pearson correlation between units"),
                             (axes[1], result.entropy, "saliency entropy")):
        curves(ax, list(result.betas), {LABELS[n]: v for n, v in table.items()})
        ax.set_xlabel("beta")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    section.figure("disvae", fig, "Units' saliency against beta: mean over seeds, band = 95% "
                                  "t-interval.")
