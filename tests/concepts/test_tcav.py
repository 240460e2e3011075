"""TCAV: derivatives, scores, random sets, CAV reuse, model state, captum agreement, planted test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from latentsurgeon.concepts import CAV, TCAVResult, tcav
from latentsurgeon.concepts.tcav import (
    _lift,
    _RandomSets,
    _set_test,
    directional_derivatives,
    pooled_gradients,
    tcav_scores,
)
from latentsurgeon.errors import LatentSurgeonError, LayerNotFoundError, ShapeMismatchError
from latentsurgeon.hooks import hook_count


def tiny_cnn(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),      # 0 1 2
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),                         # 3 4
        nn.Flatten(), nn.Linear(6 * 16, 16), nn.ReLU(), nn.Linear(16, 3),  # 5 6 7 8
    ).to(dtype).eval()


def images(n: int, seed: int, patch: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    if patch:
        x[:, :, 5:8, 0:3] = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]])
    return x


@pytest.fixture(scope="module")
def setup():
    model = tiny_cnn()
    return model, images(40, 1), images(60, 2, patch=True), images(400, 3)


class TestDerivatives:
    @pytest.mark.parametrize("pooling", ["flatten", "mean", "max"])
    def test_matches_finite_differences(self, pooling):
        model = tiny_cnn(torch.float64)
        x = images(6, 7).double()
        grads, shape = pooled_gradients(model, "3", x, 1, pooling=pooling)
        assert shape == (6, 4, 4)
        dim = 96 if pooling == "flatten" else 6
        assert grads.shape == (6, dim)
        g = torch.Generator().manual_seed(8)
        v = torch.randn(dim, generator=g, dtype=torch.float64)
        with torch.no_grad():
            acts = model[:4](x)
            step = _lift(acts, v.expand(len(x), dim), pooling)
            eps = 1e-6
            up, down = model[4:](acts + eps * step)[:, 1], model[4:](acts - eps * step)[:, 1]
        torch.testing.assert_close(grads @ v, (up - down) / (2 * eps), atol=1e-6, rtol=1e-5)

    def test_lift_moves_the_pooled_vector_by_delta(self):
        from latentsurgeon.activations import pool

        acts = torch.rand(5, 3, 4, 4)
        delta = 0.01 * torch.randn(5, 3)
        for mode in ("mean", "max"):
            moved = pool(acts + _lift(acts, delta, mode), mode)
            torch.testing.assert_close(moved - pool(acts, mode), delta, atol=1e-6, rtol=0)

    def test_directional_derivatives_of_cavs(self, setup):
        model, inputs, concept, pool = setup
        cav = CAV("mass_mean", "max").fit(
            torch.cat([_acts(model, "3", pool[:60]), _acts(model, "3", concept)]),
            torch.cat([torch.zeros(60), torch.ones(60)]))
        d = directional_derivatives(model, "3", inputs, 2, [cav, cav])
        grads, _ = pooled_gradients(model, "3", inputs, 2, pooling="max")
        assert d.shape == (2, 40)
        torch.testing.assert_close(d[0], grads @ cav.direction_.double())

    def test_frozen_model_and_state_are_kept(self, setup):
        model, inputs, _, _ = setup
        for p in model.parameters():
            p.requires_grad_(False)
        model.train()
        try:
            grads, _ = pooled_gradients(model, "4", inputs, 0)
            assert torch.isfinite(grads).all() and grads.abs().sum() > 0
            assert model.training and all(not p.requires_grad for p in model.parameters())
            assert hook_count(model) == 0
        finally:
            model.eval()
            for p in model.parameters():
                p.requires_grad_(True)

    def test_errors(self, setup):
        model, inputs, _, _ = setup
        with pytest.raises(LayerNotFoundError):
            pooled_gradients(model, "features", inputs, 0)
        with pytest.raises(ShapeMismatchError, match="target=7"):
            pooled_gradients(model, "3", inputs, 7)
        with pytest.raises(ShapeMismatchError, match="one vector per input"):
            pooled_gradients(model, "3", inputs, 0, pooling="none")
        assert hook_count(model) == 0


def _acts(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    from latentsurgeon.activations import capture

    with capture(model, layer) as cap, torch.no_grad():
        model(x)
    return cap[layer]


class TestScores:
    def test_sign_count_and_magnitude(self):
        sign, magnitude = tcav_scores(torch.tensor([[1.0, -1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
        np.testing.assert_allclose(sign, [0.5, 0.0])
        np.testing.assert_allclose(magnitude, [0.75, 0.0])  # (1 + 2) / (1 + 1 + 2)

    def test_set_test(self):
        null = np.array([0.1, -0.1, 0.05, -0.05, 0.0])
        assert _set_test(np.array([0.0, 0.01]), null) > 0.5
        assert _set_test(np.array([1.0, 1.1]), null) < 1e-3
        assert math.isnan(_set_test(np.array([1.0]), np.array([0.0])))

    def test_random_sets_from_a_pool(self):
        pool = torch.arange(100).float()[:, None]
        sets = _RandomSets(pool, 5, 20, seed=3)
        assert len(sets.negatives) == len(sets.positives) == 5
        for neg, pos in zip(sets.negatives, sets.positives, strict=True):
            assert len(neg) == len(pos) == 20
            assert not set(neg.tolist()) & set(pos.tolist())
        again = _RandomSets(pool, 5, 20, seed=3)
        assert all(torch.equal(a, b) for a, b in zip(sets.negatives, again.negatives, strict=True))
        with pytest.raises(LatentSurgeonError, match="2 \\* set_size"):
            _RandomSets(pool, 5, 60, seed=0)


@pytest.fixture(scope="module")
def result(setup):
    model, inputs, concept, pool = setup
    return tcav(model, "3", inputs, 2, concept, pool, n_runs=6, method="mass_mean",
                pooling="flatten", seed=0, progress=False)


class TestTCAV:
    def test_result_fields(self, result):
        assert isinstance(result, TCAVResult)
        assert result.n_runs == 6 and len(result.random_sign_count) == 6
        assert result.derivatives.shape == (6, 40)
        assert len(result.concept_cavs) == 6 and len(result.random_cavs) == 6
        assert ((result.sign_count >= 0) & (result.sign_count <= 1)).all()
        assert ((result.magnitude >= 0) & (result.magnitude <= 1)).all()
        assert result.test == "set" and result.p_value == result.p_value_set
        assert 0 <= result.p_value_ttest <= 1 and 0 <= result.p_value_set <= 1
        assert result.cav_accuracy.shape == (6,)
        assert result.mean == pytest.approx(float(np.mean(result.sign_count)))
        d = result.to_dict()
        assert d["n_tests"] == 1 and len(d["sign_count"]) == 6
        assert "p(set)" in result.summary()

    def test_same_seed_same_result(self, setup, result):
        model, inputs, concept, pool = setup
        again = tcav(model, "3", inputs, 2, concept, pool, n_runs=6, method="mass_mean",
                     seed=0, progress=False)
        np.testing.assert_array_equal(again.sign_count, result.sign_count)
        np.testing.assert_array_equal(again.random_sign_count, result.random_sign_count)
        assert again.p_value == result.p_value
        other = tcav(model, "3", inputs, 2, concept, pool, n_runs=6, method="mass_mean",
                     seed=1, progress=False)
        assert not np.array_equal(other.random_mean_derivative, result.random_mean_derivative)

    def test_reuse_cavs_without_refitting(self, setup, result):
        model, inputs, _, _ = setup
        again = tcav(model, "3", inputs, 2, result.concept_cavs, random_cavs=result.random_cavs,
                     progress=False)
        np.testing.assert_allclose(again.sign_count, result.sign_count)
        np.testing.assert_allclose(again.random_sign_count, result.random_sign_count)
        assert all(a is b for a, b in zip(again.concept_cavs, result.concept_cavs, strict=True))
        new_inputs = images(25, 11)
        fresh = tcav(model, "3", new_inputs, 2, result.concept_cavs,
                     random_cavs=result.random_cavs, progress=False)
        assert fresh.derivatives.shape == (6, 25)
        one = tcav(model, "3", new_inputs, 2, result.concept_cavs[0], progress=False)
        assert one.n_runs == 1 and math.isnan(one.p_value) and not one.significant

    def test_reused_cavs_with_a_fresh_null(self, setup, result):
        model, inputs, _, pool = setup
        res = tcav(model, "3", inputs, 2, result.concept_cavs, pool, seed=5, progress=False)
        assert len(res.random_cavs) == 6
        assert res.random_cavs[0].method == "mass_mean"

    def test_explicit_random_sets(self, setup):
        model, inputs, concept, pool = setup
        sets = [pool[i * 50:(i + 1) * 50] for i in range(5)]
        res = tcav(model, "3", inputs, 2, concept, sets, method="mass_mean", pooling="mean",
                   progress=False)
        assert res.n_runs == 4 and len(res.random_cavs) == 4
        assert res.concept_cavs[0].direction_.shape == (6,)
        with pytest.raises(LatentSurgeonError, match="needs 7 random sets"):
            tcav(model, "3", inputs, 2, concept, sets, n_runs=6, progress=False)

    def test_bonferroni(self, result):
        p = result.p_value
        assert result.significant_at(alpha=0.05, n_tests=1) == (p < 0.05)
        assert result.significant_at(alpha=0.05, n_tests=10) == (p < 0.005)
        assert result.significant_at(test="ttest") == (result.p_value_ttest < 0.05)

    def test_model_state_is_kept(self, setup):
        model, inputs, concept, pool = setup
        model.train()
        try:
            tcav(model, "3", inputs, 2, concept, pool, n_runs=2, method="mass_mean",
                 progress=False)
            assert model.training
            assert hook_count(model) == 0
            assert all(p.grad is None for p in model.parameters())
        finally:
            model.eval()

    def test_errors(self, setup, result):
        model, inputs, concept, pool = setup
        with pytest.raises(LatentSurgeonError, match="needs random inputs"):
            tcav(model, "3", inputs, 2, concept, progress=False)
        with pytest.raises(LatentSurgeonError, match="Unknown test"):
            tcav(model, "3", inputs, 2, concept, pool, test="z", progress=False)
        with pytest.raises(LatentSurgeonError, match="Unknown CAV method"):
            tcav(model, "3", inputs, 2, concept, pool, method="lda", progress=False)
        with pytest.raises(ShapeMismatchError, match="does not fit"):
            tcav(model, "0", inputs, 2, result.concept_cavs[0], progress=False)  # other layer
        flat = CAV("mass_mean").fit(torch.randn(20, 5), torch.arange(20) % 2)
        with pytest.raises(ShapeMismatchError, match="does not fit"):
            tcav(model, "3", inputs, 2, flat, progress=False)
        assert hook_count(model) == 0


class _InjectedClassifier:
    """A captum ``Classifier`` returning our CAV directions instead of training its own, so the
    two TCAV implementations can be compared given the same CAVs."""

    def __init__(self, directions: dict[frozenset, tuple[int, int, torch.Tensor]]) -> None:
        self.directions = directions
        self.current: tuple[int, int, torch.Tensor] | None = None

    def train_and_eval(self, dataloader, **kwargs):
        ids = set()
        for _, labels in dataloader:
            ids.update(int(i) for i in labels.unique())
        self.current = self.directions[frozenset(ids)]
        return {"accs": torch.tensor(1.0)}

    def weights(self) -> torch.Tensor:
        _, _, v = self.current
        return torch.stack([-v, v])

    def classes(self) -> list[int]:
        positive, negative, _ = self.current
        return [negative, positive]


def test_agrees_with_captum_given_the_same_cavs(setup, tmp_path):
    concept_mod = pytest.importorskip("captum.concept")
    try:
        from captum.concept._utils.classifier import Classifier
    except ImportError:  # pragma: no cover - captum moved its API
        pytest.skip("captum.concept has no Classifier interface")
    if not hasattr(concept_mod, "TCAV") or not hasattr(concept_mod, "Concept"):
        pytest.skip("captum.concept.TCAV / Concept not found")

    model, inputs, concept, pool = setup
    sets = [pool[i * 40:(i + 1) * 40] for i in range(5)]
    ours = tcav(model, "3", inputs, 2, concept, sets, method="logistic", progress=False)

    def loader(x: torch.Tensor) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(x, batch_size=32)

    c = concept_mod.Concept(0, "patch", loader(concept))
    randoms = [concept_mod.Concept(i + 1, f"random{i}", loader(s)) for i, s in enumerate(sets)]
    directions = {}
    experiments = []
    for i in range(1, len(sets)):
        directions[frozenset({0, i + 1})] = (0, i + 1, ours.concept_cavs[i - 1].direction_)
        directions[frozenset({i, i + 1})] = (i, i + 1, ours.random_cavs[i - 1].direction_)
        experiments += [[c, randoms[i]], [randoms[i - 1], randoms[i]]]

    injected = type("Injected", (_InjectedClassifier, Classifier), {})(directions)
    captum_tcav = concept_mod.TCAV(model, ["3"], classifier=injected,
                                   save_path=str(tmp_path / "cav"))
    scores = captum_tcav.interpret(inputs, experiments, target=2)
    # captum keys results by "<id>-<id>" of each experimental set
    concept_keys = [f"0-{i + 1}" for i in range(1, len(sets))]
    null_keys = [f"{i}-{i + 1}" for i in range(1, len(sets))]
    theirs = np.array([float(scores[k]["3"]["sign_count"][0]) for k in concept_keys])
    theirs_null = np.array([float(scores[k]["3"]["sign_count"][0]) for k in null_keys])
    np.testing.assert_allclose(theirs, ours.sign_count, atol=0.05)
    np.testing.assert_allclose(theirs_null, ours.random_sign_count, atol=0.05)
    # captum's "magnitude" is the mean derivative, reported by us as mean_derivative
    theirs_mag = np.array([float(scores[k]["3"]["magnitude"][0]) for k in concept_keys])
    np.testing.assert_allclose(theirs_mag, ours.mean_derivative, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def decoy_sets(decoy_model):
    """Class-0 test images, watermarked class-0 training images, and random training images."""
    _, data = decoy_model
    train = data.train
    concept = train.images[(train.labels == 0) & train.artifact]  # shortcut class + mark
    class_inputs = data.test.images[data.test.labels == data.shortcut_class]
    pool = train.images[~train.artifact]
    g = torch.Generator().manual_seed(1234)
    random_concept = pool[torch.randperm(len(pool), generator=g)[:100]]
    return class_inputs, concept, pool, random_concept


class TestPlantedWatermark:
    """A DigitCNN trained on decoy digits with a watermark on class 0 uses the watermark."""

    def test_watermark_is_significant_random_concept_is_not(self, decoy_model, decoy_sets):
        model, data = decoy_model
        class_inputs, concept, pool, random_concept = decoy_sets
        shortcut = data.shortcut_class
        found = tcav(model, "features", class_inputs, shortcut, concept, pool, seed=0,
                     progress=False)
        assert found.significant and found.p_value < 1e-3
        assert found.mean >= 0.95 and found.magnitude_mean >= 0.95
        assert float(np.mean(found.cav_accuracy)) > 0.9
        null = tcav(model, "features", class_inputs, shortcut, random_concept, pool, seed=0,
                    progress=False)
        assert not null.significant and null.p_value > 0.05

    @pytest.mark.slow
    def test_kim_ttest_flags_random_concepts_the_set_test_does_not(self, decoy_model, decoy_sets):
        # Documents why test="set" is the default: the runs of one concept share its examples,
        # so Kim et al.'s t-test over runs flags random concepts far more often than alpha.
        model, data = decoy_model
        class_inputs, _, pool, _ = decoy_sets
        flagged = {"ttest": 0, "set": 0}
        for k in range(20):
            g = torch.Generator().manual_seed(5000 + k)
            random_concept = pool[torch.randperm(len(pool), generator=g)[:100]]
            res = tcav(model, "features", class_inputs, data.shortcut_class, random_concept, pool,
                       method="mass_mean", seed=k, progress=False)
            flagged["ttest"] += res.p_value_ttest < 0.05
            flagged["set"] += res.p_value_set < 0.05
        assert flagged["set"] <= 1  # alpha = 0.05: about 1 in 20 is expected by chance
        assert flagged["ttest"] >= 3
