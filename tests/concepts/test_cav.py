"""CAV: planted directions, where the samples come from, pooling, stores, save/load, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from latentsurgeon.activations import ActivationStore
from latentsurgeon.concepts import CAV
from latentsurgeon.errors import LatentSurgeonError, NotFittedError, ShapeMismatchError


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(_unit(a.double()), _unit(b.double())))


def planted_with_distractor(n: int = 2000, d: int = 20, seed: int = 0):
    """Concept signal along ``u`` plus a strong, label-independent distractor along ``w`` that
    overlaps ``u`` (cos 0.7): the Haufe et al. setting where filters and patterns differ."""
    g = torch.Generator().manual_seed(seed)
    u = _unit(torch.randn(d, generator=g, dtype=torch.float64))
    r = torch.randn(d, generator=g, dtype=torch.float64)
    r = _unit(r - (r @ u) * u)
    w = 0.7 * u + (1 - 0.7**2) ** 0.5 * r
    y = (torch.arange(n) % 2).double()
    xi = torch.randn(n, generator=g, dtype=torch.float64)
    noise = 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    x = y[:, None] * 2.0 * u + xi[:, None] * 3.0 * w + noise
    return x.float(), y.long(), u


@pytest.fixture(scope="module")
def data():
    return planted_with_distractor()


class TestPlantedDirection:
    @pytest.mark.parametrize("method", ["pattern", "signal", "mass_mean"])
    def test_pattern_and_mass_mean_recover_the_planted_direction(self, data, method):
        x, y, u = data
        cav = CAV(method).fit(x, y)
        assert cav.cosine(u.float()) >= 0.95
        # ... though as a classifier the pattern is worse than a filter: it keeps the distractor.
        assert cav.scores_["accuracy"] < CAV("logistic").fit(x, y).scores_["accuracy"]

    @pytest.mark.parametrize("method", ["svm", "logistic", "ridge"])
    def test_filters_cancel_the_distractor_and_miss_the_direction(self, data, method):
        # A filter must be tilted away from the distractor to cancel it, so it does not point
        # along the signal: it separates the classes (accuracy) but is not the concept direction.
        x, y, u = data
        filt = CAV(method).fit(x, y)
        pattern = CAV("pattern", filter_method=method).fit(x, y)
        assert filt.scores_["accuracy"] > 0.9
        assert filt.cosine(u.float()) < 0.9
        assert pattern.cosine(u.float()) - filt.cosine(u.float()) > 0.1

    def test_direction_is_unit_and_oriented_towards_the_concept(self, data):
        x, y, _ = data
        cav = CAV("logistic").fit(x, y)
        assert float(cav.direction_.norm()) == pytest.approx(1.0, abs=1e-5)
        proj = cav.project(x)
        assert proj[y == 1].mean() > proj[y == 0].mean()
        assert float((cav.predict(x) == y.bool()).float().mean()) > 0.9

    def test_mean_vectors(self, data):
        x, y, _ = data
        cav = CAV("mass_mean").fit(x, y)
        torch.testing.assert_close(cav.mean_concept_, x[y == 1].mean(0), atol=1e-4, rtol=0)
        torch.testing.assert_close(cav.mean_clean_, x[y == 0].mean(0), atol=1e-4, rtol=0)
        assert _cos(cav.direction_, cav.mean_concept_ - cav.mean_clean_) > 0.9999


def class_confounded(n: int = 1200, d: int = 16, seed: int = 1):
    """Class direction ``c`` and concept direction ``k`` (orthogonal); the concept occurs only
    in half of the class-0 samples, as a watermark planted on the shortcut class does."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    c, k = basis[:, 0], basis[:, 1]
    cls = (torch.arange(n) % 2).long()
    concept = (cls == 0) & (torch.rand(n, generator=g) < 0.5)
    base = cls[:, None].double() * 3.0 * c + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    x = base + concept[:, None].double() * 2.0 * k
    return x.float(), base.float(), cls, concept.long(), c, k


class TestWhereSamplesComeFrom:
    def test_all_samples_mix_in_the_class_direction(self):
        x, _, cls, concept, c, k = class_confounded()
        everywhere = CAV("mass_mean").fit(x, concept)
        within = CAV("mass_mean").fit(x, concept, sample_mask=cls == 0)
        assert within.cosine(k.float()) >= 0.95
        assert abs(within.cosine(c.float())) < 0.1
        assert everywhere.cosine(k.float()) < 0.85
        assert abs(everywhere.cosine(c.float())) > 0.4  # the class direction leaked in

    @pytest.mark.parametrize("method", ["mass_mean", "pattern"])
    def test_fit_paired_isolates_the_concept(self, method):
        x, base, cls, concept, c, k = class_confounded()
        with_c = base + 2.0 * k.float()
        cav = CAV(method).fit_paired(with_c, base)
        assert cav.cosine(k.float()) >= 0.95
        assert abs(cav.cosine(c.float())) < 0.1
        assert cav.scores_["n_test"] == 2 * int(np.ceil(0.25 * len(base)))
        # paired mass-mean is the mean difference of the pairs
        expected = (with_c - base).mean(0)
        if method == "mass_mean":
            assert cav.cosine(expected) > 0.9999

    def test_fit_paired_shape_mismatch(self):
        with pytest.raises(ShapeMismatchError, match="equal shapes"):
            CAV().fit_paired(torch.zeros(10, 3), torch.zeros(10, 4))


def conv_activations(n: int = 400, seed: int = 2):
    """``(N, 4, 5, 5)`` activations; the concept raises channel 2 at position (1, 1)."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.rand(n, 4, 5, 5, generator=g)
    y = (torch.arange(n) % 2).long()
    acts[y == 1, 2, 1, 1] += 3.0
    return acts, y


class TestPooling:
    @pytest.mark.parametrize("pooling, dim", [("max", 4), ("mean", 4), ("flatten", 100)])
    def test_pooling_is_recorded_and_reapplied(self, pooling, dim, tmp_path):
        acts, y = conv_activations()
        cav = CAV("mass_mean", pooling).fit(acts, y)
        assert cav.pooling == pooling
        assert cav.direction_.shape == (dim,)
        assert cav.input_shape_ == [4, 5, 5]
        if pooling == "flatten":
            assert int(cav.direction_.abs().argmax()) == 2 * 25 + 1 * 5 + 1
        else:
            assert int(cav.direction_.abs().argmax()) == 2
        pooled = {"max": acts.amax(dim=(2, 3)), "mean": acts.mean(dim=(2, 3)),
                  "flatten": acts.flatten(1)}[pooling]
        torch.testing.assert_close(cav.pooled(acts), pooled)
        torch.testing.assert_close(cav.project(acts), pooled @ cav.direction_)
        # the mean over 25 positions dilutes the +3 to +0.12 against noise of sd 0.06
        expected = 0.8 if pooling == "mean" else 0.95
        assert float((cav.predict(acts) == y.bool()).float().mean()) > expected
        cav.save(tmp_path / "cav.pt")
        again = CAV.load(tmp_path / "cav.pt")
        torch.testing.assert_close(again.project(acts), cav.project(acts))

    def test_project_refuses_other_shapes(self):
        acts, y = conv_activations()
        cav = CAV("mass_mean", "max").fit(acts, y)
        with pytest.raises(ShapeMismatchError, match="per-sample shape"):
            cav.project(acts[:, :, :4, :4])

    def test_none_pooling_needs_vectors(self):
        acts, y = conv_activations()
        with pytest.raises(ShapeMismatchError, match="one vector per sample"):
            CAV("mass_mean", "none").fit(acts, y)
        cav = CAV("mass_mean", "none").fit(acts.flatten(1), y)
        assert cav.direction_.shape == (100,)


class TestFromStore:
    def test_fit_from_store_layer_equals_fit_from_tensor(self, tmp_path):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                              nn.Linear(3 * 36, 2))
        g = torch.Generator().manual_seed(3)
        images = torch.rand(120, 1, 6, 6, generator=g)
        y = (torch.arange(120) % 2).long()
        images[y == 1, :, :2, :2] += 2.0
        store = ActivationStore.extract(model, images, ["0", "1"], tmp_path / "store",
                                        pooling="max", progress=False)
        from_store = CAV("logistic", "max").fit(store, y, layer="1")
        acts = store.tensor("1")
        from_tensor = CAV("logistic", "max").fit(acts, y)
        torch.testing.assert_close(from_store.direction_, from_tensor.direction_)
        assert from_store.input_shape_ == [3]
        with pytest.raises(LatentSurgeonError, match="pass layer="):
            CAV().fit(store, y)


class TestSaveLoad:
    def test_round_trip(self, tmp_path):
        x, y, _ = planted_with_distractor(n=400)
        cav = CAV("pattern", "flatten", filter_method="ridge", C=[0.1, 1.0], test_size=0.3,
                  seed=5).fit(x, y)
        path = tmp_path / "cav.pt"
        cav.save(path)
        again = CAV.load(path)
        assert again.get_params() == cav.get_params()
        for key, value in cav.learned_state().items():
            other = getattr(again, key)
            if isinstance(value, torch.Tensor):
                assert torch.equal(other, value)
            else:
                assert other == value
        torch.testing.assert_close(again.project(x), cav.project(x))

    def test_load_refuses_other_estimators(self, tmp_path):
        from latentsurgeon.concepts import LeaceEraser

        x, y, _ = planted_with_distractor(n=200)
        LeaceEraser().fit(x, y).save(tmp_path / "eraser.pt")
        with pytest.raises(LatentSurgeonError, match="LeaceEraser"):
            CAV.load(tmp_path / "eraser.pt")


class TestErrors:
    def test_one_class_labels(self):
        with pytest.raises(LatentSurgeonError, match="both concept"):
            CAV().fit(torch.randn(20, 3), torch.ones(20))

    def test_one_class_after_sample_mask(self):
        y = (torch.arange(20) % 2).long()
        with pytest.raises(LatentSurgeonError, match="both concept"):
            CAV().fit(torch.randn(20, 3), y, sample_mask=y == 1)

    def test_label_length_mismatch(self):
        with pytest.raises(ShapeMismatchError, match="labels has 19 entries"):
            CAV().fit(torch.randn(20, 3), torch.arange(19) % 2)

    def test_mask_length_mismatch(self):
        with pytest.raises(ShapeMismatchError, match="sample_mask"):
            CAV().fit(torch.randn(20, 3), torch.arange(20) % 2, sample_mask=torch.ones(5).bool())

    def test_unknown_method_and_pooling(self):
        x, y = torch.randn(20, 3), torch.arange(20) % 2
        with pytest.raises(LatentSurgeonError, match="Unknown CAV method 'pca'"):
            CAV("pca").fit(x, y)
        with pytest.raises(ValueError, match="Unknown pooling"):
            CAV(pooling="sum").fit(x, y)

    def test_identical_groups(self):
        x = torch.randn(10, 3)
        with pytest.raises(LatentSurgeonError, match="zero"):
            CAV("mass_mean").fit(torch.cat([x, x]), torch.arange(20) >= 10)

    def test_not_fitted(self):
        with pytest.raises(NotFittedError):
            CAV().project(torch.randn(3, 3))
        with pytest.raises(NotFittedError):
            CAV().save("unused.pt")
