"""VAE losses against analytic results and independent computations.

The KL and the likelihoods against torch.distributions; the beta-VAE at beta=1 against the VAE;
the beta-TC-VAE decomposition against its telescoping identity, the analytic KL in expectation,
a per-row loop written from the paper's text, and a brute-force aggregate posterior (the exact
mixture over a small data set, via torch.distributions.MixtureSameFamily).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    Laplace,
    MixtureSameFamily,
    Normal,
    kl_divergence,
)

from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError
from latentsurgeon.models import (
    BetaTCVAELoss,
    BetaVAELoss,
    VAELoss,
    VAEOutputs,
    kl_normal,
    reconstruction_nll,
    tc_decomposition,
)
from latentsurgeon.models.vae_losses import gaussian_log_density, log_importance_weights

DT = torch.float64


def _posteriors(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, d, generator=g, dtype=DT)
    if d > 1:  # correlated units: a positive total correlation to recover
        mu[:, 1] = 0.8 * mu[:, 0] + 0.3 * torch.randn(n, generator=g, dtype=DT)
    logvar = torch.log(0.2 + 0.5 * torch.rand(n, d, generator=g, dtype=DT))
    return mu, logvar


def _outputs(n: int = 6, d: int = 4, seed: int = 0) -> tuple[torch.Tensor, VAEOutputs]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 5, 5, generator=g, dtype=DT)
    logits = 2 * torch.randn(n, 1, 5, 5, generator=g, dtype=DT)
    mu, logvar = _posteriors(n, d, seed + 1)
    z = mu + (0.5 * logvar).exp() * torch.randn(n, d, generator=g, dtype=DT)
    return x, VAEOutputs(logits, mu, logvar, z)


# --- the pieces against torch.distributions -------------------------------------------------------


def test_kl_normal_matches_torch_distributions():
    mu, logvar = _posteriors(50, 7, seed=3)
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()),
                             Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(1)
    torch.testing.assert_close(kl_normal(mu, logvar), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(kl_normal(torch.zeros(3, 4), torch.zeros(3, 4)), torch.zeros(3))


@pytest.mark.parametrize("binary", [True, False])
def test_bernoulli_nll_matches_torch_distributions(binary):
    x, out = _outputs()
    if binary:
        x = (x > 0.5).to(DT)
    expected = -Bernoulli(logits=out.logits, validate_args=False).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(reconstruction_nll(x, out.logits, "bernoulli"), expected)


@pytest.mark.parametrize(("likelihood", "dist"), [("gaussian", Normal), ("laplace", Laplace)])
@pytest.mark.parametrize("scale", [0.1, 0.7])
def test_continuous_nll_matches_torch_distributions(likelihood, dist, scale):
    x, out = _outputs()
    mean = torch.sigmoid(out.logits)
    expected = -dist(mean, torch.full_like(mean, scale)).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(reconstruction_nll(x, out.logits, likelihood, scale), expected)


def test_gaussian_log_density_matches_normal():
    mu, logvar = _posteriors(9, 3, seed=5)
    z = torch.randn(9, 3, dtype=DT)
    torch.testing.assert_close(gaussian_log_density(z, mu, logvar),
                               Normal(mu, (0.5 * logvar).exp()).log_prob(z))


# --- VAE and beta-VAE -----------------------------------------------------------------------------


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "laplace"])
def test_beta_one_is_the_vae_loss_exactly(likelihood):
    x, out = _outputs(seed=2)
    vae = VAELoss(likelihood)(x, out)
    beta = BetaVAELoss(beta=1.0, likelihood=likelihood)(x, out)
    assert vae.keys() == beta.keys() == {"loss", "recon", "kl"}
    for key in vae:
        assert torch.equal(vae[key], beta[key]), key


def test_vae_loss_is_the_negative_elbo():
    x, out = _outputs(n=8, seed=4)
    std = (0.5 * out.logvar).exp()
    log_px = Bernoulli(logits=out.logits, validate_args=False).log_prob(x).flatten(1).sum(1)
    kl = kl_divergence(Independent(Normal(out.mu, std), 1),
                       Independent(Normal(torch.zeros_like(std), torch.ones_like(std)), 1))
    terms = VAELoss()(x, out)
    torch.testing.assert_close(terms["loss"], (kl - log_px).mean())
    torch.testing.assert_close(terms["kl"], kl.mean())


def test_beta_vae_weighs_the_kl():
    x, out = _outputs(seed=6)
    base = VAELoss()(x, out)
    for beta in (0.0, 4.0, 10.0):
        terms = BetaVAELoss(beta=beta)(x, out)
        torch.testing.assert_close(terms["loss"], base["recon"] + beta * base["kl"])


# --- beta-TC-VAE ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sampling", ["mss", "mws"])
def test_tc_terms_telescope_to_the_single_sample_kl(sampling):
    x, out = _outputs(n=32, d=5, seed=7)
    terms = tc_decomposition(out.z, out.mu, out.logvar, n_data=500, sampling=sampling)
    std = (0.5 * out.logvar).exp()
    log_qz_x = Independent(Normal(out.mu, std), 1).log_prob(out.z)
    log_pz = Independent(Normal(torch.zeros_like(std), torch.ones_like(std)), 1).log_prob(out.z)
    torch.testing.assert_close(terms.log_qz_x, log_qz_x)
    torch.testing.assert_close(terms.log_pz, log_pz)
    torch.testing.assert_close(terms.mi + terms.tc + terms.dwkl, log_qz_x - log_pz)


@pytest.mark.parametrize("sampling", ["mss", "mws"])
def test_tc_terms_sum_to_the_analytic_kl_in_expectation(sampling):
    # Many draws z ~ q(z|x) of one batch: the mean of mi + tc + dwkl is a Monte Carlo estimate
    # of KL(q(z|x) || p(z)); it must agree with the closed form within 4 standard errors.
    mu, logvar = _posteriors(16, 4, seed=8)
    g = torch.Generator().manual_seed(9)
    draws = []
    for _ in range(400):
        z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, generator=g, dtype=DT)
        t = tc_decomposition(z, mu, logvar, n_data=1000, sampling=sampling)
        draws.append(t.mi + t.tc + t.dwkl)
    draws = torch.stack(draws)  # (draws, batch)
    estimate, se = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    assert bool((estimate - kl_normal(mu, logvar)).abs().le(4 * se).all())


def _paper_log_qz(z, mu, logvar, n_data, sampling):
    """log q(z_i) and sum_d log q(z_id), one row at a time, from the paper's description."""
    b = z.shape[0]
    m = b - 1
    log_qz, log_prod = [], []
    for i in range(b):
        if sampling == "mws":
            w = torch.full((b,), 1.0 / (n_data * b), dtype=DT)
        else:  # own point 1/N, one stratum representative (N-M)/(NM), the others 1/M
            w = torch.full((b,), 1.0 / m, dtype=DT)
            w[i] = 1.0 / n_data
            w[(i + 1) % b] = (n_data - m) / (n_data * m)
        dens = Normal(mu, (0.5 * logvar).exp()).log_prob(z[i]).exp()  # (b, D): q(z_id | x_j)
        log_qz.append(torch.log((w * dens.prod(1)).sum()))
        log_prod.append(torch.log((w[:, None] * dens).sum(0)).sum())
    return torch.stack(log_qz), torch.stack(log_prod)


@pytest.mark.parametrize("sampling", ["mss", "mws"])
def test_tc_decomposition_matches_a_per_row_loop(sampling):
    _, out = _outputs(n=12, d=3, seed=10)
    terms = tc_decomposition(out.z, out.mu, out.logvar, n_data=100, sampling=sampling)
    log_qz, log_prod = _paper_log_qz(out.z, out.mu, out.logvar, 100, sampling)
    torch.testing.assert_close(terms.log_qz, log_qz)
    torch.testing.assert_close(terms.log_prod_qzi, log_prod)


def test_importance_weights_of_stratified_sampling():
    n = 50
    for b in (2, 3, 7, 50):
        w = log_importance_weights(b, n, "mss", dtype=DT).exp()
        torch.testing.assert_close(w.sum(1), torch.ones(b, dtype=DT))
        # the sample's own posterior weighs 1/N: on the diagonal (the authors' code strides by
        # B and writes it into the first column instead)
        torch.testing.assert_close(torch.diagonal(w), torch.full((b,), 1.0 / n, dtype=DT))
    w = log_importance_weights(4, n, "mws", dtype=DT).exp()
    torch.testing.assert_close(w, torch.full((4, 4), 1.0 / (n * 4), dtype=DT))
    for sampling in ("mss", "mws"):
        assert log_importance_weights(1, n, sampling, dtype=DT).exp().item() == pytest.approx(1 / n)
    with pytest.raises(InvalidParameterError, match="n_data"):
        log_importance_weights(10, 5)


def _brute_force(mu, logvar, z, owner):
    """Per-sample exact terms with the aggregate posterior as the full mixture over the data."""
    std = (0.5 * logvar).exp()
    mix = Categorical(torch.ones(len(mu), dtype=DT))
    log_qz = MixtureSameFamily(mix, Independent(Normal(mu, std), 1)).log_prob(z)
    log_qzj = torch.stack([MixtureSameFamily(mix, Normal(mu[:, j], std[:, j])).log_prob(z[:, j])
                           for j in range(mu.shape[1])], 1).sum(1)
    log_qz_x = Independent(Normal(mu[owner], std[owner]), 1).log_prob(z)
    log_pz = Normal(torch.zeros_like(z), torch.ones_like(z)).log_prob(z).sum(1)
    return {"mi": log_qz_x - log_qz, "tc": log_qz - log_qzj, "dwkl": log_qzj - log_pz}


def test_weighted_sampling_over_the_whole_data_is_exact_up_to_its_offsets():
    # With the batch equal to the data set, minibatch-weighted sampling's q(z) is the exact
    # mixture divided by N: each term is exact, shifted by a constant (log N, (D-1) log N,
    # -D log N), which carries no gradient.
    n, d = 40, 3
    mu, logvar = _posteriors(n, d, seed=11)
    g = torch.Generator().manual_seed(12)
    z = mu + (0.5 * logvar).exp() * torch.randn(n, d, generator=g, dtype=DT)
    terms = tc_decomposition(z, mu, logvar, n_data=n, sampling="mws")
    exact = _brute_force(mu, logvar, z, torch.arange(n))
    log_n = math.log(n)
    torch.testing.assert_close(terms.mi, exact["mi"] + log_n)
    torch.testing.assert_close(terms.tc, exact["tc"] + (d - 1) * log_n)
    torch.testing.assert_close(terms.dwkl, exact["dwkl"] - d * log_n)


@pytest.mark.parametrize(("batch", "tolerance"), [(40, 0.05), (20, 0.15)])
def test_stratified_sampling_recovers_the_brute_force_terms(batch, tolerance):
    # Random batches of a small data set; the estimator's mean over many batches against the
    # exact expectations (the same z draws, the exact mixture). Stratified sampling estimates
    # q(z) without bias, log q(z) with a small bias that shrinks as the batch grows.
    n, d = 40, 3
    mu, logvar = _posteriors(n, d, seed=13)
    g = torch.Generator().manual_seed(14)
    est = {"mi": [], "tc": [], "dwkl": []}
    exact = {"mi": [], "tc": [], "dwkl": []}
    for _ in range(300):
        idx = torch.randperm(n, generator=g)[:batch]
        z = mu[idx] + (0.5 * logvar[idx]).exp() * torch.randn(batch, d, generator=g, dtype=DT)
        terms = tc_decomposition(z, mu[idx], logvar[idx], n_data=n, sampling="mss")
        truth = _brute_force(mu, logvar, z, idx)
        for key in est:
            est[key].append(getattr(terms, key))
            exact[key].append(truth[key])
    means = {k: (torch.cat(est[k]).mean().item(), torch.cat(exact[k]).mean().item())
             for k in est}
    assert means["tc"][1] > 0.1, "the planted correlation must give a visible total correlation"
    for key, (ours, truth) in means.items():
        assert abs(ours - truth) < tolerance, (key, ours, truth)


def test_beta_tc_loss_with_unit_weights_is_the_monte_carlo_negative_elbo():
    x, out = _outputs(n=10, d=3, seed=15)
    terms = BetaTCVAELoss(n_data=200, alpha=1.0, beta=1.0, gamma=1.0)(x, out)
    std = (0.5 * out.logvar).exp()
    log_px = Bernoulli(logits=out.logits, validate_args=False).log_prob(x).flatten(1).sum(1)
    log_qz_x = Independent(Normal(out.mu, std), 1).log_prob(out.z)
    log_pz = Normal(torch.zeros_like(out.z), torch.ones_like(out.z)).log_prob(out.z).sum(1)
    torch.testing.assert_close(terms["loss"], (log_qz_x - log_pz - log_px).mean())
    assert set(terms) == {"loss", "recon", "kl", "mi", "tc", "dwkl"}


def test_beta_tc_loss_weighs_each_term():
    x, out = _outputs(n=10, d=3, seed=16)
    loss = BetaTCVAELoss(n_data=200, alpha=0.5, beta=6.0, gamma=2.0, sampling="mws")
    terms = loss(x, out)
    expected = terms["recon"] + 0.5 * terms["mi"] + 6.0 * terms["tc"] + 2.0 * terms["dwkl"]
    torch.testing.assert_close(terms["loss"], expected)


# --- bad input ------------------------------------------------------------------------------------


def test_bad_parameters_name_themselves():
    with pytest.raises(InvalidParameterError, match="likelihood"):
        VAELoss("poisson")
    with pytest.raises(InvalidParameterError, match="scale"):
        VAELoss("gaussian", scale=0.0)
    with pytest.raises(InvalidParameterError, match="beta"):
        BetaVAELoss(beta=-1.0)
    with pytest.raises(InvalidParameterError, match="sampling"):
        BetaTCVAELoss(n_data=10, sampling="iw")
    with pytest.raises(InvalidParameterError, match="n_data"):
        BetaTCVAELoss(n_data=0)
    x, out = _outputs(n=6)
    with pytest.raises(InvalidParameterError, match="n_data"):
        BetaTCVAELoss(n_data=3)(x, out)
    with pytest.raises(ShapeMismatchError):
        VAELoss()(x[:, :, :4], out)
    with pytest.raises(InvalidParameterError, match="VAEOutputs"):
        VAELoss()(x, out.logits)
    with pytest.raises(ShapeMismatchError):
        tc_decomposition(out.z, out.mu[:, :2], out.logvar, n_data=10)
