"""LeaceEraser: erasure quality, minimal displacement, shapes, hooks, store streaming, save/load."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from torch import nn

from latentsurgeon.activations import ActivationStore, capture
from latentsurgeon.concepts import LeaceEraser
from latentsurgeon.errors import (
    InvalidParameterError,
    LatentSurgeonError,
    NonFiniteError,
    NotFittedError,
    ShapeMismatchError,
)
from latentsurgeon.hooks import hook_count


def correlated_nuisance(n: int = 4000, d: int = 12, seed: int = 0):
    """Balanced binary concept along ``u`` plus a high-variance nuisance along ``w`` that overlaps
    ``u``: projecting out the concept's mean difference also deletes much nuisance variance,
    LEACE does not have to."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    u, r = basis[:, 0], basis[:, 1]
    w = 0.8 * u + 0.6 * r
    y = (torch.arange(n) % 2).long()
    x = (y[:, None] * 1.5 * u + 4.0 * torch.randn(n, 1, generator=g, dtype=torch.float64) * w
         + 0.2 * torch.randn(n, d, generator=g, dtype=torch.float64))
    return x.float(), y


def probe_accuracy(x_tr, y_tr, x_te, y_te) -> float:
    probe = LogisticRegression(max_iter=2000).fit(x_tr.double().numpy(), y_tr.numpy())
    return float(probe.score(x_te.double().numpy(), y_te.numpy()))


class TestErasure:
    def test_probe_drops_to_chance(self):
        x, y = correlated_nuisance()
        x_tr, y_tr, x_te, y_te = x[:3000], y[:3000], x[3000:], y[3000:]
        assert probe_accuracy(x_tr, y_tr, x_te, y_te) > 0.95
        eraser = LeaceEraser().fit(x_tr, y_tr)
        erased_tr, erased_te = eraser.transform(x_tr), eraser.transform(x_te)
        assert erased_te.shape == x_te.shape and erased_te.dtype == x_te.dtype
        assert abs(probe_accuracy(erased_tr, y_tr, erased_te, y_te) - 0.5) <= 0.05

    def test_leace_moves_less_than_projecting_out_the_mass_mean(self):
        x, y = correlated_nuisance()
        leace = LeaceEraser().fit(x, y)
        moved_leace = float(((leace.transform(x) - x) ** 2).sum(1).mean())
        # Projection along the mass-mean direction, centred at the mean (what P-ClArC-style
        # removal of a concept direction does).
        v = x[y == 1].mean(0) - x[y == 0].mean(0)
        v = v / v.norm()
        projected = x - ((x - x.mean(0)) @ v)[:, None] * v
        moved_projection = float(((projected - x) ** 2).sum(1).mean())
        assert moved_leace < 0.5 * moved_projection
        # method="orth" is exactly that projection (the cross-covariance of a binary concept is
        # the mass-mean direction), and it erases too.
        orth = LeaceEraser(method="orth").fit(x, y)
        torch.testing.assert_close(orth.transform(x), projected, atol=1e-4, rtol=0)
        assert abs(probe_accuracy(orth.transform(x[:3000]), y[:3000], orth.transform(x[3000:]),
                                  y[3000:]) - 0.5) <= 0.05

    def test_several_classes(self):
        g = torch.Generator().manual_seed(4)
        y = torch.arange(3000) % 3
        means = torch.randn(3, 8, generator=g) * 2
        x = means[y] + torch.randn(3000, 8, generator=g)
        eraser = LeaceEraser().fit(x[:2000], y[:2000])
        assert eraser.classes_ == [0, 1, 2]
        assert eraser.proj_left_.shape[1] >= 2  # rank k - 1 = 2 for one-hot labels
        acc = probe_accuracy(eraser.transform(x[:2000]), y[:2000], eraser.transform(x[2000:]),
                             y[2000:])
        assert acc < 1 / 3 + 0.05

    def test_mean_is_kept(self):
        x, y = correlated_nuisance(n=1000)
        erased = LeaceEraser().fit_transform(x, y)
        torch.testing.assert_close(erased.mean(0), x.mean(0), atol=1e-3, rtol=0)


def conv_concept(n: int = 300, seed: int = 1):
    """``(N, 6, 5, 5)`` activations; the concept shifts every position along a channel pattern."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.arange(n) % 2).long()
    pattern = torch.tensor([2.0, -1.0, 0.0, 1.0, 0.0, 0.5])
    acts = torch.randn(n, 6, 5, 5, generator=g) + y[:, None, None, None] * pattern[None, :, None, None]
    return acts, y, pattern


class TestShapes:
    def test_flatten_reshapes_back(self):
        acts, y, _ = conv_concept()
        eraser = LeaceEraser("flatten").fit(acts, y)
        assert eraser.n_features_ == 150 and eraser.input_shape_ == [6, 5, 5]
        out = eraser.transform(acts)
        assert out.shape == acts.shape
        flat = acts.flatten(1)
        torch.testing.assert_close(out.flatten(1), flat - (flat.double() - eraser.bias_).float()
                                   @ eraser.projection_.T.float(), atol=1e-4, rtol=0)
        with pytest.raises(ShapeMismatchError, match="per-sample shape"):
            eraser.transform(acts[:, :, :4])

    def test_channel_wise_erasure(self):
        acts, y, _ = conv_concept()
        eraser = LeaceEraser("channel", channel_dim=1).fit(acts, y)
        assert eraser.n_features_ == 6
        assert eraser.n_samples_ == 300 * 25  # every position is a sample
        out = eraser.transform(acts)
        assert out.shape == acts.shape
        per_position = out.permute(0, 2, 3, 1).reshape(-1, 6)
        labels = y.repeat_interleave(25)
        before = acts.permute(0, 2, 3, 1).reshape(-1, 6)
        half = len(labels) // 2
        assert probe_accuracy(before[:half], labels[:half], before[half:], labels[half:]) > 0.8
        assert abs(probe_accuracy(per_position[:half], labels[:half], per_position[half:],
                                  labels[half:]) - 0.5) <= 0.05
        # the same C x C eraser applies at another spatial size
        assert eraser.transform(acts[:, :, :3, :2]).shape == (300, 6, 3, 2)

    def test_channel_last_tokens(self):
        g = torch.Generator().manual_seed(2)
        y = (torch.arange(200) % 2).long()
        tokens = torch.randn(200, 7, 4, generator=g) + y[:, None, None] * torch.tensor([2.0, 0, 0, 1])
        eraser = LeaceEraser("channel", channel_dim=-1).fit(tokens, y)
        assert eraser.n_features_ == 4
        assert eraser.transform(tokens).shape == tokens.shape

    def test_per_position_labels(self):
        g = torch.Generator().manual_seed(3)
        acts = torch.randn(100, 3, 4, 4, generator=g)
        mask = torch.rand(100, 4, 4, generator=g) < 0.3
        acts = acts + mask[:, None].float() * torch.tensor([3.0, -1.0, 0.0])[None, :, None, None]
        eraser = LeaceEraser("channel").fit(acts, mask)
        labels = mask.reshape(-1).long()
        majority = max(float(labels.float().mean()), 1 - float(labels.float().mean()))
        before = acts.permute(0, 2, 3, 1).reshape(-1, 3)
        after = eraser.transform(acts).permute(0, 2, 3, 1).reshape(-1, 3)
        assert probe_accuracy(before, labels, before, labels) > majority + 0.1
        assert probe_accuracy(after, labels, after, labels) <= majority + 0.02

    def test_sample_mask(self):
        x, y = correlated_nuisance(n=1000)
        keep = torch.arange(1000) < 600
        masked = LeaceEraser().fit(x, y, sample_mask=keep)
        direct = LeaceEraser().fit(x[:600], y[:600])
        torch.testing.assert_close(masked.transform(x), direct.transform(x))


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 36, 3)).eval()


class TestHooks:
    @pytest.mark.parametrize("pooling", ["flatten", "channel"])
    def test_hook_equals_transform(self, pooling):
        model = small_cnn()
        g = torch.Generator().manual_seed(5)
        images = torch.rand(80, 1, 6, 6, generator=g)
        y = (torch.arange(80) % 2).long()
        images[y == 1, :, 2:4, 2:4] += 1.0
        with capture(model, "2") as cap, torch.no_grad():
            model(images)
        raw = cap["2"]
        eraser = LeaceEraser(pooling).fit(raw, y)
        with torch.no_grad(), eraser.applied(model, "2") as erased, \
                capture(model, "2") as cap2:
            assert erased is model  # applied yields the model; attach returns the hook handle
            out = erased(images)
        torch.testing.assert_close(cap2["2"], eraser.transform(raw), atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            expected = model[3:](eraser.transform(raw))
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        assert hook_count(model) == 0

    def test_attach_handle_and_gradients(self):
        model = small_cnn()
        images = torch.rand(40, 1, 6, 6)
        y = (torch.arange(40) % 2).long()
        with capture(model, "2") as cap, torch.no_grad():
            model(images)
        eraser = LeaceEraser().fit(cap["2"], y)
        handle = eraser.attach(model, "2")
        assert hook_count(model) == 1
        x = images.clone().requires_grad_(True)
        model(x).sum().backward()  # gradients flow through the eraser
        assert x.grad is not None and torch.isfinite(x.grad).all()
        handle.remove()
        handle.remove()  # idempotent
        assert hook_count(model) == 0

    def test_hooks_removed_after_exception(self):
        model = small_cnn()
        with capture(model, "2") as cap, torch.no_grad():
            model(torch.rand(30, 1, 6, 6))
        eraser = LeaceEraser().fit(cap["2"], torch.arange(30) % 2)
        with pytest.raises(RuntimeError, match="boom"), eraser.applied(model, "2"):
            assert hook_count(model) == 1
            raise RuntimeError("boom")
        assert hook_count(model) == 0
        # a shape error inside the forward also leaves no hook behind
        with pytest.raises(ShapeMismatchError), eraser.applied(model, "0"):
            model(torch.rand(2, 1, 6, 6))
        assert hook_count(model) == 0

    def test_attach_needs_one_layer(self):
        model = small_cnn()
        eraser = LeaceEraser().fit(torch.randn(20, 4), torch.arange(20) % 2)
        with pytest.raises(LatentSurgeonError, match="one layer"):
            eraser.attach(model, nn.Conv2d)


    def test_attach_defaults_to_the_layer_given_to_fit(self):
        model = small_cnn()
        images = torch.rand(40, 1, 6, 6)
        y = (torch.arange(40) % 2).long()
        with capture(model, "2") as cap, torch.no_grad():
            model(images)
        eraser = LeaceEraser().fit(cap["2"], y, layer="2")
        assert eraser.layer_ == "2"
        with torch.no_grad(), eraser.applied(model, "2"):
            named = model(images)
        with torch.no_grad(), eraser.applied(model):
            default = model(images)
        assert torch.equal(named, default)
        unnamed = LeaceEraser().fit(cap["2"], y)
        assert unnamed.layer_ is None
        with pytest.raises(InvalidParameterError, match=r"layer is needed.*fit\(\.\.\., layer="):
            unnamed.attach(model)
        assert hook_count(model) == 0


class TestStoreAndPersistence:
    def test_fit_from_store_streams_in_batches(self, tmp_path):
        model = small_cnn()
        g = torch.Generator().manual_seed(6)
        images = torch.rand(150, 1, 6, 6, generator=g)
        y = (torch.arange(150) % 2).long()
        images[y == 1, :, :2, :2] += 1.0
        store = ActivationStore.extract(model, images, "2", tmp_path / "s", progress=False)
        streamed = LeaceEraser("channel", batch_size=32).fit(store, y)
        in_memory = LeaceEraser("channel").fit(store.tensor("2"), y)
        torch.testing.assert_close(streamed.proj_left_ @ streamed.proj_right_,
                                   in_memory.proj_left_ @ in_memory.proj_right_,
                                   atol=1e-8, rtol=1e-6)
        torch.testing.assert_close(streamed.bias_, in_memory.bias_)

    def test_save_load_round_trip(self, tmp_path):
        acts, y, _ = conv_concept()
        eraser = LeaceEraser("channel", method="orth", svd_tol=0.05).fit(acts, y)
        eraser.save(tmp_path / "e.pt")
        again = LeaceEraser.load(tmp_path / "e.pt")
        assert again.get_params() == eraser.get_params()
        torch.testing.assert_close(again.transform(acts), eraser.transform(acts))


class TestErrors:
    def test_pooling_that_cannot_be_inverted(self):
        with pytest.raises(InvalidParameterError, match="pooling must be .*cannot"):
            LeaceEraser("max").fit(torch.randn(10, 3), torch.arange(10) % 2)

    @pytest.mark.parametrize("params, name", [
        ({"method": "lda"}, "method"), ({"pooling": "as is"}, "pooling"),
        ({"batch_size": 0}, "batch_size"), ({"svd_tol": -0.1}, "svd_tol"),
        ({"affine": "yes"}, "affine"), ({"channel_dim": 1.5}, "channel_dim"),
    ])
    def test_invalid_parameters(self, params, name):
        with pytest.raises(InvalidParameterError, match=f"LeaceEraser: {name} must be"):
            LeaceEraser(**params).fit(torch.randn(10, 3), torch.arange(10) % 2)

    def test_non_finite_activations_and_labels(self):
        x = torch.randn(20, 3)
        x[4, 0] = math.inf
        with pytest.raises(NonFiniteError, match="activations"):
            LeaceEraser().fit(x, torch.arange(20) % 2)
        z = torch.rand(20, 2, dtype=torch.float64)
        z[3, 1] = math.nan
        with pytest.raises(NonFiniteError, match="labels"):
            LeaceEraser().fit(torch.randn(20, 3), z)

    def test_one_class(self):
        with pytest.raises(LatentSurgeonError, match="two label values"):
            LeaceEraser().fit(torch.randn(10, 3), torch.zeros(10))

    def test_label_length(self):
        with pytest.raises(ShapeMismatchError, match="labels has 9"):
            LeaceEraser().fit(torch.randn(10, 3), torch.arange(9) % 2)

    def test_not_fitted(self):
        with pytest.raises(NotFittedError):
            LeaceEraser().transform(torch.randn(3, 3))


class TestVocabulary:
    def test_none_is_the_deprecated_spelling_of_channel(self):
        acts, y, _ = conv_concept()
        with pytest.warns(FutureWarning, match="pooling='channel'"):
            old = LeaceEraser("none").fit(acts, y)
        new = LeaceEraser("channel").fit(acts, y)
        assert old.n_features_ == new.n_features_ == 6
        torch.testing.assert_close(old.transform(acts), new.transform(acts))

    def test_clone(self):
        eraser = LeaceEraser("channel", method="orth", channel_dim=-1, svd_tol=0.05)
        copy = clone(eraser)
        assert copy.get_params() == eraser.get_params() and copy is not eraser
        eraser.fit(torch.randn(30, 4, 3), torch.arange(30) % 2)
        assert not clone(eraser).is_fitted()
