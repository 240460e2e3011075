"""Losses of the VAE family: VAE, beta-VAE (Higgins et al. 2017), beta-TC-VAE (Chen et al. 2018).

Every loss is a negative evidence lower bound with a reweighted regulariser, per sample summed
over pixels and latent units, averaged over the batch:

* :class:`VAELoss`: ``NLL(x | z) + KL(q(z|x) || p(z))``, the analytic KL of a diagonal Gaussian
  against the standard normal prior.
* :class:`BetaVAELoss`: ``NLL + beta * KL``. ``beta = 1`` is the VAE loss, to the bit.
* :class:`BetaTCVAELoss`: ``NLL + alpha * MI + beta * TC + gamma * DWKL``, Chen et al.'s
  decomposition of ``E[KL]`` into the index-code mutual information ``E[log q(z|x) - log q(z)]``,
  the total correlation ``E[log q(z) - sum_j log q(z_j)]`` and the dimension-wise KL
  ``E[sum_j log q(z_j) - log p(z)]``, where ``q(z)`` is the aggregate posterior over the whole
  data set, estimated from the minibatch (:func:`tc_decomposition`).

Reconstruction likelihoods (:func:`reconstruction_nll`): ``"bernoulli"`` (binary cross-entropy on
the decoder's logits; the default, as lfxai's), ``"gaussian"`` (fixed standard deviation
``scale`` around ``sigmoid(logits)``) and ``"laplace"`` (fixed scale). Each is the exact
negative log-density (constants included), so the losses are true negative ELBOs.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from latentsurgeon._validation import Interval, Options, validate_params
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError

__all__ = [
    "LIKELIHOODS",
    "SAMPLINGS",
    "BetaTCVAELoss",
    "BetaVAELoss",
    "TCTerms",
    "VAELoss",
    "VAEOutputs",
    "gaussian_log_density",
    "kl_normal",
    "log_importance_weights",
    "reconstruction_nll",
    "tc_decomposition",
]

LIKELIHOODS = ("bernoulli", "gaussian", "laplace")
#: ``"mws"``: minibatch-weighted sampling; ``"mss"``: minibatch-stratified sampling.
SAMPLINGS = ("mws", "mss")

_LOG_2PI = math.log(2 * math.pi)


class VAEOutputs(NamedTuple):
    """One pass of a VAE: decoder ``logits`` ``(N, ...)`` (input-shaped), posterior ``mu`` and
    ``logvar`` ``(N, D)``, the latent sample ``z`` ``(N, D)`` the logits were decoded from."""

    logits: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    z: torch.Tensor


class TCTerms(NamedTuple):
    """Per-sample terms ``(N,)`` of Chen et al.'s decomposition for a minibatch.

    ``mi + tc + dwkl == log_qz_x - log_pz``: the single-sample estimate of ``KL(q(z|x)||p(z))``,
    whatever the estimator of ``log q(z)``.
    """

    mi: torch.Tensor
    tc: torch.Tensor
    dwkl: torch.Tensor
    log_qz_x: torch.Tensor
    log_pz: torch.Tensor
    log_qz: torch.Tensor
    log_prod_qzi: torch.Tensor


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def reconstruction_nll(x: torch.Tensor, logits: torch.Tensor, likelihood: str = "bernoulli",
                       scale: float = 0.1) -> torch.Tensor:
    """Negative log-likelihood of ``x`` under the decoder's distribution, per sample.

    Args:
        x: ``(N, ...)`` data; for ``"bernoulli"`` in ``[0, 1]`` (grey levels act as soft
            targets, as in every digits VAE).
        logits: ``(N, ...)`` decoder output before the sigmoid, ``x``'s shape.
        likelihood: ``"bernoulli"`` (``Bernoulli(sigmoid(logits))``), ``"gaussian"``
            (``Normal(sigmoid(logits), scale)``) or ``"laplace"``
            (``Laplace(sigmoid(logits), scale)``).
        scale: standard deviation (Gaussian) or scale (Laplace); ignored for Bernoulli.

    Returns:
        ``(N,)``: ``-log p(x | z)`` summed over every entry of a sample.
    """
    if x.shape != logits.shape:
        raise ShapeMismatchError(
            f"reconstruction_nll: logits must have the data's shape {tuple(x.shape)}; got "
            f"{tuple(logits.shape)}.")
    if likelihood == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    elif likelihood == "gaussian":
        mean = torch.sigmoid(logits)
        nll = 0.5 * ((x - mean) / scale) ** 2 + math.log(scale) + 0.5 * _LOG_2PI
    elif likelihood == "laplace":
        mean = torch.sigmoid(logits)
        nll = (x - mean).abs() / scale + math.log(2 * scale)
    else:
        raise InvalidParameterError(
            f"likelihood must be one of {LIKELIHOODS}; got {likelihood!r}.")
    return _flat(nll).sum(dim=1)


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, diag(exp(logvar))) || N(0, I))`` per sample: ``(N, D) -> (N,)``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=1)


def gaussian_log_density(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise ``log N(z; mu, exp(logvar))`` (broadcasting)."""
    return -0.5 * (_LOG_2PI + logvar + (z - mu).pow(2) * torch.exp(-logvar))


def log_importance_weights(batch_size: int, n_data: int, sampling: str = "mss",
                           device: torch.device | str | None = None,
                           dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(B, B)`` log-weights ``log w[i, j]`` of ``q(z_i | n_j)`` in the estimate
    ``q(z_i) ~ sum_j w[i, j] q(z_i | n_j)`` of the aggregate posterior.

    ``"mws"`` (minibatch-weighted sampling, Chen et al. 2018, eq. in Sec. 4.1 and the authors'
    code): every ``w[i, j] = 1 / (N B)``. These weights sum to ``1 / N`` per row, not 1 (the
    estimator is biased; its terms are offset, see ``docs/models.md``).

    ``"mss"`` (minibatch-stratified sampling, Chen et al. 2018, appendix): with ``M = B - 1``,
    the sample's own data point ``j = i`` weighs ``1 / N``, one other point (``j = i + 1``
    cyclically) weighs ``(N - M) / (N M)`` and the remaining ``M - 1`` weigh ``1 / M``; rows sum
    to 1. This is the stratified matrix with the diagonal on the diagonal: the authors' code
    (``_log_importance_weight_matrix``, copied into disentangling-vae and lfxai) strides by
    ``B`` instead of ``B + 1`` and so writes ``1 / N`` into the first column (rtqichen/beta-tcvae
    pull request 1).

    A batch of one sample gets ``w = 1 / N`` (its own point only) under both.
    """
    validate_params({"batch_size": batch_size, "n_data": n_data, "sampling": sampling},
                    {"batch_size": Interval(int, 1, None), "n_data": Interval(int, 1, None),
                     "sampling": Options(SAMPLINGS)}, owner="log_importance_weights")
    b, n = int(batch_size), int(n_data)
    if n < b:
        raise InvalidParameterError(
            f"tc_decomposition: n_data (the training set size, {n}) must be at least the batch "
            f"size ({b}); pass the size of the data the model trains on.")
    if b == 1:
        return torch.full((1, 1), -math.log(n), device=device, dtype=dtype)
    if sampling == "mws":
        return torch.full((b, b), -math.log(n * b), device=device, dtype=dtype)
    m = b - 1
    weights = torch.full((b, b), 1.0 / m, dtype=torch.float64)
    index = torch.arange(b)
    weights[index, index] = 1.0 / n
    weights[index, (index + 1) % b] = (n - m) / (n * m)
    return weights.log().to(device=device, dtype=dtype)


def tc_decomposition(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, n_data: int,
                     sampling: str = "mss") -> TCTerms:
    """Chen et al.'s decomposition of the KL term on a minibatch.

    With ``q(z) = (1/N) sum_n q(z | n)`` the aggregate posterior over the ``N = n_data``
    training samples, estimated from the batch with :func:`log_importance_weights`:
    ``mi = log q(z_i|x_i) - log q(z_i)``, ``tc = log q(z_i) - sum_j log q(z_ij)``,
    ``dwkl = sum_j log q(z_ij) - log p(z_i)``.

    Args:
        z: ``(B, D)`` samples, ``z_i ~ q(z | x_i)``.
        mu, logvar: ``(B, D)`` posterior parameters of the batch.
        n_data: size of the training set (``N``); at least ``B``.
        sampling: ``"mss"`` (default, as lfxai) or ``"mws"``.

    Returns:
        :class:`TCTerms` of ``(B,)`` tensors.
    """
    if z.dim() != 2 or z.shape != mu.shape or mu.shape != logvar.shape:
        raise ShapeMismatchError(
            f"tc_decomposition: z, mu and logvar must share one (B, D) shape; got "
            f"{tuple(z.shape)}, {tuple(mu.shape)}, {tuple(logvar.shape)}.")
    b = z.shape[0]
    log_w = log_importance_weights(b, n_data, sampling, device=z.device, dtype=z.dtype)
    # pair[i, j, d] = log q(z_id | x_j): every sample against every posterior of the batch
    pair = gaussian_log_density(z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0))
    log_qz_x = torch.diagonal(pair, dim1=0, dim2=1).sum(dim=0)
    log_pz = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z)).sum(dim=1)
    log_qz = torch.logsumexp(log_w + pair.sum(dim=2), dim=1)
    log_prod_qzi = torch.logsumexp(log_w.unsqueeze(2) + pair, dim=1).sum(dim=1)
    return TCTerms(mi=log_qz_x - log_qz, tc=log_qz - log_prod_qzi, dwkl=log_prod_qzi - log_pz,
                   log_qz_x=log_qz_x, log_pz=log_pz, log_qz=log_qz, log_prod_qzi=log_prod_qzi)


def _check_outputs(x: torch.Tensor, out: Any) -> VAEOutputs:
    if not isinstance(out, VAEOutputs):
        if isinstance(out, tuple) and len(out) == 4:
            out = VAEOutputs(*out)
        else:
            raise InvalidParameterError(
                "a VAE loss takes (x, outputs) with outputs = VAEOutputs(logits, mu, logvar, z) "
                "(what VAE.outputs(x) returns).")
    if out.logits.shape != x.shape:
        raise ShapeMismatchError(
            f"the decoder's logits must have the data's shape {tuple(x.shape)}; got "
            f"{tuple(out.logits.shape)}.")
    return out


class VAELoss:
    """The negative ELBO: ``mean_i [NLL(x_i | z_i) + KL(q(z|x_i) || N(0, I))]``.

    Args:
        likelihood: ``"bernoulli"``, ``"gaussian"`` or ``"laplace"``
            (:func:`reconstruction_nll`).
        scale: the Gaussian's standard deviation or the Laplace scale (ignored for Bernoulli).

    Calling ``loss(x, outputs)`` returns ``{"loss", "recon", "kl"}`` (batch means), the form
    :func:`~latentsurgeon.training.train` records per epoch.
    """

    _constraints = {"likelihood": Options(LIKELIHOODS),
                    "scale": Interval(float, 0, None, closed="neither")}

    def __init__(self, likelihood: str = "bernoulli", scale: float = 0.1) -> None:
        self.likelihood = likelihood
        self.scale = scale
        self._validate()

    def _validate(self) -> None:
        validate_params(vars(self), self._constraints, owner=type(self).__name__)

    def _recon_and_kl(self, x: torch.Tensor, out: VAEOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        recon = reconstruction_nll(x, out.logits, self.likelihood, float(self.scale))
        return recon, kl_normal(out.mu, out.logvar)

    def __call__(self, x: torch.Tensor, outputs: VAEOutputs) -> dict[str, torch.Tensor]:
        out = _check_outputs(x, outputs)
        recon, kl = self._recon_and_kl(x, out)
        return {"loss": (recon + kl).mean(), "recon": recon.mean(), "kl": kl.mean()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class BetaVAELoss(VAELoss):
    """Higgins et al. (2017): ``mean_i [NLL(x_i | z_i) + beta * KL(q(z|x_i) || N(0, I))]``.

    Args:
        beta: weight of the KL term (lfxai's ``BetaHLoss`` default: 4).
        likelihood, scale: as :class:`VAELoss`.
    """

    _constraints = {**VAELoss._constraints, "beta": Interval(float, 0, None)}

    def __init__(self, beta: float = 4.0, likelihood: str = "bernoulli", scale: float = 0.1
                 ) -> None:
        self.beta = beta
        super().__init__(likelihood=likelihood, scale=scale)

    def __call__(self, x: torch.Tensor, outputs: VAEOutputs) -> dict[str, torch.Tensor]:
        out = _check_outputs(x, outputs)
        recon, kl = self._recon_and_kl(x, out)
        return {"loss": (recon + float(self.beta) * kl).mean(), "recon": recon.mean(),
                "kl": kl.mean()}


class BetaTCVAELoss(VAELoss):
    """Chen et al. (2018): ``mean_i [NLL + alpha * MI + beta * TC + gamma * DWKL]``.

    The three terms come from :func:`tc_decomposition` on each minibatch; ``alpha = beta =
    gamma = 1`` gives ``NLL + log q(z|x) - log p(z)``, the single-sample (Monte Carlo) negative
    ELBO. Defaults are lfxai's ``BtcvaeLoss`` (``alpha=1, beta=6, gamma=1``, stratified
    sampling); lfxai's annealing of the regulariser is not reproduced.

    Args:
        n_data: number of training samples (the ``N`` of the aggregate posterior).
        alpha: weight of the index-code mutual information.
        beta: weight of the total correlation.
        gamma: weight of the dimension-wise KL.
        sampling: ``"mss"`` (minibatch-stratified) or ``"mws"`` (minibatch-weighted).
        likelihood, scale: as :class:`VAELoss`.

    Returns (when called) ``{"loss", "recon", "kl" (analytic, for monitoring), "mi", "tc",
    "dwkl"}``.
    """

    _constraints = {**VAELoss._constraints, "n_data": Interval(int, 1, None),
                    "alpha": Interval(float, 0, None), "beta": Interval(float, 0, None),
                    "gamma": Interval(float, 0, None), "sampling": Options(SAMPLINGS)}

    def __init__(self, n_data: int, alpha: float = 1.0, beta: float = 6.0, gamma: float = 1.0,
                 sampling: str = "mss", likelihood: str = "bernoulli", scale: float = 0.1
                 ) -> None:
        self.n_data = n_data
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma
        self.sampling = sampling
        super().__init__(likelihood=likelihood, scale=scale)

    def __call__(self, x: torch.Tensor, outputs: VAEOutputs) -> dict[str, torch.Tensor]:
        out = _check_outputs(x, outputs)
        recon, kl = self._recon_and_kl(x, out)
        terms = tc_decomposition(out.z, out.mu, out.logvar, int(self.n_data), self.sampling)
        total = recon + float(self.alpha) * terms.mi + float(self.beta) * terms.tc \
            + float(self.gamma) * terms.dwkl
        return {"loss": total.mean(), "recon": recon.mean(), "kl": kl.mean(),
                "mi": terms.mi.mean(), "tc": terms.tc.mean(), "dwkl": terms.dwkl.mean()}
