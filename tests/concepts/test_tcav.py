"""TCAV: derivatives, scores, random sets, CAV reuse, model state, captum agreement, validation,
non-finite values, structured outputs, planted test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from captum.concept import TCAV, Concept
from captum.concept._utils.classifier import Classifier
from sklearn.linear_model import LogisticRegression
from torch import nn

from latentsurgeon.activations import capture, pool
from latentsurgeon.activations.pooling import lift as _lift
from latentsurgeon.concepts import CAV, TCAVResult, tcav
from latentsurgeon.concepts.derivatives import (
    directional_derivatives,
    pooled_gradients,
)
from latentsurgeon.concepts.random_sets import RandomSets
from latentsurgeon.concepts.tcav_statistics import set_test, tcav_scores
from latentsurgeon.errors import (
    InvalidParameterError,
    LatentSurgeonError,
    LayerNotFoundError,
    NonFiniteError,
    ShapeMismatchError,
)
from latentsurgeon.hooks import hook_count


def _acts(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    with capture(model, layer) as cap, torch.no_grad():
        model(x)
    return cap[layer]


class TestDerivatives:
    @pytest.mark.parametrize("pooling", ["flatten", "mean", "max"])
    def test_matches_finite_differences(self, pooling, tiny_cnn, images):
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
        acts = torch.rand(5, 3, 4, 4)
        delta = 0.01 * torch.randn(5, 3)
        for mode in ("mean", "max"):
            moved = pool(acts + _lift(acts, delta, mode), mode)
            torch.testing.assert_close(moved - pool(acts, mode), delta, atol=1e-6, rtol=0)

    def test_directional_derivatives_of_cavs(self, setup):
        model, inputs, concept, random = setup
        cav = CAV("mass_mean", "max").fit(
            torch.cat([_acts(model, "3", random[:60]), _acts(model, "3", concept)]),
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

    def test_in_place_ops_after_the_layer_do_not_change_the_derivative(self, tiny_cnn, images):
        plain = tiny_cnn(torch.float64)
        inplace = tiny_cnn(torch.float64)
        inplace[4] = nn.ReLU(inplace=True)
        x = images(8, 4).double()
        torch.testing.assert_close(pooled_gradients(inplace, "3", x, 0)[0],
                                   pooled_gradients(plain, "3", x, 0)[0], rtol=0, atol=0)

    def test_errors(self, setup):
        model, inputs, _, _ = setup
        with pytest.raises(LayerNotFoundError):
            pooled_gradients(model, "features", inputs, 0)
        with pytest.raises(InvalidParameterError, match="target=7 is out of range"):
            pooled_gradients(model, "3", inputs, 7)
        with pytest.raises(ShapeMismatchError, match="one vector per input"):
            pooled_gradients(model, "3", inputs, 0, pooling="none")
        assert hook_count(model) == 0


class TestScores:
    def test_sign_count_and_magnitude(self):
        sign, magnitude = tcav_scores(torch.tensor([[1.0, -1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
        np.testing.assert_allclose(sign, [0.5, 0.0])
        np.testing.assert_allclose(magnitude, [0.75, 0.0])  # (1 + 2) / (1 + 1 + 2)

    def test_set_test(self):
        null = np.array([0.1, -0.1, 0.05, -0.05, 0.0])
        assert set_test(np.array([0.0, 0.01]), null) > 0.5
        assert set_test(np.array([1.0, 1.1]), null) < 1e-3
        assert math.isnan(set_test(np.array([1.0]), np.array([0.0])))

    def test_random_sets_from_a_pool(self):
        random = torch.arange(100).float()[:, None]
        sets = RandomSets(random, 5, 20, seed=3)
        assert len(sets.negatives) == len(sets.positives) == 5
        for neg, pos in zip(sets.negatives, sets.positives, strict=True):
            assert len(neg) == len(pos) == 20
            assert not set(neg.tolist()) & set(pos.tolist())
        again = RandomSets(random, 5, 20, seed=3)
        assert all(torch.equal(a, b) for a, b in zip(sets.negatives, again.negatives, strict=True))
        with pytest.raises(InvalidParameterError, match="2 \\* set_size"):
            RandomSets(random, 5, 60, seed=0)


class _CountingModel(nn.Module):
    """Counts how often each input (identified by its first pixel) goes through the model."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.extend(x[:, 0, 0, 0].tolist())
        return self.inner(x)


class TestNoWaste:
    def test_each_input_goes_through_the_model_once(self, tiny_cnn, images):
        model = _CountingModel(tiny_cnn())
        inputs, concept = images(30, 1), images(40, 2, patch=True)
        sets = [images(25, 10 + i) for i in range(5)]
        tcav(model, "inner.3", inputs, 2, concept, random=sets, method="logistic", progress=False)
        expected = [inputs, concept, *sets]
        assert sorted(model.seen) == sorted(torch.cat(expected)[:, 0, 0, 0].tolist())

    def test_random_pool_rows_drawn_by_several_runs_pass_once(self, tiny_cnn, images):
        model = _CountingModel(tiny_cnn())
        inputs, concept, random = images(30, 1), images(20, 2, patch=True), images(60, 3)
        tcav(model, "inner.3", inputs, 2, concept, random=random, n_runs=8, method="mass_mean",
             progress=False)
        drawn = [v for v in model.seen if v in set(random[:, 0, 0, 0].tolist())]
        assert len(drawn) == len(set(drawn)) == 60  # 8 runs x 2 sets of 20 cover the pool


@pytest.fixture(scope="module")
def result(setup):
    model, inputs, concept, random = setup
    return tcav(model, "3", inputs, 2, concept, random=random, n_runs=6, method="mass_mean",
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
        assert d["significance"] == 0.05
        assert "p(set)" in result.summary()

    def test_same_seed_same_result(self, setup, result):
        model, inputs, concept, random = setup
        again = tcav(model, "3", inputs, 2, concept, random=random, n_runs=6, method="mass_mean",
                     seed=0, progress=False)
        np.testing.assert_array_equal(again.sign_count, result.sign_count)
        np.testing.assert_array_equal(again.random_sign_count, result.random_sign_count)
        assert again.p_value == result.p_value
        other = tcav(model, "3", inputs, 2, concept, random=random, n_runs=6, method="mass_mean",
                     seed=1, progress=False)
        assert not np.array_equal(other.random_mean_derivative, result.random_mean_derivative)
        fresh = [tcav(model, "3", inputs, 2, concept, random=random, n_runs=3, method="mass_mean",
                      seed=None, progress=False) for _ in range(2)]
        assert not np.array_equal(fresh[0].random_mean_derivative,
                                  fresh[1].random_mean_derivative)

    def test_reuse_cavs_without_refitting(self, setup, result):
        model, inputs, _, _ = setup
        again = tcav(model, "3", inputs, 2, result.concept_cavs, random_cavs=result.random_cavs,
                     progress=False)
        np.testing.assert_allclose(again.sign_count, result.sign_count)
        np.testing.assert_allclose(again.random_sign_count, result.random_sign_count)
        assert all(a is b for a, b in zip(again.concept_cavs, result.concept_cavs, strict=True))
        g = torch.Generator().manual_seed(11)
        new_inputs = torch.rand(25, 1, 8, 8, generator=g)
        fresh = tcav(model, "3", new_inputs, 2, result.concept_cavs,
                     random_cavs=result.random_cavs, progress=False)
        assert fresh.derivatives.shape == (6, 25)
        one = tcav(model, "3", new_inputs, 2, result.concept_cavs[0], progress=False)
        assert one.n_runs == 1 and math.isnan(one.p_value) and not one.significant

    def test_reused_cavs_with_a_fresh_null(self, setup, result):
        model, inputs, _, random = setup
        res = tcav(model, "3", inputs, 2, result.concept_cavs, random=random, seed=5, progress=False)
        assert len(res.random_cavs) == 6
        assert res.random_cavs[0].method == "mass_mean"

    def test_explicit_random_sets(self, setup):
        model, inputs, concept, random = setup
        sets = [random[i * 50:(i + 1) * 50] for i in range(5)]
        res = tcav(model, "3", inputs, 2, concept, random=sets, method="mass_mean", pooling="mean",
                   progress=False)
        assert res.n_runs == 4 and len(res.random_cavs) == 4
        assert res.concept_cavs[0].direction_.shape == (6,)
        with pytest.raises(InvalidParameterError, match="needs 7 random sets"):
            tcav(model, "3", inputs, 2, concept, random=sets, n_runs=6, progress=False)

    def test_loaders_and_unsized_data_give_the_same_result(self, setup):
        model, inputs, concept, random = setup
        sets = [random[i * 50:(i + 1) * 50] for i in range(4)]

        class Stream(torch.utils.data.IterableDataset):  # no length: sizes are not known ahead
            def __init__(self, x: torch.Tensor) -> None:
                self.x = x

            def __iter__(self):
                return iter(self.x)

        def loader(x: torch.Tensor, sized: bool) -> torch.utils.data.DataLoader:
            return torch.utils.data.DataLoader(x if sized else Stream(x), batch_size=16)

        base = tcav(model, "3", inputs, 2, concept, random=sets, method="logistic", progress=False)
        for sized in (True, False):
            res = tcav(model, "3", loader(inputs, sized), 2, loader(concept, sized),
                       random=[loader(s, sized) for s in sets], method="logistic", progress=False)
            np.testing.assert_array_equal(res.sign_count, base.sign_count)
            torch.testing.assert_close(res.derivatives, base.derivatives, rtol=0, atol=1e-12)

    def test_bonferroni(self, result):
        p = result.p_value
        assert result.significant_at(significance=0.05, n_tests=1) == (p < 0.05)
        assert result.significant_at(significance=0.05, n_tests=10) == (p < 0.005)
        assert result.significant_at(test="ttest") == (result.p_value_ttest < 0.05)

    def test_model_state_is_kept(self, setup):
        model, inputs, concept, random = setup
        model.train()
        try:
            tcav(model, "3", inputs, 2, concept, random=random, n_runs=2, method="mass_mean",
                 progress=False)
            assert model.training
            assert hook_count(model) == 0
            assert all(p.grad is None for p in model.parameters())
        finally:
            model.eval()

    def test_errors(self, setup, result):
        model, inputs, concept, random = setup
        with pytest.raises(InvalidParameterError, match="needs random inputs"):
            tcav(model, "3", inputs, 2, concept, progress=False)
        with pytest.raises(InvalidParameterError, match="test must be one of"):
            tcav(model, "3", inputs, 2, concept, random=random, test="z", progress=False)
        with pytest.raises(InvalidParameterError, match="method must be one of"):
            tcav(model, "3", inputs, 2, concept, random=random, method="lda", progress=False)
        with pytest.raises(ShapeMismatchError, match="does not fit"):
            tcav(model, "0", inputs, 2, result.concept_cavs[0], progress=False)  # other layer
        flat = CAV("mass_mean").fit(torch.randn(20, 5), torch.arange(20) % 2)
        with pytest.raises(ShapeMismatchError, match="does not fit"):
            tcav(model, "3", inputs, 2, flat, progress=False)
        assert hook_count(model) == 0


class TestValidation:
    """Every parameter is checked when tcav is called, before any pass through the model."""

    @pytest.mark.parametrize("kwargs, match", [
        ({"significance": 1.5}, "significance must be a number in \\(0, 1\\)"),
        ({"significance": 0.0}, "significance must be"),
        ({"n_tests": 0}, "n_tests must be an int in \\[1, inf\\]"),
        ({"n_runs": 0}, "n_runs must be"),
        ({"set_size": 1}, "set_size must be"),
        ({"pooling": "sum"}, "pooling must be one of"),
        ({"seed": -1}, "seed must be"),
        ({"head": 1.5}, "head must be"),
        ({"batch_size": 0}, "batch_size must be"),
        ({"cav_params": {"kernel": "rbf"}}, "cav_params accepts"),
        ({"cav_params": {"C": -1.0}}, "C must be"),
        ({"cav_params": {"test_size": 2.0}}, "test_size must be"),
    ])
    def test_bad_parameters(self, setup, kwargs, match):
        model, inputs, concept, random = setup
        counting = _CountingModel(model)
        with pytest.raises(InvalidParameterError, match=match):
            tcav(counting, "inner.3", inputs, 2, concept, random=random, progress=False, **kwargs)
        assert counting.seen == []  # refused before any forward pass

    def test_target_must_be_an_int(self, setup):
        model, inputs, concept, random = setup
        with pytest.raises(InvalidParameterError, match="target must be an int"):
            tcav(model, "3", inputs, 2.0, concept, random=random, progress=False)
        with pytest.raises(InvalidParameterError, match="target must be an int"):
            tcav(model, "3", inputs, True, concept, random=random, progress=False)

    def test_negative_target_is_the_index_from_the_end_and_reported_as_such(self, setup):
        model, inputs, concept, random = setup
        last = tcav(model, "3", inputs, -1, concept, random=random, n_runs=3, method="mass_mean",
                    progress=False)
        two = tcav(model, "3", inputs, 2, concept, random=random, n_runs=3, method="mass_mean",
                   progress=False)
        assert last.target == 2 and "class 2" in last.summary()
        np.testing.assert_array_equal(last.sign_count, two.sign_count)
        torch.testing.assert_close(last.derivatives, two.derivatives, rtol=0, atol=0)

    def test_target_out_of_range(self, setup):
        model, inputs, concept, random = setup
        with pytest.raises(InvalidParameterError, match="target=42 is out of range: the model "
                                                        "has 3 outputs"):
            tcav(model, "3", inputs, 42, concept, random=random, progress=False)
        with pytest.raises(InvalidParameterError, match="target=-4 is out of range"):
            tcav(model, "3", inputs, -4, concept, random=random, progress=False)

    def test_target_out_of_range_with_no_inputs_of_that_class(self, setup):
        # The CLI selects the class inputs by label: a class that does not exist gives no
        # inputs, and the error must name the target, not the empty inputs.
        model, inputs, concept, random = setup
        with pytest.raises(InvalidParameterError, match="target=42 is out of range"):
            tcav(model, "3", inputs[:0], 42, concept, random=random, progress=False)
        with pytest.raises(LatentSurgeonError, match="class inputs hold no samples"):
            tcav(model, "3", inputs[:0], 1, concept, random=random, progress=False)

    def test_device_other_than_the_models_is_refused(self, setup):
        model, inputs, concept, random = setup
        with pytest.raises(LatentSurgeonError, match="never move"):
            tcav(model, "3", inputs, 2, concept, random=random, device="meta", progress=False)

    def test_alpha_is_a_deprecated_alias_of_significance(self, setup):
        model, inputs, concept, random = setup
        with pytest.warns(FutureWarning, match="alpha= is deprecated; use significance="):
            res = tcav(model, "3", inputs, 2, concept, random=random, n_runs=3, method="mass_mean",
                       alpha=0.01, progress=False)
        assert res.significance == 0.01
        with pytest.warns(FutureWarning, match="TCAVResult.alpha is deprecated"):
            assert res.alpha == 0.01
        with pytest.warns(FutureWarning, match="alpha= is deprecated"):
            assert res.significant_at(alpha=0.5) == res.significant_at(significance=0.5)
        with pytest.raises(InvalidParameterError, match="not both"):
            tcav(model, "3", inputs, 2, concept, random=random, alpha=0.01, significance=0.01,
                 progress=False)


class TestNonFinite:
    """NaN or Inf anywhere is an error, never a result (on the old code, all-NaN class inputs
    gave sign count 1.00, p = 0.025, significant=True)."""

    @pytest.mark.parametrize("bad", [math.nan, math.inf])
    def test_class_inputs(self, setup, bad):
        model, inputs, concept, random = setup
        broken = inputs.clone()
        broken[3, 0, 2, 2] = bad
        with pytest.raises(NonFiniteError, match="class inputs"):
            tcav(model, "3", broken, 2, concept, random=random, n_runs=3, progress=False)
        with pytest.raises(NonFiniteError):
            tcav(model, "3", torch.full_like(inputs, math.nan), 2, concept, random=random, n_runs=3,
                 progress=False)
        assert hook_count(model) == 0

    def test_concept_and_random_inputs(self, setup):
        model, inputs, concept, random = setup
        with pytest.raises(NonFiniteError, match="concept inputs"):
            tcav(model, "3", inputs, 2, torch.full_like(concept, math.nan), random=random, n_runs=3,
                 progress=False)
        broken = random.clone()
        broken[:, 0, 0, 0] = math.inf
        with pytest.raises(NonFiniteError, match="random inputs"):
            tcav(model, "3", inputs, 2, concept, random=broken, n_runs=3, progress=False)

    def test_activations_and_gradients(self, tiny_cnn, images):
        class Overflow(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return x * 1e38 * 1e38  # inf in float32

        model = tiny_cnn()
        model[4] = Overflow()
        with pytest.raises(NonFiniteError):
            tcav(model, "3", images(10, 1), 0, images(10, 2, patch=True), random=images(40, 3),
                 n_runs=2, progress=False)


class TestStructuredOutputs:
    def test_tuple_output_with_head_equals_the_plain_model(self, setup, with_extras):
        model, inputs, concept, random = setup
        plain = tcav(model, "3", inputs, 2, concept, random=random, n_runs=3, method="mass_mean",
                     progress=False)
        wrapped = with_extras(model, "tuple")
        res = tcav(wrapped, "inner.3", inputs, 2, concept, random=random, n_runs=3, method="mass_mean",
                   head=1, progress=False)
        torch.testing.assert_close(res.derivatives, plain.derivatives, rtol=0, atol=0)
        keyed = tcav(with_extras(model, "dict"), "inner.3", inputs, 2, concept, random=random,
                     n_runs=3, method="mass_mean", head="logits", progress=False)
        torch.testing.assert_close(keyed.derivatives, plain.derivatives, rtol=0, atol=0)

    def test_ambiguous_output_is_refused(self, setup, with_extras):
        # The old code differentiated the first tensor (here: the hidden features) silently.
        model, inputs, concept, random = setup
        for kind in ("tuple", "dict"):
            with pytest.raises(LatentSurgeonError, match="Pass head="):
                tcav(with_extras(model, kind), "inner.3", inputs, 2, concept, random=random, n_runs=3,
                     progress=False)


class _InjectedClassifier(Classifier):
    """A captum ``Classifier`` returning our CAV directions instead of training its own, so the
    two TCAV implementations are compared given the same CAVs."""

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
    # captum is a core dependency: an API change fails here instead of skipping.
    model, inputs, concept, random = setup
    sets = [random[i * 40:(i + 1) * 40] for i in range(5)]
    ours = tcav(model, "3", inputs, 2, concept, random=sets, method="logistic", progress=False)

    def loader(x: torch.Tensor) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(x, batch_size=64)

    c = Concept(0, "patch", loader(concept))
    randoms = [Concept(i + 1, f"random{i}", loader(s)) for i, s in enumerate(sets)]
    directions, experiments = {}, []
    for i in range(1, len(sets)):
        directions[frozenset({0, i + 1})] = (0, i + 1, ours.concept_cavs[i - 1].direction_)
        directions[frozenset({i, i + 1})] = (i, i + 1, ours.random_cavs[i - 1].direction_)
        experiments += [[c, randoms[i]], [randoms[i - 1], randoms[i]]]
    scores = TCAV(model, ["3"], classifier=_InjectedClassifier(directions),
                  save_path=str(tmp_path / "cav")).interpret(inputs, experiments, target=2)
    concept_keys = [f"0-{i + 1}" for i in range(1, len(sets))]
    null_keys = [f"{i}-{i + 1}" for i in range(1, len(sets))]
    theirs = np.array([float(scores[k]["3"]["sign_count"][0]) for k in concept_keys])
    theirs_null = np.array([float(scores[k]["3"]["sign_count"][0]) for k in null_keys])
    # captum multiplies in float32, we in float64: the signs can only differ for a derivative
    # within float32 rounding of 0, and there is none here (checked, so equality is exact).
    d = torch.cat([ours.derivatives, _scores_of(ours.random_cavs, model, inputs)])
    nonzero = d[d != 0].abs()
    assert float(nonzero.min()) > 1e-4 * float(d.abs().max())
    # captum averages in float32 (3/40 = 0.075000003): compare the counts of positive signs
    n = len(inputs)
    positive = (d > 0).sum(1).numpy()
    np.testing.assert_array_equal(np.rint(theirs * n), positive[:len(theirs)])
    np.testing.assert_array_equal(np.rint(theirs_null * n), positive[len(theirs):])
    np.testing.assert_allclose(theirs, ours.sign_count, rtol=1e-7, atol=0)
    # captum's "magnitude" is the mean derivative, reported by us as mean_derivative
    theirs_mag = np.array([float(scores[k]["3"]["magnitude"][0]) for k in concept_keys])
    np.testing.assert_allclose(theirs_mag, ours.mean_derivative, rtol=1e-5, atol=1e-7)


def _scores_of(cavs, model, inputs) -> torch.Tensor:
    return directional_derivatives(model, "3", inputs, 2, cavs)


def test_batched_logistic_cavs_make_the_decisions_scikit_learn_cavs_make(setup):
    """Today's TCAV decisions with CAVs fitted one by one by scikit-learn (standardised
    activations, LogisticRegression(class_weight="balanced"), mapped back): the batched solve
    gives the same directions to solver tolerance and the same sign counts."""
    model, inputs, concept, random = setup
    sets = [random[i * 40:(i + 1) * 40] for i in range(5)]
    ours = tcav(model, "3", inputs, 2, concept, random=sets, method="logistic", progress=False)
    acts = [_acts(model, "3", s).flatten(1).double().numpy() for s in [concept, *sets]]
    reference = []
    for i in range(1, len(sets)):
        for positive in (acts[0], acts[i]):  # concept run i, null run i
            X = np.concatenate([acts[i + 1], positive])
            y = np.r_[np.zeros(len(acts[i + 1])), np.ones(len(positive))]
            mu, sd = X.mean(0), X.std(0) + 1e-8
            fit = LogisticRegression(class_weight="balanced", max_iter=2000).fit((X - mu) / sd, y)
            w = fit.coef_[0] / sd
            reference.append(torch.from_numpy(w / np.linalg.norm(w)))
    cavs = [cav for pair in zip(ours.concept_cavs, ours.random_cavs, strict=True) for cav in pair]
    for cav, ref in zip(cavs, reference, strict=True):
        assert float(cav.direction_.double() @ ref) >= 0.999
    grads, _ = pooled_gradients(model, "3", inputs, 2)
    ref_signs = (torch.stack(reference) @ grads.T > 0).double().mean(1).numpy()
    np.testing.assert_array_equal(ref_signs[0::2], ours.sign_count)
    np.testing.assert_array_equal(ref_signs[1::2], ours.random_sign_count)


@pytest.fixture(scope="module")
def decoy_sets(decoy_model):
    """Class-0 test images, watermarked class-0 training images, and random training images."""
    _, data = decoy_model
    train = data.train
    concept = train.images[(train.labels == 0) & train.artifact]  # shortcut class + mark
    class_inputs = data.test.images[data.test.labels == data.shortcut_class]
    random = train.images[~train.artifact]
    g = torch.Generator().manual_seed(1234)
    random_concept = random[torch.randperm(len(random), generator=g)[:100]]
    return class_inputs, concept, random, random_concept


class TestPlantedWatermark:
    """A DigitCNN trained on decoy digits with a watermark on class 0 uses the watermark."""

    def test_watermark_is_significant_random_concept_is_not(self, decoy_model, decoy_sets):
        model, data = decoy_model
        class_inputs, concept, random, random_concept = decoy_sets
        shortcut = data.shortcut_class
        found = tcav(model, "features", class_inputs, shortcut, concept, random=random, seed=0,
                     progress=False)
        assert found.significant and found.p_value < 1e-3
        assert found.mean >= 0.95 and found.magnitude_mean >= 0.95
        assert float(np.mean(found.cav_accuracy)) > 0.9
        null = tcav(model, "features", class_inputs, shortcut, random_concept, random=random, seed=0,
                    progress=False)
        assert not null.significant and null.p_value > 0.05

    @pytest.mark.slow
    def test_kim_ttest_flags_random_concepts_the_set_test_does_not(self, decoy_model, decoy_sets):
        # Documents why test="set" is the default: the runs of one concept share its examples,
        # so Kim et al.'s t-test over runs flags random concepts far more often than the level.
        model, data = decoy_model
        class_inputs, _, random, _ = decoy_sets
        flagged = {"ttest": 0, "set": 0}
        for k in range(20):
            g = torch.Generator().manual_seed(5000 + k)
            random_concept = random[torch.randperm(len(random), generator=g)[:100]]
            res = tcav(model, "features", class_inputs, data.shortcut_class, random_concept,
                       random=random, method="mass_mean", seed=k, progress=False)
            flagged["ttest"] += res.p_value_ttest < 0.05
            flagged["set"] += res.p_value_set < 0.05
        assert flagged["set"] <= 1  # 0.05: about 1 in 20 is expected by chance
        assert flagged["ttest"] >= 3


def test_earlier_spellings_give_the_same_result_with_a_warning(setup):
    model, inputs, concept, random = setup
    new = tcav(model, "3", inputs, 2, concept, random=random, n_runs=3, method="mass_mean",
               progress=False)
    with pytest.warns(FutureWarning) as record:
        positional = tcav(model, "3", inputs, 2, concept, random, n_runs=3, method="mass_mean",
                          progress=False)
        keyword = tcav(model, "3", inputs=inputs, target=2, concept=concept, random=random,
                       n_runs=3, method="mass_mean", progress=False)
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert "(model, layer, inputs, target, concept, random)" in messages[0]
    assert "inputs= is deprecated; use data=" in messages[1]
    for other in (positional, keyword):
        assert np.array_equal(other.sign_count, new.sign_count) and other.p_value == new.p_value
