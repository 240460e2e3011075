"""TracIn: against per-sample gradients taken one sample at a time in a Python loop, for every
loss kind, batch size, cached or not; projection; normalisation; checkpoints; lfxai."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError
from latentsurgeon.explain import TracIn
from latentsurgeon.hooks import hook_count
from latentsurgeon.training import train

from .conftest import TinyAE, images, make_classifier, tabular

HAS_LFXAI = importlib.util.find_spec("lfxai") is not None


def loop_gradients(model: nn.Module, params: list[nn.Parameter], samples, loss_of) -> torch.Tensor:
    """One ``torch.autograd.grad`` per sample: the reference every score is checked against."""
    rows = []
    for sample in samples:
        grads = torch.autograd.grad(loss_of(model, sample), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def reference(checkpoint_dir, make_model, select, train_samples, test_samples, loss_of,
              normalize=False):
    total = 0
    for path in sorted(checkpoint_dir.glob("epoch_*.pt")):
        payload = torch.load(path, weights_only=True)
        model = make_model()
        model.load_state_dict(payload["state_dict"])
        params = select(model)
        g_train = loop_gradients(model, params, train_samples, loss_of)
        g_test = loop_gradients(model, params, test_samples, loss_of)
        if normalize:
            g_train = g_train / g_train.norm(dim=1, keepdim=True)
            g_test = g_test / g_test.norm(dim=1, keepdim=True)
        total = total + payload["lr"] * g_test @ g_train.T
    return total


def ae_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(model(x[None]), x[None])


def encoder_params(model: nn.Module) -> list[nn.Parameter]:
    return list(model.encoder.parameters())


@pytest.mark.parametrize("batch_size", [1, 7, 23])
def test_reconstruction_tracin_equals_a_python_loop(ae_checkpoints, batch_size):
    model, ckpt, x = ae_checkpoints
    expected = reference(ckpt, lambda: TinyAE().double(), encoder_params, x, x[:9], ae_loss)
    explainer = TracIn(ckpt, "reconstruction", params="encoder", batch_size=batch_size)
    scores = explainer.scores(model, x, x[:9])
    assert scores.shape == (9, 23) and scores.dtype == torch.float64
    assert explainer.lrs_ == [0.05, 0.05, 0.05]
    torch.testing.assert_close(scores, expected, rtol=1e-10, atol=1e-14)


def test_cached_and_recomputed_training_gradients_agree(ae_checkpoints):
    model, ckpt, x = ae_checkpoints
    cached = TracIn(ckpt, params="encoder", batch_size=5).fit(model, x)
    assert cached.gradients_cached_ and cached.train_block_ == (0, 23)
    fresh = TracIn(ckpt, params="encoder", batch_size=5, cache_mb=0.0).fit(model, x)
    assert not fresh.gradients_cached_
    assert torch.equal(cached.explain(x[:4]), fresh.explain(x[:4]))


def test_normalised_gradients_sum_cosines(ae_checkpoints):
    model, ckpt, x = ae_checkpoints
    expected = reference(ckpt, lambda: TinyAE().double(), encoder_params, x, x[:5], ae_loss,
                         normalize=True)
    scores = TracIn(ckpt, params="encoder", normalize=True).scores(model, x, x[:5])
    torch.testing.assert_close(scores, expected, rtol=1e-10, atol=1e-14)


def test_all_parameters_by_default_and_the_model_is_untouched(ae_checkpoints):
    model, ckpt, x = ae_checkpoints
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    expected = reference(ckpt, lambda: TinyAE().double(), lambda m: list(m.parameters()),
                         x, x[:3], ae_loss)
    scores = TracIn(ckpt).scores(model, x, x[:3])
    torch.testing.assert_close(scores, expected, rtol=1e-10, atol=1e-14)
    # the checkpoints were swapped in functionally: the live weights, mode and hooks are as
    # they were (captum's TracInCP loads each checkpoint into the model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.training and hook_count(model) == 0


def test_classifier_losses_and_a_parameter_subset(tmp_path):
    model = make_classifier()
    x, y = tabular(30)
    train(model, (x, y), lambda m, b: F.cross_entropy(m(b[0]), b[1]), epochs=2, lr=0.1,
          batch_size=10, optimizer="sgd", checkpoint_dir=tmp_path, progress=False)
    x_test, y_test = tabular(6, seed=5)

    def labelled(m, sample):
        return F.cross_entropy(m(sample[0][None]), sample[1][None])

    def predicted(m, sample):
        logits = m(sample[0][None])
        return F.cross_entropy(logits, logits.argmax(1).detach())

    last_layer = lambda m: list(m[2].parameters())  # noqa: E731
    expected = reference(tmp_path, make_classifier, last_layer, list(zip(x, y, strict=True)),
                         list(zip(x_test, y_test, strict=True)), labelled)
    scores = TracIn(tmp_path, "cross_entropy", params="2", batch_size=4).scores(
        model, (x, y), (x_test, y_test))
    torch.testing.assert_close(scores, expected, rtol=1e-10, atol=1e-14)
    # train with labels, explain the prediction: test side uses the predicted class
    total = 0
    for path in sorted(tmp_path.glob("epoch_*.pt")):
        payload = torch.load(path, weights_only=True)
        m = make_classifier()
        m.load_state_dict(payload["state_dict"])
        g_train = loop_gradients(m, last_layer(m), list(zip(x, y, strict=True)), labelled)
        g_test = loop_gradients(m, last_layer(m), [(a, None) for a in x_test], predicted)
        total = total + payload["lr"] * g_test @ g_train.T
    mixed = TracIn(tmp_path, "cross_entropy", test_loss="predicted", params="2").scores(
        model, (x, y), x_test)
    torch.testing.assert_close(mixed, total, rtol=1e-10, atol=1e-14)


def test_a_user_loss_of_a_layers_representation(ae_checkpoints):
    model, ckpt, x = ae_checkpoints

    def energy(z: torch.Tensor, batch) -> torch.Tensor:
        return (z ** 2).sum()

    def loop_loss(m, sample):
        return (m.encoder(sample[None]) ** 2).sum()

    expected = reference(ckpt, lambda: TinyAE().double(), encoder_params, x, x[:4], loop_loss)
    scores = TracIn(ckpt, energy, params="encoder", layer="encoder").scores(model, x, x[:4])
    torch.testing.assert_close(scores, expected, rtol=1e-10, atol=1e-14)


def test_in_memory_checkpoints_and_the_current_weights(ae_checkpoints):
    model, ckpt, x = ae_checkpoints
    payloads = [torch.load(p, weights_only=True) for p in sorted(ckpt.glob("epoch_*.pt"))]
    from_files = TracIn(ckpt).scores(model, x, x[:3])
    from_payloads = TracIn(payloads).scores(model, x, x[:3])
    assert torch.equal(from_files, from_payloads)
    plain = [p["state_dict"] for p in payloads]
    with pytest.raises(LatentSurgeonError, match="learning rate"):
        TracIn(plain).fit(model, x)
    assert torch.equal(TracIn(plain, lr=0.05).scores(model, x, x[:3]), from_files)
    # "current": the last checkpoint's weights are the model's present weights, lr 1
    last = TracIn([payloads[-1]["state_dict"]], lr=1.0).scores(model, x, x[:3])
    torch.testing.assert_close(TracIn("current").scores(model, x, x[:3]), last,
                               rtol=0, atol=0)


def test_no_checkpoints_is_an_error_not_zeros(tmp_path, ae):
    x = images(5)
    for empty in (None, []):
        with pytest.raises(LatentSurgeonError, match="checkpoint"):
            TracIn(empty).fit(ae, x)
    with pytest.raises(LatentSurgeonError, match="No checkpoints"):
        TracIn(tmp_path).fit(ae, x)
    with pytest.raises(LatentSurgeonError, match="needs the model"):
        TracIn("current").fit(None, x)
    with pytest.raises(LatentSurgeonError, match="does not fit"):
        TracIn([{"w": torch.zeros(1)}], lr=1.0).fit(ae, x)
    with pytest.raises(InvalidParameterError, match="loss"):
        TracIn("current", loss="hinge").fit(ae, x)
    with pytest.raises(InvalidParameterError, match="params"):
        TracIn("current", params="encoder.2").fit(ae, x)  # Tanh: no parameters


def test_projection_is_seeded_and_preserves_inner_products_on_average(ae_checkpoints):
    model, ckpt, x = ae_checkpoints
    exact = TracIn(ckpt).scores(model, x, x[:6])
    first = TracIn(ckpt, projection_dim=64, seed=1).scores(model, x, x[:6])
    again = TracIn(ckpt, projection_dim=64, seed=1).scores(model, x, x[:6])
    assert torch.equal(first, again)
    # unbiased: the mean over 100 independent sketches is close to the exact scores
    # (1/sqrt(100) = 0.1 of a single sketch's error; a biased sketch would stay near 1)
    sketches = torch.stack([TracIn(ckpt, projection_dim=64, seed=s).scores(model, x, x[:6])
                            for s in range(100)])
    single_error = float((sketches - exact).abs().mean())
    mean_error = float((sketches.mean(0) - exact).abs().mean())
    assert mean_error < 0.35 * single_error
    # a sketch as wide as the gradient keeps rankings nearly intact
    wide = TracIn(ckpt, projection_dim=2048, seed=0).scores(model, x, x[:6])
    corr = torch.corrcoef(torch.stack([wide.flatten(), exact.flatten()]))[0, 1]
    assert float(corr) > 0.95


@pytest.mark.skipif(not HAS_LFXAI, reason="lfxai is not installed (reference only)")
def test_matches_lfxai_tracin_on_the_same_checkpoints(ae_checkpoints, tmp_path):
    from lfxai.explanations.examples import TracIn as LfxaiTracIn

    model, ckpt, x = ae_checkpoints
    files = []
    for i, path in enumerate(sorted(ckpt.glob("epoch_*.pt"))):
        plain = tmp_path / f"plain_{i}.pt"
        torch.save(torch.load(path, weights_only=True)["state_dict"], plain)
        files.append(plain)
    peer_model = TinyAE().double()
    peer_model.load_state_dict(model.state_dict())
    peer_model.checkpoints_files = files
    peer = LfxaiTracIn(peer_model, nn.MSELoss(), tmp_path / "lfxai", X_train=x)
    theirs = peer.attribute(x[:7], list(range(len(x))), learning_rate=0.05).detach()
    ours = TracIn(ckpt, params="encoder").scores(model, x, x[:7])
    relative = float((ours - theirs).abs().max() / theirs.abs().max())
    assert relative <= 1e-5


def test_factored_linear_gradients_equal_flat_ones(ae_checkpoints):
    """Linear layers keep per-sample gradients as (output gradient, input) factors; the same
    numbers as vmap's flat gradients."""
    from latentsurgeon.activations.access import ModelAccess
    from latentsurgeon.explain._gradients import (
        GradientSpec,
        current_state,
        linear_layers,
        per_sample_gradients,
    )

    model, ckpt, x = ae_checkpoints
    names = [n for n, _ in model.named_parameters() if n.startswith("encoder")]
    layers = linear_layers(model, names)
    assert layers == [("encoder.1", True), ("encoder.3", True)]
    loss = ModelAccess(model, loss="reconstruction")
    state = current_state(model)
    flat = per_sample_gradients(GradientSpec(loss, names), state, x[:6])
    factored = per_sample_gradients(GradientSpec(loss, names, linear=layers), state, x[:6])
    torch.testing.assert_close(factored.flat(), flat, rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(factored.dot(factored), flat @ flat.T, rtol=1e-10, atol=1e-15)
    assert TracIn(ckpt, params="encoder").fit(model, x)._train_spec.linear == layers
    # a loss callable takes the flat path; the scores agree
    flat_scores = TracIn(ckpt, lambda out, batch: F.mse_loss(out, batch), params="encoder"
                         ).scores(model, x, x[:5])
    torch.testing.assert_close(TracIn(ckpt, params="encoder").scores(model, x, x[:5]),
                               flat_scores, rtol=1e-10, atol=1e-15)


class Shared(nn.Module):
    """The same linear layer runs twice: factored gradients do not apply."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


def test_a_layer_that_runs_twice_falls_back_to_flat_gradients():
    torch.manual_seed(0)
    model = Shared().double().eval()
    x, y = tabular(12)
    explainer = TracIn("current", "cross_entropy").fit(model, (x, y))
    assert explainer._train_spec.linear is None
    expected = loop_gradients(model, list(model.parameters()), list(zip(x[:4], y[:4],
                                                                        strict=True)),
                              lambda m, s: F.cross_entropy(m(s[0][None]), s[1][None]))
    train = loop_gradients(model, list(model.parameters()), list(zip(x, y, strict=True)),
                           lambda m, s: F.cross_entropy(m(s[0][None]), s[1][None]))
    torch.testing.assert_close(explainer.explain((x[:4], y[:4])), expected @ train.T,
                               rtol=1e-10, atol=1e-14)


def test_a_loaded_tracin_explains_as_the_saved_one(ae_checkpoints, tmp_path):
    """The ``explain`` of a loaded TracIn failed although it reported fitted: it now stores the
    checkpoints' weights and the training gradients, and ``load(path, model=)`` re-attaches the
    model; a user loss (code) is excluded and given back."""
    model, ckpt, x = ae_checkpoints

    def energy(z: torch.Tensor, batch) -> torch.Tensor:
        return (z ** 2).sum()

    for explainer, exclude, again in [
            (TracIn(ckpt, params="encoder", projection_dim=16), (), {}),
            (TracIn(ckpt, energy, params="encoder", layer="encoder"), ("loss",), {"loss": energy})]:
        scores = explainer.scores(model, x, x[:6])
        explainer.save(tmp_path / "t.pt", exclude=exclude)
        for path in sorted(ckpt.glob("epoch_*.pt")):  # the checkpoint files are not needed
            path.rename(path.with_suffix(".moved"))
        loaded = TracIn.load(tmp_path / "t.pt", model=model, **again)
        assert loaded.is_fitted() and loaded.lrs_ == explainer.lrs_
        torch.testing.assert_close(loaded.explain(x[:6]), scores, rtol=0, atol=0)
        for path in sorted(ckpt.glob("epoch_*.moved")):
            path.rename(path.with_suffix(".pt"))
    with pytest.raises(InvalidParameterError, match="loss is the function"):
        TracIn(ckpt, energy, params="encoder", layer="encoder").fit(model, x).save(
            tmp_path / "fn.pt")
    # without the training gradients a loaded TracIn could not explain: saving says so
    uncached = TracIn(ckpt, params="encoder", cache_mb=0.0).fit(model, x)
    with pytest.raises(LatentSurgeonError, match="cache_mb"):
        uncached.save(tmp_path / "uncached.pt")
    assert not (tmp_path / "uncached.pt").exists()
