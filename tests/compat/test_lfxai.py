"""``latentsurgeon.compat.lfxai``: lfxai's README example runs with only its import lines changed
(MNIST replaced by the bundled digits at 28x28), and the behaviours lfxai's own test suite and
code assert, re-derived here, hold. Where ours differ on purpose, the test pins our behaviour
and docs/compat.md says why."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients, Saliency
from torch import nn
from torch.nn import MSELoss
from torch.utils.data import DataLoader, RandomSampler, Subset, TensorDataset

from latentsurgeon.compat import lfxai
from latentsurgeon.compat.lfxai import (
    AutoEncoderMnist,
    BetaTcVaeMnist,
    BetaVaeMnist,
    ClassifierMnist,
    DecoderMnist,
    EncoderMnist,
    Identity,
    InfluenceFunctions,
    Mask,
    NearestNeighbours,
    RandomNoise,
    SimplEx,
    TracIn,
    attribute_auxiliary,
    attribute_individual_dim,
)
from latentsurgeon.data.digits import load_digits16
from latentsurgeon.errors import InvalidParameterError


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def digits28():
    """The bundled digits at 28x28 as lfxai's MNIST datasets: ``(train, test)`` of ``(image,
    label)`` pairs."""
    images, labels = load_digits16(28)
    return TensorDataset(images[:300], labels[:300]), TensorDataset(images[1500:1560],
                                                                    labels[1500:1560])


def tiny_autoencoder(input_pert=None, seed: int = 0, name: str = "tiny") -> AutoEncoderMnist:
    """An AutoEncoderMnist on 8x8 digits with a 3-unit linear code: small enough for exact
    Hessians in a test (lfxai's AutoEncoderMnist takes any encoder and decoder)."""
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    decoder = nn.Sequential(nn.Linear(3, 64), nn.Sigmoid(), nn.Unflatten(1, (1, 8, 8)))
    return AutoEncoderMnist(encoder, decoder, latent_dim=3,
                            input_pert=Identity() if input_pert is None else input_pert,
                            name=name)


@pytest.fixture(scope="module")
def digits8():
    images, labels = load_digits16(8)
    return images, labels


def loader(images, labels, batch_size=1, **kwargs):
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, **kwargs)


# -- lfxai's README example, imports changed, MNIST -> bundled digits ---------------------------
def test_readme_example_runs(digits28):
    """The README's toy example as written; only the imports and the data differ."""
    from latentsurgeon.compat.lfxai.explanations.examples import SimplEx
    from latentsurgeon.compat.lfxai.explanations.features import attribute_auxiliary
    from latentsurgeon.compat.lfxai.models.images import (
        AutoEncoderMnist,
        DecoderMnist,
        EncoderMnist,
    )
    from latentsurgeon.compat.lfxai.models.pretext import Identity

    torch.manual_seed(0)
    # Select torch device
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    # Load data (MNIST replaced: the bundled digits at 28x28, already tensors)
    train_dataset, test_dataset = digits28
    train_loader = DataLoader(train_dataset, batch_size=100)
    test_loader = DataLoader(test_dataset, batch_size=100, shuffle=False)
    # Get a model
    encoder = EncoderMnist(encoded_space_dim=10)
    decoder = DecoderMnist(encoded_space_dim=10)
    model = AutoEncoderMnist(encoder, decoder, latent_dim=10, input_pert=Identity())
    model.to(device)
    # Get label-free feature importance
    baseline = torch.zeros((1, 1, 28, 28)).to(device)  # black image as baseline
    attr_method = IntegratedGradients(model)
    feature_importance = attribute_auxiliary(encoder, test_loader,
                                             device, attr_method, baseline)
    # Get label-free example importance
    train_subset = Subset(train_dataset, indices=list(range(50)))  # (500 in the README)
    train_subloader = DataLoader(train_subset, batch_size=500)
    attr_method = SimplEx(model, loss_f=MSELoss())
    example_importance = attr_method.attribute_loader(device, train_subloader, test_loader)

    assert train_loader.batch_size == 100
    assert isinstance(feature_importance, np.ndarray)
    assert feature_importance.shape == (60, 1, 28, 28)
    assert np.isfinite(feature_importance).all() and np.abs(feature_importance).sum() > 0
    # lfxai's test_sanity_images: one row per test example, one column per training example
    assert example_importance.shape == (60, 50)
    # every row is a convex combination, the last partial block of 50 included (lfxai: zeros)
    assert torch.all(example_importance >= 0)
    assert torch.allclose(example_importance.sum(dim=1), torch.ones(60), atol=1e-5)


def test_every_documented_name_is_exported():
    names = {"attribute_auxiliary", "attribute_individual_dim", "SimplEx", "TracIn",
             "InfluenceFunctions", "NearestNeighbours", "EncoderMnist", "DecoderMnist",
             "AutoEncoderMnist", "ClassifierMnist", "BetaVaeMnist", "BetaTcVaeMnist",
             "Identity", "RandomNoise", "Mask"}
    assert names <= set(lfxai.__all__)
    from latentsurgeon.compat.lfxai.explanations import examples, features
    from latentsurgeon.compat.lfxai.models import images, pretext

    assert examples.SimplEx is SimplEx and features.attribute_auxiliary is attribute_auxiliary
    assert images.AutoEncoderMnist is AutoEncoderMnist and pretext.Mask is Mask


# -- label-free feature importance ---------------------------------------------------------------
def _lfxai_auxiliary_ig(encoder, inputs, baseline, n_steps):
    """lfxai's attribute_auxiliary for IntegratedGradients, re-derived: g(x~) = <f(x), f(x~)>
    with f(x) tiled over captum's step-major expansion (right for IG)."""
    reference = encoder(inputs).detach()

    def auxiliary(x):
        repeat = len(x) // len(reference)
        return (reference.repeat(repeat, 1) * encoder(x)).sum(dim=-1)

    return IntegratedGradients(auxiliary).attribute(inputs, baseline, n_steps=n_steps)


def test_attribute_auxiliary_matches_lfxai_for_integrated_gradients(digits8):
    model = tiny_autoencoder().eval()
    images, labels = digits8[0][:12], digits8[1][:12]
    baseline = torch.zeros(1, 1, 8, 8)
    method = IntegratedGradients(model, multiply_by_inputs=True)
    ours = attribute_auxiliary(model.encoder, loader(images, labels, batch_size=5), "cpu",
                               method, baseline)
    expected = torch.cat([_lfxai_auxiliary_ig(model.encoder, images[i:i + 5], baseline, 50)
                          for i in range(0, 12, 5)])
    np.testing.assert_allclose(ours, expected.detach().numpy(), rtol=1e-4, atol=1e-6)
    assert method.forward_func is model  # the caller's method is left as it was


def test_attribute_auxiliary_takes_a_baseline_module_and_saliency_without_one(digits8):
    model = tiny_autoencoder().eval()
    images, labels = digits8[0][:6], digits8[1][:6]
    shift = nn.Identity()  # baseline = the inputs themselves: IG of nothing is zero
    with pytest.warns(UserWarning, match="all zero"):
        zero = attribute_auxiliary(model.encoder, loader(images, labels, 3), "cpu",
                                   IntegratedGradients(model), shift)
    assert np.abs(zero).max() < 1e-6
    saliency = attribute_auxiliary(model.encoder, loader(images, labels, 3), "cpu",
                                   Saliency(model), torch.zeros(1, 1, 8, 8))
    x = images.clone().requires_grad_(True)
    z = model.encoder(x)
    (z.detach() * z).sum().backward()
    np.testing.assert_allclose(saliency, x.grad.abs().numpy(), rtol=1e-5, atol=1e-7)


def test_attribute_individual_dim_is_unit_attribution_times_activation(digits8):
    model = tiny_autoencoder().eval()
    images, labels = digits8[0][:4], digits8[1][:4]
    ours = attribute_individual_dim(model.encoder, 3, loader(images, labels, 2), "cpu",
                                    Saliency(model.encoder), None)
    assert ours.shape == (4, 3, 8, 8)  # lfxai's layout: units along the channel axis
    z = model.encoder(images).detach()
    for j in range(3):
        x = images.clone().requires_grad_(True)
        model.encoder(x)[:, j].sum().backward()
        expected = (z[:, j, None, None, None] * x.grad.abs()).abs()[:, 0]
        np.testing.assert_allclose(ours[:, j], expected.numpy(), rtol=1e-5, atol=1e-7)


# -- example importance --------------------------------------------------------------------------
def test_nearest_neighbours_is_inverse_squared_distance_for_every_test_example(digits8):
    model = tiny_autoencoder().eval()
    images, labels = digits8
    train, test = loader(images[:20], labels[:20], 20), loader(images[100:107], labels[100:107])
    scores = NearestNeighbours(model).attribute_loader("cpu", train, test, batch_size=5)
    h_train, h_test = model.encoder(images[:20]).detach(), model.encoder(images[100:107]).detach()
    expected = 1 / ((h_test[:, None] - h_train[None]) ** 2).sum(-1)
    assert scores.shape == (7, 20)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=0)  # rows 5, 6 not zero


def test_simplex_weights_reconstruct_the_test_representations(digits8):
    model = tiny_autoencoder().eval()
    images, labels = digits8
    train = torch.cat([images[:30]])
    explainer = SimplEx(model, loss_f=MSELoss(), X_train=train)
    weights = explainer.attribute(images[:3], train_idx=list(range(30)))
    h_train = model.encoder(train).detach()
    # a test point that is a training point is its own decomposition
    torch.testing.assert_close(weights @ h_train, model.encoder(images[:3]).detach(),
                               atol=2e-3, rtol=0)
    direct = SimplEx.compute_weights(model.encoder(images[:3]).detach(), h_train)
    torch.testing.assert_close(direct, weights, atol=1e-3, rtol=0)


def _per_example_gradients(model, loss_f, images):
    """lfxai's gradients, re-derived: of loss_f(x, model(x)) per example, w.r.t. the
    encoder's parameters, flattened."""
    rows = []
    for x in images:
        loss = loss_f(x[None], model(x[None]))
        grads = torch.autograd.grad(loss, list(model.encoder.parameters()))
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def test_tracin_sums_gradient_products_over_fit_checkpoints(digits8, tmp_path):
    images, labels = digits8
    model = tiny_autoencoder(name="ae")
    model.fit("cpu", loader(images[:200], labels[:200], 50, shuffle=True),
              loader(images[200:260], labels[200:260], 60), tmp_path, n_epoch=3, patience=10,
              checkpoint_interval=2)
    # lfxai's schedule: after epochs 0 and 2 (of 0..2), files <name>_checkpoint<k>.pt
    assert [p.name for p in model.checkpoints_files] == ["ae_checkpoint1.pt",
                                                          "ae_checkpoint2.pt"]
    model.train()  # lfxai's test explains a model in training mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_f = nn.L1Loss()
    train, test = images[:6], images[300:304]
    scores = TracIn(model, loss_f, tmp_path / "tracin").attribute_loader(
        "cpu", loader(train, labels[:6]), loader(test, labels[300:304]))
    assert (tmp_path / "tracin").is_dir()
    expected = torch.zeros(4, 6)
    reference = tiny_autoencoder(name="ref")
    for path in model.checkpoints_files:
        reference.load_state_dict(torch.load(path, weights_only=True))
        reference.eval()
        expected += _per_example_gradients(reference, loss_f, test) @ \
            _per_example_gradients(reference, loss_f, train).T
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-7)
    # the model keeps its weights and its mode (lfxai leaves the last checkpoint loaded)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training
    # the tensor API: X_train indexed by train_idx, times learning_rate
    explainer = TracIn(model, loss_f, tmp_path / "tracin", X_train=train)
    torch.testing.assert_close(explainer.attribute(test, [4, 1], learning_rate=0.5),
                               0.5 * expected[:, [4, 1]], rtol=1e-4, atol=1e-7)


def test_tracin_without_checkpoints_is_an_error_not_zeros(digits8, tmp_path):
    images, labels = digits8
    model = tiny_autoencoder()
    with pytest.raises(InvalidParameterError, match="checkpoint_interval"):
        TracIn(model, MSELoss(), tmp_path).attribute_loader(
            "cpu", loader(images[:3], labels[:3]), loader(images[3:5], labels[3:5]))


def test_influence_functions_are_koh_and_liangs_and_lfxais_up_to_sign_and_n(digits8, tmp_path):
    """lfxai's LiSSA solves (H/scale + damp I) v = g, then divides by scale * n_train: its
    limit is g_test^T (H + damp*scale I)^-1 g_train / n_train. Ours carries Koh and Liang's
    minus sign and no 1/n."""
    images, labels = digits8
    model = tiny_autoencoder()
    train, test = images[:8], images[300:303]
    loss_f = MSELoss()
    explainer = InfluenceFunctions(model, loss_f, tmp_path / "if")
    scores = explainer.attribute_loader(
        "cpu", loader(train, labels[:8]), loader(test, labels[300:303]),
        train_loader_replacement=loader(train, labels[:8], 4, sampler=RandomSampler(
            TensorDataset(train), replacement=True, num_samples=8)), recursion_depth=2)
    params = list(model.encoder.parameters())
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def mean_loss(vector):
        chunks = torch.split(vector, sizes)
        state = {n: c.reshape(s) for (n, _), c, s in zip(model.encoder.named_parameters(),
                                                         chunks, shapes, strict=True)}
        codes = torch.func.functional_call(model.encoder, state, (train,))
        recon = model.decoder(codes)
        return ((recon - train) ** 2).reshape(len(train), -1).mean(dim=1).mean()

    hessian = torch.autograd.functional.hessian(mean_loss, flat.double().float())
    system = hessian.double() + 1e-3 * 1000 * torch.eye(len(flat), dtype=torch.float64)
    g_train = _per_example_gradients(model.eval(), loss_f, train).double()
    g_test = _per_example_gradients(model, loss_f, test).double()
    koh_liang = -(g_test @ torch.linalg.solve(system, g_train.T))
    assert scores.shape == (3, 8)
    torch.testing.assert_close(scores, koh_liang, rtol=1e-4, atol=1e-9)
    lfxai_limit = g_test @ torch.linalg.solve(system, g_train.T) / len(train)
    torch.testing.assert_close(-scores / len(train), lfxai_limit, rtol=1e-4, atol=1e-9)


def test_influence_attribute_uses_the_hessian_of_all_of_x_train(digits8, tmp_path):
    images, _ = digits8
    model = tiny_autoencoder()
    train, test = images[:8], images[300:302]
    explainer = InfluenceFunctions(model, MSELoss(), tmp_path, X_train=train)
    full = explainer.attribute(test, list(range(8)))
    torch.testing.assert_close(explainer.attribute(test, [5, 2]), full[:, [5, 2]])


def test_every_explainer_of_lfxais_suite_scores_every_example(digits8, tmp_path):
    """lfxai's test_ts_sanity_example_importance: the four explainers on loaders of one example
    per batch, the model in training mode; ours are per example whatever the batch size."""
    images, labels = digits8
    model = tiny_autoencoder()
    model.fit("cpu", loader(images[:100], labels[:100], 50), loader(images[100:150],
              labels[100:150], 50), tmp_path, n_epoch=1, checkpoint_interval=1)
    model.train()
    l1 = nn.L1Loss()
    train, test = (images[:10], labels[:10]), (images[200:210], labels[200:210])
    explainers = [InfluenceFunctions(model, l1, tmp_path / "if_grads"),
                  TracIn(model, l1, tmp_path / "tracin_grads"), SimplEx(model, l1),
                  NearestNeighbours(model, l1)]
    for explainer in explainers:
        kwargs = {"train_loader_replacement": loader(*train, 5), "recursion_depth": 2} \
            if isinstance(explainer, InfluenceFunctions) else {}
        one = explainer.attribute_loader("cpu", loader(*train), loader(*test), **kwargs)
        five = explainer.attribute_loader("cpu", loader(*train, 5), loader(*test, 5), **kwargs)
        assert one.shape == five.shape == (10, 10), str(explainer)
        # SimplEx's weights are the exact optimum of an active set: float32 rounding of the
        # representations (batch-size dependent) moves them by its sensitivity, ~1e-7 here
        atol = 1e-6 if str(explainer) == "SimplEx" else 1e-8
        torch.testing.assert_close(one, five, rtol=1e-5, atol=atol)
        assert model.training
    assert [str(e) for e in explainers] == ["Influence Functions", "TracIn", "SimplEx", "DKNN"]


# -- the models ----------------------------------------------------------------------------------
def test_fit_saves_the_best_model_stops_early_and_records_metadata(digits8, tmp_path):
    images, labels = digits8
    model = tiny_autoencoder(RandomNoise(0.1), name="dae")
    saved = []
    model.save = lambda directory: saved.append(model.test_epoch("cpu", test))  # type: ignore
    test = loader(images[200:260], labels[200:260], 30)
    torch.manual_seed(3)
    model.fit("cpu", loader(images[:100], labels[:100], 25, shuffle=True), test, tmp_path,
              n_epoch=4, patience=10)
    assert saved and all(b < a for a, b in zip(saved, saved[1:], strict=False))
    del model.save
    model.save(tmp_path)
    assert model.load_metadata(tmp_path) == {"latent_dim": 3, "name": "dae"}
    state = torch.load(tmp_path / "dae.pt", weights_only=True)
    assert state.keys() == model.state_dict().keys()
    # patience: a test loss that never improves after the first epoch stops after patience more
    epochs = []
    stubborn = tiny_autoencoder(name="s")
    stubborn.test_epoch = lambda device, data: (epochs.append(1), 1.0)[1]  # type: ignore
    stubborn.fit("cpu", loader(images[:20], labels[:20], 20), test, tmp_path, n_epoch=10,
                 patience=2)
    assert len(epochs) == 3


def test_fit_is_reproducible_from_torchs_seed(digits8, tmp_path):
    images, labels = digits8
    states = []
    for _ in range(2):
        model = tiny_autoencoder(Mask(0.3))
        torch.manual_seed(11)
        model.fit("cpu", loader(images[:60], labels[:60], 20, shuffle=True),
                  loader(images[60:80], labels[60:80], 20), tmp_path, n_epoch=2)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_the_test_loss_is_the_pretext_tasks(digits8):
    """lfxai's test_epoch scores reconstructions of perturbed test inputs in eval mode."""
    images, labels = digits8
    model = tiny_autoencoder(RandomNoise(noise_level=5.0))
    test = loader(images[:40], labels[:40], 20)
    torch.manual_seed(0)
    noisy = model.test_epoch("cpu", test)
    clean = tiny_autoencoder(Identity()).test_epoch("cpu", test)
    assert noisy > clean  # same weights (seed 0), noise of std 5 hurts
    assert model.training  # restored


def test_pretext_perturbations_behave_as_lfxais():
    x = torch.ones(2000, 1, 1, 1)
    torch.manual_seed(0)
    assert str(Identity()) == "Reconstruction" and torch.equal(Identity()(x), x)
    noise = RandomNoise(noise_level=0.5)
    assert str(noise) == "Denoising" and noise.noise_level == 0.5
    assert abs(float((noise(x) - x).std()) - 0.5) < 0.05
    mask = Mask(mask_proportion=0.25, baseline=-1.0)
    assert str(mask) == "Inpainting"
    out = mask(x)
    assert set(out.unique().tolist()) <= {1.0, -1.0}
    assert abs(float((out == -1).float().mean()) - 0.25) < 0.03
    model = tiny_autoencoder(lambda t: t * 0)  # any callable perturbs in training mode only
    model.eval()
    assert model(torch.ones(1, 1, 8, 8)).abs().sum() > 0


def test_image_models_take_lfxais_constructors():
    assert EncoderMnist(encoded_space_dim=7)(torch.zeros(2, 1, 28, 28)).shape == (2, 7)
    assert DecoderMnist(encoded_space_dim=7)(torch.zeros(2, 7)).shape == (2, 1, 28, 28)
    clf = ClassifierMnist(EncoderMnist(5), latent_dim=5, name="clf")
    logits = clf(torch.zeros(3, 1, 28, 28))
    assert logits.shape == (3, 10)
    assert not torch.allclose(logits.sum(dim=1), torch.ones(3))  # logits, not lfxai's softmax
    for cls, n_out in ((BetaVaeMnist, 3), (BetaTcVaeMnist, 4)):
        vae = cls(latent_dims=4, beta=5).eval()
        out = vae(torch.rand(2, 1, 28, 28))
        assert len(out) == n_out and out[0].shape == (2, 1, 28, 28) and out[1].shape == (2, 4)
        mu, logvar = out[1], out[2]
        assert torch.equal(vae.latent_sample(mu, logvar), mu)  # eval mode: the mean
        vae.train()
        assert not torch.equal(vae.latent_sample(mu, logvar), mu)


def test_classifier_and_vaes_fit(digits28, tmp_path):
    train_dataset, test_dataset = digits28
    train = DataLoader(Subset(train_dataset, range(64)), batch_size=32)
    test = DataLoader(test_dataset, batch_size=30)
    torch.manual_seed(0)
    clf = ClassifierMnist(EncoderMnist(4), latent_dim=4, name="clf")
    clf.fit("cpu", train, test, tmp_path, n_epoch=1)
    loss, acc = clf.test_epoch("cpu", test)
    assert math.isfinite(loss) and 0 <= acc <= 1
    assert (tmp_path / "clf.pt").is_file() and clf.load_metadata(tmp_path)["name"] == "clf"
    for vae in (BetaVaeMnist(3, beta=2), BetaTcVaeMnist(3, beta=2)):
        before = vae.test_epoch("cpu", test)
        vae.fit("cpu", train, test, n_epoch=2)
        assert vae.test_epoch("cpu", test) < before


def test_a_vaes_posterior_mean_is_explained_at_fc_mu():
    """docs/compat.md: lfxai's ``model.encoder.mu`` is ``layer="fc_mu"`` here."""
    from latentsurgeon.explain import label_free_attribution

    torch.manual_seed(0)
    vae = BetaVaeMnist(latent_dims=3)
    images = torch.rand(4, 1, 28, 28)
    attr = label_free_attribution(vae, images, Saliency, layer="fc_mu", progress=False)
    x = images.clone().requires_grad_(True)
    mu = vae.eval().encode(x)
    (mu.detach() * mu).sum().backward()
    torch.testing.assert_close(attr, x.grad.abs(), rtol=1e-5, atol=1e-8)
