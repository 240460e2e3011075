"""The VAE model and its training recipe with each loss."""

from __future__ import annotations

import pytest
import torch

from latentsurgeon.data import load_digits16
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError
from latentsurgeon.models import VAE, BetaTCVAELoss, BetaVAELoss, VAELoss, VAEOutputs, train_vae


@pytest.fixture(scope="module")
def digits():
    images, labels = load_digits16()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return images[order], labels[order]


def test_layout_and_shapes():
    torch.manual_seed(0)
    vae = VAE(latent_dim=6, hidden=32)
    assert [n for n, _ in vae.named_children()] == ["encoder", "fc_mu", "fc_logvar", "decoder"]
    x = torch.rand(5, 1, 16, 16)
    mu, logvar = vae.posterior(x)
    assert mu.shape == logvar.shape == (5, 6)
    assert torch.equal(vae.encode(x), mu)
    out = vae.outputs(x, sample=True)
    assert isinstance(out, VAEOutputs) and out.logits.shape == x.shape and out.z.shape == (5, 6)
    recon = vae.eval()(x)
    assert recon.shape == x.shape and recon.min() > 0 and recon.max() < 1
    assert torch.equal(vae.decode(mu), recon)
    with pytest.raises(ShapeMismatchError):
        vae.decode(torch.zeros(2, 5))
    with pytest.raises(ShapeMismatchError, match="unsqueeze"):
        vae(torch.rand(2, 16, 16))
    with pytest.raises(InvalidParameterError, match="hidden"):
        VAE(hidden=0)


def test_samples_in_training_and_the_mean_in_eval():
    torch.manual_seed(0)
    vae = VAE(latent_dim=4)
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        vae.eval()
        assert torch.equal(vae(x), vae(x))
        assert torch.equal(vae.outputs(x).z, vae.encode(x))
        vae.train()
        torch.manual_seed(1)
        first = vae(x)
        torch.manual_seed(1)
        assert torch.equal(vae(x), first)  # the global RNG drives the samples
        assert not torch.equal(vae(x), first)
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.zeros(20000, 2), torch.log(torch.tensor([[0.25, 4.0]])).expand(20000, 2)
    z = VAE.reparameterize(mu + 1.0, logvar, generator=g)
    torch.testing.assert_close(z.mean(0), torch.ones(2), atol=0.05, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([0.5, 2.0]), atol=0.05, rtol=0)


@pytest.mark.parametrize("loss_name", ["vae", "beta", "btcvae", "gaussian", "laplace"])
def test_each_loss_trains(digits, loss_name, tmp_path):
    images = digits[0][:256]
    loss = {"vae": VAELoss(), "beta": BetaVAELoss(beta=4.0),
            "btcvae": BetaTCVAELoss(n_data=len(images), beta=6.0),
            "gaussian": VAELoss("gaussian"), "laplace": VAELoss("laplace", scale=0.2)}[loss_name]
    torch.manual_seed(0)
    vae = VAE(latent_dim=4, hidden=32)
    history = train_vae(vae, images, loss=loss, epochs=3, seed=0, progress=False,
                        checkpoint_dir=tmp_path)
    assert not vae.training
    assert history.loss[-1] < history.loss[0]
    assert history.metrics["recon"][-1] < history.metrics["recon"][0]
    assert len(history.checkpoints) == 3
    if loss_name == "btcvae":
        assert {"mi", "tc", "dwkl"} <= set(history.metrics)


def test_training_is_seeded(digits):
    images = digits[0][:128]

    def run(seed):
        torch.manual_seed(0)
        vae = VAE(latent_dim=4, hidden=32)
        train_vae(vae, images, epochs=1, seed=seed, progress=False)
        return vae.state_dict()

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(a[k], v) for k, v in b.items())
    assert any(not torch.equal(a[k], v) for k, v in c.items())


def test_recipe_rejects_what_it_cannot_train(digits):
    with pytest.raises(InvalidParameterError, match="outputs"):
        train_vae(torch.nn.Linear(3, 3), digits[0][:8], epochs=1, progress=False)
    with pytest.raises(InvalidParameterError, match="loss"):
        train_vae(VAE(), digits[0][:8], loss="elbo", epochs=1, progress=False)


@pytest.mark.slow
def test_beta_squeezes_the_kl(digits):
    # Higgins et al.'s lever: a larger beta buys a smaller KL (less information in the code)
    # with a worse reconstruction; mean over three seeds.
    images = digits[0][:1300]
    kl, recon = {1.0: [], 8.0: []}, {1.0: [], 8.0: []}
    for seed in range(3):
        for beta in kl:
            torch.manual_seed(seed)
            vae = VAE()
            history = train_vae(vae, images, loss=BetaVAELoss(beta=beta), epochs=15, seed=seed,
                                progress=False)
            kl[beta].append(history.metrics["kl"][-1])
            recon[beta].append(history.metrics["recon"][-1])
    assert sum(kl[8.0]) < sum(kl[1.0])
    assert sum(recon[8.0]) > sum(recon[1.0])
