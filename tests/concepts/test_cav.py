"""CAV: planted directions, where the samples come from, pooling, stores, save/load, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.linear_model import Lasso
from sklearn.model_selection import GridSearchCV
from sklearn.svm import LinearSVC
from torch import nn

from latentsurgeon.activations import ActivationStore
from latentsurgeon.concepts import CAV
from latentsurgeon.concepts.cav_fitting import GRID
from latentsurgeon.errors import (
    InvalidParameterError,
    LatentSurgeonError,
    NonFiniteError,
    NotFittedError,
    ShapeMismatchError,
)


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
    def test_patterns_and_mass_mean_recover_the_planted_direction(self, data, method):
        x, y, u = data
        cav = CAV(method).fit(x, y)
        assert cav.cosine(u.float()) >= 0.95
        # ... though as a classifier the pattern is worse than a filter: it keeps the distractor.
        assert cav.scores_["accuracy"] < CAV("logistic").fit(x, y).scores_["accuracy"]

    @pytest.mark.parametrize("method", ["svm", "logistic", "ridge", "lasso"])
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
        with pytest.raises(InvalidParameterError, match="CAV: method must be one of .*'pca'"):
            CAV("pca").fit(x, y)
        with pytest.raises(InvalidParameterError, match="pooling must be one of"):
            CAV(pooling="sum").fit(x, y)

    def test_identical_groups(self):
        x = torch.randn(10, 3)
        with pytest.raises(LatentSurgeonError, match="zero"):
            CAV("mass_mean").fit(torch.cat([x, x]), torch.arange(20) >= 10)


class TestTinySetsAndZeroDirections:
    """tdhook's mean-difference probe fits 2 + 2 samples and keeps a zero direction; ours does
    both where asked (tiny sets: mass-mean always; zero directions: zero_direction="keep")."""

    def test_mass_mean_fits_two_plus_two_without_a_held_out_score(self):
        x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [-2.0, 0.0]])
        cav = CAV("mass_mean").fit(x, torch.tensor([1, 1, 0, 0]))
        torch.testing.assert_close(cav.direction_, torch.tensor([1.0, 0.0]))
        assert cav.threshold_ == 0.0  # midpoint of the projected class means (1.5, -1.5)
        assert cav.scores_["n_train"] == 4 and cav.scores_["n_test"] == 0
        assert math.isnan(cav.scores_["accuracy"]) and math.isnan(cav.scores_["auc"])
        assert cav.predict(x).tolist() == [True, True, False, False]

    def test_a_split_is_still_made_where_both_classes_fit_in_it(self):
        x, y = torch.randn(8, 3) + 2.0 * (torch.arange(8) % 2)[:, None], torch.arange(8) % 2
        scores = CAV("mass_mean").fit(x, y).scores_
        assert scores["n_test"] == 2 and scores["n_train"] == 6
        assert not math.isnan(scores["accuracy"])

    def test_other_methods_still_refuse_a_set_too_small_to_split(self):
        x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [-2.0, 0.0]])
        with pytest.raises(InvalidParameterError, match="test_size"):
            CAV("logistic").fit(x, torch.tensor([1, 1, 0, 0]))

    def test_one_sample_per_class_is_still_refused(self):
        with pytest.raises(LatentSurgeonError, match="at least 2"):
            CAV("mass_mean").fit(torch.randn(3, 2), torch.tensor([1, 0, 0]))

    def test_zero_direction_kept_on_request_with_chance_scores(self):
        same = torch.ones(8, 3)
        y = torch.arange(8) % 2
        with pytest.raises(LatentSurgeonError, match="zero_direction='keep'"):
            CAV("mass_mean").fit(same, y)  # the default keeps raising
        cav = CAV("mass_mean", zero_direction="keep").fit(same, y)
        assert torch.equal(cav.direction_, torch.zeros(3))
        assert cav.threshold_ == 0.0
        assert cav.scores_["auc"] == 0.5 and cav.scores_["accuracy"] == 0.5
        assert not cav.predict(same).any()
        assert torch.equal(cav.project(torch.randn(5, 3)), torch.zeros(5))

    def test_zero_direction_and_tiny_set_together(self):
        cav = CAV(zero_direction="keep").fit(torch.ones(4, 2), torch.tensor([1, 1, 0, 0]))
        assert torch.equal(cav.direction_, torch.zeros(2)) and cav.scores_["n_test"] == 0

    def test_zero_direction_is_validated_saved_and_cloned(self, tmp_path):
        with pytest.raises(InvalidParameterError, match="CAV: zero_direction must be"):
            CAV(zero_direction="ignore").fit(torch.randn(8, 2), torch.arange(8) % 2)
        cav = CAV(zero_direction="keep").fit(torch.ones(8, 2), torch.arange(8) % 2)
        assert clone(cav).zero_direction == "keep"
        cav.save(tmp_path / "cav.pt")
        loaded = CAV.load(tmp_path / "cav.pt")
        assert loaded.zero_direction == "keep" and torch.equal(loaded.direction_, cav.direction_)

    def test_not_fitted(self):
        with pytest.raises(NotFittedError):
            CAV().project(torch.randn(3, 3))
        with pytest.raises(NotFittedError):
            CAV().save("unused.pt")


class TestEstimatorContract:
    def test_clone_and_params(self):
        x, y, _ = planted_with_distractor(n=200)
        cav = CAV("pattern", "mean", filter_method="ridge", C=[0.1, 1.0], test_size=0.3, seed=4)
        copy = clone(cav)
        assert copy is not cav and copy.get_params() == cav.get_params()
        cav.fit(x, y)
        fresh = clone(cav)
        assert not fresh.is_fitted()
        assert clone(cav.set_params(C="grid")).C == "grid"

    @pytest.mark.parametrize("params, name", [
        ({"C": -1.0}, "C"), ({"C": 0}, "C"), ({"C": []}, "C"), ({"C": [1.0, -2.0]}, "C"),
        ({"C": math.inf}, "C"), ({"C": "auto"}, "C"), ({"test_size": 1.0}, "test_size"),
        ({"seed": -3}, "seed"), ({"filter_method": "pattern"}, "filter_method"),
        ({"method": "lda"}, "method"), ({"pooling": "sum"}, "pooling"),
    ])
    def test_invalid_parameters_raise_at_fit(self, params, name):
        x, y = torch.randn(40, 3), torch.arange(40) % 2
        cav = CAV(**params)  # the constructor stores, fit checks
        with pytest.raises(InvalidParameterError, match=f"CAV: {name} must be"):
            cav.fit(x, y)
        with pytest.raises(InvalidParameterError, match=f"CAV: {name} must be"):
            cav.fit_paired(x, x + 1)


class TestLabelsAndNonFinite:
    def test_soft_labels_are_refused(self):
        # The old code truncated 0.6 to 0 silently.
        x = torch.randn(40, 3)
        y = (torch.arange(40) % 2).float()
        y[5] = 0.6
        with pytest.raises(InvalidParameterError, match="0/1 .*soft labels"):
            CAV().fit(x, y)
        with pytest.raises(InvalidParameterError, match="labels"):
            CAV().fit(x, torch.full((40,), 2))

    def test_bool_and_float_01_labels_are_accepted(self):
        x, y, u = planted_with_distractor(n=400)
        a = CAV("mass_mean").fit(x, y.bool())
        b = CAV("mass_mean").fit(x, y.double().numpy())
        torch.testing.assert_close(a.direction_, b.direction_)

    def test_nan_activations_are_a_non_finite_error(self):
        # The old code said the groups were "indistinguishable".
        x, y = torch.randn(40, 3), torch.arange(40) % 2
        x[7, 1] = math.nan
        for method in ("mass_mean", "logistic", "svm"):
            with pytest.raises(NonFiniteError, match="activations"):
                CAV(method).fit(x, y)
        with pytest.raises(NonFiniteError):
            CAV().fit_paired(x, torch.randn(40, 3))
        # a NaN outside the fitted samples does not matter
        keep = torch.ones(40, dtype=torch.bool)
        keep[7] = False
        assert CAV().fit(x, y, sample_mask=keep).is_fitted()


def _standardised(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    X = x.double().numpy()
    sd = X.std(0) + 1e-8
    return (X - X.mean(0)) / sd, sd


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


class TestDetoxaiMethods:
    def test_signal_is_the_label_covariance_pattern(self, data):
        x, y, _ = data
        X, yy = x.double().numpy(), y.double().numpy()
        # detoxai: covariance of the activations with the label over the label's variance
        cov = ((X - X.mean(0)) * (yy - yy.mean())[:, None]).sum(0) / (len(yy) - 1)
        expected = cov / (((yy - yy.mean()) ** 2).sum() / (len(yy) - 1))
        cav = CAV("signal").fit(x, y)
        np.testing.assert_allclose(cav.direction_.double().numpy(),
                                   expected / np.linalg.norm(expected), rtol=0, atol=1e-7)
        # ... not the Haufe pattern of the logistic filter, which the old "signal" was
        assert CAV("pattern").fit(x, y).cosine(cav) < 0.9999

    def test_lasso_is_scikit_learns_lasso_on_standardised_activations(self):
        g = torch.Generator().manual_seed(3)
        x = torch.randn(300, 40, generator=g, dtype=torch.float64)
        y = (torch.arange(300) % 3 == 0).long()  # unbalanced: sample weights matter
        x[y == 1, :3] += 1.5
        cav = CAV("lasso", C=0.05).fit(x, y)
        Z, sd = _standardised(x)
        yy = y.numpy()
        w = np.where(yy == 1, 300 / (2 * yy.sum()), 300 / (2 * (300 - yy.sum())))
        ref = Lasso(alpha=1 / (0.05 * 300), max_iter=100_000, tol=1e-10).fit(
            Z, 2.0 * yy - 1, sample_weight=w).coef_ / sd
        assert _cos(cav.direction_.double().numpy(), ref) >= 0.9999
        direction = cav.direction_.abs()
        assert int((direction > 1e-6).sum()) < 40  # sparse ...
        assert set(direction.topk(3).indices.tolist()) == {0, 1, 2}  # ... on the planted dims

    def test_svm_grid_search_as_detoxai(self):
        g = torch.Generator().manual_seed(4)
        x = torch.randn(160, 12, generator=g, dtype=torch.float64)
        y = (torch.arange(160) % 4 == 0).long()
        x[y == 1, 0] += 1.0
        cav = CAV("svm", C="grid", seed=0).fit(x, y)
        Z, sd = _standardised(x)
        yy = y.numpy()
        w = (1.0 / np.bincount(yy))[yy]
        search = GridSearchCV(LinearSVC(random_state=0, max_iter=5000), {"C": list(GRID)}, cv=5)
        ref = search.fit(Z, yy, sample_weight=w / w.max()).best_estimator_.coef_[0] / sd
        assert GRID[0] == 1e-5 and GRID[-1] == 1e4 and len(GRID) == 10
        assert _cos(cav.direction_.double().numpy(), ref) >= 0.9999
