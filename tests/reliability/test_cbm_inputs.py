"""The bad-input corpus of ``latentsurgeon.cbm`` and the ROAR experiment's settings: every case
raises our exception with a message naming the argument, what was expected and what was given,
and leaves the models exactly as they were (``_harness.check``), the fitted state (``history_``)
included."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import latentsurgeon.cbm.models as models_module
from latentsurgeon.cbm import (
    BlackBoxModel,
    ConceptBottleneckModel,
    ConceptEmbeddingModel,
    GradientPolicy,
    GroundTruthIntervention,
    InterventionModule,
    UncertaintyPolicy,
    UniformPolicy,
    build_mask,
    intervention,
    intervention_curve,
    task_gradients,
)
from latentsurgeon.cbm.masks import selection_mask
from latentsurgeon.errors import (
    InvalidParameterError,
    LatentSurgeonError,
    NonFiniteError,
    ShapeMismatchError,
)
from latentsurgeon.experiments import roar

from ._harness import Case, assert_same_state, check, model_state

N, D, K = 24, 6, 3
torch.manual_seed(0)
X = torch.randn(N, D)
Y = torch.randint(0, 2, (N,))
C = torch.rand(N, K).round()
FAST = {"hidden": (8,), "head_hidden": 4, "epochs": 2, "progress": False}


def _fitted(cls: type) -> nn.Module:
    if cls is BlackBoxModel:
        return BlackBoxModel(D, 2, **FAST).fit(X, Y)
    return cls(D, K, 2, **FAST).fit(X, Y, C)


CBM = _fitted(ConceptBottleneckModel)
CEM = _fitted(ConceptEmbeddingModel)
BLACK_BOX = _fitted(BlackBoxModel)
CONCEPT_MODELS = {"CBM": CBM, "CEM": CEM}
ALL_MODELS = {**CONCEPT_MODELS, "black box": BLACK_BOX}


def _fit(model: nn.Module, x: Any = X, y: Any = Y, c: Any = C) -> Callable[[], Any]:
    return lambda: model.fit(x, y, c)


def _model_cases() -> list[Case]:
    cases = []
    for label, model in ALL_MODELS.items():
        mm = [model]
        cases += [
            Case(f"{label}: inputs of another width", _fit(model, torch.randn(N, D - 1)),
                 ShapeMismatchError, ["n_features", f"n_features={D}", f"({N}, {D - 1})"], mm),
            Case(f"{label}: images whose values per sample differ from n_features",
                 _fit(model, torch.randn(N, 1, 2, 2)), ShapeMismatchError,
                 ["n_features", str(D), "(24, 1, 2, 2)", "4 values"], mm),
            Case(f"{label}: empty data", _fit(model, X[:0], Y[:0], C[:0]),
                 InvalidParameterError, ["data", "at least one sample", f"(0, {D})"], mm),
            Case(f"{label}: a 0-d input", _fit(model, torch.tensor(1.0)),
                 InvalidParameterError, ["data", "at least one sample", "()"], mm),
            Case(f"{label}: fractional labels", _fit(model, X, Y.float() + 0.5),
                 InvalidParameterError, ["labels", "whole numbers", ".5"], mm),
            Case(f"{label}: labels out of range", _fit(model, X, Y + 5), InvalidParameterError,
                 ["labels", "[0, 1]", "5"], mm),
            Case(f"{label}: fewer labels than inputs", _fit(model, X, Y[:-1]),
                 ShapeMismatchError, [f"{N} inputs", f"{N - 1} labels"], mm),
            Case(f"{label}: NaN inputs", _fit(model, torch.full((N, D), float("nan"))),
                 NonFiniteError, ["inputs"], mm),
            Case(f"{label}: no labels", lambda m=model: m.fit(X), InvalidParameterError,
                 ["labels"], mm),
            Case(f"{label}: inputs that are a string", _fit(model, "digits.npy"),
                 InvalidParameterError, ["inputs", "tensor or a numpy array", "str"], mm),
            Case(f"{label}: labels that are a dict", _fit(model, X, {"y": Y}),
                 InvalidParameterError, ["labels", "tensor or a numpy array", "dict"], mm),
        ]
    for label, model in CONCEPT_MODELS.items():
        mm = [model]
        cases += [
            Case(f"{label}: concepts that are a string", _fit(model, X, Y, "concepts.csv"),
                 InvalidParameterError, ["concepts", "tensor or a numpy array", "str"], mm),
            Case(f"{label}: NaN concepts", _fit(model, X, Y, torch.full((N, K), float("nan"))),
                 NonFiniteError, ["concepts"], mm),
        ]
    for label, model in CONCEPT_MODELS.items():
        mm = [model]
        cases += [
            Case(f"{label}: concepts of another width", _fit(model, X, Y, C[:, :2]),
                 ShapeMismatchError, ["concepts", f"({N}, {K})", f"({N}, 2)"], mm),
            Case(f"{label}: concepts outside [0, 1]", _fit(model, X, Y, C * 3),
                 InvalidParameterError, ["concepts", "[0, 1]", "0..3"], mm),
            Case(f"{label}: no concepts", lambda m=model: m.fit(X, Y), InvalidParameterError,
                 ["concept labels"], mm),
            Case(f"{label}: a sequence of four", lambda m=model: m.fit((X, Y, C, C)),
                 InvalidParameterError, ["(inputs, labels, concepts)", "4"], mm),
        ]
    return cases


class _ConvNet(nn.Module):
    """A conv layer (``(N, 16, 16, 16)`` maps) and a classifier: no concept layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16 * 16, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))


torch.manual_seed(0)
CONV = _ConvNet()
IMAGES = torch.rand(2, 1, 16, 16)
LOGITS = torch.randn(4, K) * 3  # values outside [0, 1]


def _intervene_conv() -> Any:
    truth = GroundTruthIntervention(torch.zeros(2, 16, 16, 16), space="output")
    with intervention(CONV, "conv", truth, UniformPolicy(), k=1):
        return CONV(IMAGES)


def _module_on_conv() -> Any:
    truth = GroundTruthIntervention(torch.zeros(2, 16, 16, 16), space="output")
    return InterventionModule(CONV.conv, truth, UniformPolicy(), k=1)(IMAGES)


def _cbm_with_policy(policy: Any, build_context: Any = None) -> Callable[[], Any]:
    def call() -> Any:
        truth = GroundTruthIntervention(C[:4], space="probs")
        with intervention(CBM, "concepts", truth, policy, build_context=build_context, k=1):
            return CBM(X[:4])
    return call


def _policy_cases() -> list[Case]:
    grads = torch.randn(4, K)
    return [
        Case("GradientPolicy with a misspelt context key",
             lambda: GradientPolicy()(LOGITS, grads=grads), InvalidParameterError,
             ["GradientPolicy", "concept_grads", "['grads']"]),
        Case("GradientPolicy with another policy's context",
             lambda: GradientPolicy()(LOGITS, ground_truth=grads), InvalidParameterError,
             ["concept_grads", "ground_truth"]),
        Case("GradientPolicy with concept_grads that is not a tensor",
             lambda: GradientPolicy()(LOGITS, concept_grads=grads.tolist()),
             InvalidParameterError, ["concept_grads", "tensor", "list"]),
        Case("GradientPolicy with concept_grads of another shape",
             lambda: GradientPolicy()(LOGITS, concept_grads=grads[:, :2]), ShapeMismatchError,
             ["concept_grads", f"(4, {K})", "(4, 2)"]),
        Case("GradientPolicy in an intervention whose build_context misspells the key",
             _cbm_with_policy(GradientPolicy(), lambda module, pred, *a: {"grads": pred}),
             InvalidParameterError, ["concept_grads", "['grads']"], [CBM]),
        Case("UncertaintyPolicy in probability space given logits",
             lambda: UncertaintyPolicy("probs")(LOGITS), InvalidParameterError,
             ["layer_output='probs'", "[0, 1]", f"{float(LOGITS.min()):g}",
              "layer_output='logits'"]),
        Case("UncertaintyPolicy in probability space on a CBM's logit layer",
             _cbm_with_policy(UncertaintyPolicy("probs")), InvalidParameterError,
             ["layer_output='probs'", "[0, 1]"], [CBM]),
        Case("an intervention on a conv layer's feature maps", _intervene_conv,
             ShapeMismatchError, ["(N, K)", "'conv'", "(2, 16, 16, 16)"], [CONV]),
        Case("an InterventionModule around a conv layer", _module_on_conv,
             ShapeMismatchError, ["(N, K)", "(2, 16, 16, 16)"], [CONV]),
        Case("an intervention on a layer with one value per sample",
             lambda: InterventionModule(nn.Identity(), GroundTruthIntervention(
                 torch.zeros(4), space="output"), UniformPolicy()).intervene(torch.zeros(4)),
             ShapeMismatchError, ["(N, K)", "(4,)"]),
        Case("task gradients of a class the head does not have",
             lambda: task_gradients(CBM.predict_task, target=5)(None, torch.zeros(4, K)),
             InvalidParameterError, ["target", "[0, 1]", "2 logits", "got 5"]),
        Case("ground truth that is a string",
             lambda: GroundTruthIntervention("truth.csv")(torch.zeros(4, K)),
             InvalidParameterError, ["ground_truth", "tensor or a numpy array", "str"]),
        Case("ground truth of another shape than the batch",
             lambda: GroundTruthIntervention(torch.zeros(3, K))(torch.zeros(4, K)),
             ShapeMismatchError, ["ground truth", f"(4, {K})", f"(3, {K})"]),
        Case("concept indices given as floats", lambda: selection_mask([0.0, 1.7], K),
             InvalidParameterError, ["concepts", "integer indices", "1.7"]),
        Case("build_mask with float concept indices",
             lambda: build_mask(torch.rand(2, K), [1.5], k=1), InvalidParameterError,
             ["concepts", "integer", "1.5"]),
    ]


def _curve_cases() -> list[Case]:
    mm = [CBM]
    return [
        Case("intervention curve on empty data",
             lambda: intervention_curve(CBM, (X[:0], Y[:0], C[:0]), progress=False),
             InvalidParameterError, ["data", "at least one sample", f"(0, {D})"], mm),
        Case("intervention curve on one empty data set of two",
             lambda: intervention_curve([CBM, CBM], [(X, Y, C), (X[:0], Y[:0], C[:0])],
                                        progress=False),
             InvalidParameterError, ["data[1]", "at least one sample"], mm),
        Case("intervention curve on 0-d inputs",
             lambda: intervention_curve(CBM, (torch.tensor(1.0), Y, C), progress=False),
             InvalidParameterError, ["data", "at least one sample", "()"], mm),
        Case("intervention curve with zero concepts",
             lambda: intervention_curve(CBM, (X, Y, C[:, :0]), progress=False),
             ShapeMismatchError, ["concepts", "K >= 1", f"({N}, 0)"], mm),
        Case("intervention curve with concepts of another width than the layer",
             lambda: intervention_curve(CBM, (X, Y, C[:, :2]), progress=False),
             ShapeMismatchError, ["data", "'concepts'", "(1, 3)", f"({N}, 2)"], mm),
        Case("intervention curve with a GradientPolicy and a misspelt build_context",
             lambda: intervention_curve(CBM, (X, Y, C), policies={"g": GradientPolicy()},
                                        build_context=lambda m, p, *a: {"grads": p},
                                        progress=False),
             InvalidParameterError, ["concept_grads", "['grads']"], mm),
        Case("intervention curve with no policies",
             lambda: intervention_curve(CBM, (X, Y, C), policies=[], progress=False),
             InvalidParameterError, ["policies", "non-empty", "random", "got []"], mm),
        Case("intervention curve with an empty policy dict",
             lambda: intervention_curve(CBM, (X, Y, C), policies={}, progress=False),
             InvalidParameterError, ["policies", "non-empty", "got {}"], mm),
        Case("intervention curve with one policy name as a string",
             lambda: intervention_curve(CBM, (X, Y, C), policies="random", progress=False),
             InvalidParameterError, ["policies", "list", "got 'random'"], mm),
        Case("intervention curve with an unknown policy name",
             lambda: intervention_curve(CBM, (X, Y, C), policies=["greedy"], progress=False),
             InvalidParameterError, ["policy", "'greedy'", "uncertainty"], mm),
        Case("intervention curve with more data sets than models",
             lambda: intervention_curve(CBM, [(X, Y, C), (X, Y, C)], progress=False),
             InvalidParameterError, ["2 data sets", "1 models"], mm),
        Case("intervention curve with no models",
             lambda: intervention_curve([], (X, Y, C), progress=False),
             InvalidParameterError, ["at least one model"]),
        Case("intervention curve of a meta-device model",
             lambda: intervention_curve(ConceptBottleneckModel(D, K, 2, **FAST).to("meta"),
                                        (X, Y, C), progress=False),
             InvalidParameterError, ["model", "'meta' device", "to_empty"]),
        Case("intervention curve in probability space on a logit layer",
             lambda: intervention_curve(CBM, (X, Y, C), policies=["uncertainty"],
                                        layer_output="probs", progress=False),
             InvalidParameterError, ["layer_output='probs'", "[0, 1]"], mm),
    ]


def _roar_cases() -> list[Case]:
    expected = ["Settings.fractions", "non-empty", "(0, 1]"]
    return [
        Case("ROAR with no fractions", lambda: roar.Settings(fractions=()),
             InvalidParameterError, [*expected, "got ()"]),
        Case("ROAR run with no fractions", lambda: roar.run(
            [0], settings=roar.Settings(fractions=[]), progress=False),
             InvalidParameterError, [*expected, "got []"]),
        Case("ROAR with a fraction of 0", lambda: roar.Settings(fractions=(0.0, 0.5)),
             InvalidParameterError, [*expected, "0.0 is not"]),
        Case("ROAR with a fraction above 1", lambda: roar.Settings(fractions=(0.5, 1.5)),
             InvalidParameterError, [*expected, "1.5 is not"]),
        Case("ROAR with a percentage for a fraction", lambda: roar.Settings(fractions=(10, 20)),
             InvalidParameterError, [*expected, "10 is not"]),
        Case("ROAR with a NaN fraction", lambda: roar.Settings(fractions=(float("nan"),)),
             InvalidParameterError, [*expected, "nan is not"]),
        Case("ROAR with a fraction that removes no pixel",
             lambda: roar.Settings(fractions=(0.001,)), InvalidParameterError,
             [*expected, "at least one of the 256 pixels", "0.001 is not"]),
        Case("ROAR with a repeated fraction", lambda: roar.Settings(fractions=(0.2, 0.2)),
             InvalidParameterError, [*expected, "repeats", "[51, 51]"]),
        Case("ROAR with fractions that remove the same pixels",
             lambda: roar.Settings(fractions=(0.1, 0.1001)), InvalidParameterError,
             ["repeats", "[26, 26]"]),
        Case("ROAR with one number for fractions", lambda: roar.Settings(fractions=0.5),
             InvalidParameterError, [*expected, "got 0.5"]),
        Case("ROAR with a string for fractions", lambda: roar.Settings(fractions="0.5"),
             InvalidParameterError, [*expected, "'0.5'"]),
        Case("ROAR with an unknown method", lambda: roar.Settings(method="deeplift"),
             InvalidParameterError, ["Settings.method", "integrated_gradients", "deeplift"]),
    ]


def _strategy_cases() -> list[Case]:
    from latentsurgeon.cbm import (
        DistributionIntervention,
        DoIntervention,
        RandomPolicy,
        count_from_fraction,
        intervention_count,
        to_output_space,
    )

    return [
        Case("a do-intervention to NaN", lambda: DoIntervention(float("nan")), NonFiniteError,
             ["DoIntervention: constants", "nan"]),
        Case("a do-intervention in an unknown space", lambda: DoIntervention(1.0, space="prob"),
             InvalidParameterError, ["space must be one of", "'probs'", "'prob'"]),
        Case("a distribution intervention of plain numbers", lambda: DistributionIntervention(
            [0.2, 0.8]), InvalidParameterError, ["distribution must be", "list"]),
        Case("a random policy with a negative seed", lambda: RandomPolicy(seed=-1)(
            torch.zeros(2, 3)), InvalidParameterError, ["seed must be", "-1"]),
        Case("a count from a fraction above 1", lambda: count_from_fraction(3, 1.5),
             InvalidParameterError, ["fraction must be a number in [0, 1]", "1.5"]),
        Case("a count of a negative number of concepts", lambda: count_from_fraction(-1, 0.5),
             InvalidParameterError, ["n_selected", "-1"]),
        Case("an intervention count at a negative quantile", lambda: intervention_count(3, -0.2),
             InvalidParameterError, ["quantile must be a number in [0, 1]", "-0.2"]),
        Case("output space of an unknown space", lambda: to_output_space(torch.zeros(2), "prob"),
             InvalidParameterError, ["to_output_space(): space must be one of", "'prob'"]),
        Case("output space of probabilities above 1", lambda: to_output_space(
            torch.tensor([0.5, 1.5]), "probs"), InvalidParameterError, ["[0, 1]", "1.5"]),
    ]


def cases() -> list[Case]:
    return (_model_cases() + _policy_cases() + _curve_cases() + _roar_cases()
            + _strategy_cases())


def _case_names() -> list[str]:
    return [c.name for c in cases()]


def _learned(model: nn.Module) -> dict[str, Any]:
    return dict(model.learned_state()) if hasattr(model, "learned_state") else {}


@pytest.mark.parametrize("name", _case_names())
def test_bad_input_is_refused_clearly_and_changes_nothing(name):
    case = next(c for c in cases() if c.name == name)
    learned = [_learned(m) for m in case.models]
    check(case)
    for model, before in zip(case.models, learned, strict=True):
        assert _learned(model) == before, f"{case.name}: the fitted state changed"


def test_the_corpus_has_no_duplicate_names():
    assert len(set(_case_names())) == len(_case_names())


# -- fit is all or nothing ---------------------------------------------------------------------
def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(model: nn.Module, weights: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("label", list(ALL_MODELS))
def test_a_fit_that_fails_while_training_keeps_the_trained_model(label, monkeypatch):
    """fit resets the weights before it trains: a failure in training (here after a step that
    changed the weights) must put back the trained weights, not the initial ones."""
    model = _fitted(type(ALL_MODELS[label]))
    weights, history = _weights(model), model.history_

    def train_then_fail(trained: nn.Module, *args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            for param in trained.parameters():
                param.add_(1.0)
        raise RuntimeError("disk full")

    monkeypatch.setattr(models_module, "train", train_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        model.fit(X, Y, C)
    assert _same(model, weights)
    assert model.history_ is history


def test_a_failed_fit_after_an_architecture_change_keeps_the_old_layers():
    model = _fitted(ConceptBottleneckModel)
    weights, layers = _weights(model), dict(model.named_modules())
    model.set_params(hidden=(5, 5), lr=1e30)  # rebuilt at fit, then the loss becomes NaN
    with pytest.raises(NonFiniteError):
        model.fit(X, Y, C)
    assert dict(model.named_modules()) == layers and _same(model, weights)
    model.set_params(lr=5e-3).fit(X, Y, C)  # the next fit still builds the new layers
    assert model.encoder[1].out_features == 5


def test_a_fit_refused_after_set_params_keeps_the_layers_and_the_new_parameter():
    model = _fitted(ConceptBottleneckModel)
    weights, layers = _weights(model), dict(model.named_modules())
    model.set_params(n_features=D + 1)
    with pytest.raises(ShapeMismatchError, match=f"n_features={D + 1}"):
        model.fit(X, Y, C)
    assert dict(model.named_modules()) == layers and _same(model, weights)
    assert model.n_features == D + 1  # set_params is not part of the failed call
    model.fit(torch.randn(N, D + 1), Y, C)
    assert model.encoder[1].in_features == D + 1


def test_a_failed_fit_leaves_a_generator_seed_where_it_was():
    generator = torch.Generator().manual_seed(3)
    model = ConceptBottleneckModel(D, K, 2, **{**FAST, "lr": 1e30}, seed=generator)
    state = generator.get_state()
    with pytest.raises(NonFiniteError):
        model.fit(X, Y, C)
    assert torch.equal(generator.get_state(), state)
    assert not hasattr(model, "history_")


# -- one dtype rule ----------------------------------------------------------------------------
@pytest.mark.parametrize("label", list(ALL_MODELS))
def test_float64_inputs_train_as_the_float32_ones(label):
    """Floating inputs are cast to the model's dtype (ModelAccess's rule), so float64 data give
    the model float32 data give; before, the fit reset the weights and failed inside torch."""
    cls = type(ALL_MODELS[label])
    reference = _fitted(cls)
    model = _fitted(cls)
    concepts = None if cls is BlackBoxModel else C.double()
    model.fit(X.double(), Y, concepts)
    assert _same(model, _weights(reference))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("cls", [ConceptBottleneckModel, ConceptEmbeddingModel, BlackBoxModel])
def test_a_model_cast_to_another_dtype_trains_on_float32_data(cls, dtype):
    args = (D, 2) if cls is BlackBoxModel else (D, K, 2)
    model = cls(*args, **FAST).to(dtype)
    model.fit(X, Y, None if cls is BlackBoxModel else C)
    assert all(p.dtype == dtype for p in model.parameters())
    assert all(torch.isfinite(p.float()).all() for p in model.parameters())


def test_a_meta_model_is_refused_before_anything_runs():
    model = ConceptBottleneckModel(D, K, 2, **FAST).to("meta")
    with pytest.raises(InvalidParameterError, match="meta"):
        model.fit(X, Y, C)
    assert all(p.device.type == "meta" for p in model.parameters())


# -- property: fit on random dtype, shape and emptiness --------------------------------------
@st.composite
def _fit_calls(draw):
    cls = draw(st.sampled_from([ConceptBottleneckModel, ConceptEmbeddingModel, BlackBoxModel]))
    model_dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    n = draw(st.integers(0, 6))
    width = draw(st.sampled_from([D, D - 1, D + 2]))
    input_dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16,
                                        torch.int64]))
    n_labels = draw(st.sampled_from([n, max(n - 1, 0)]))
    k = draw(st.sampled_from([K, K - 1]))
    value = draw(st.sampled_from([0.5, float("nan"), 3.0]))
    seed = draw(st.integers(0, 100))
    return cls, model_dtype, n, width, input_dtype, n_labels, k, value, seed


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_fit_calls())
def test_fit_on_random_input_succeeds_or_fails_cleanly_leaving_the_model(call):
    cls, model_dtype, n, width, input_dtype, n_labels, k, value, seed = call
    generator = torch.Generator().manual_seed(seed)
    args = (D, 2) if cls is BlackBoxModel else (D, K, 2)
    model = cls(*args, **FAST).to(model_dtype).fit(X, Y, None if cls is BlackBoxModel else C)
    x = (torch.rand(n, width, generator=generator) * 4).to(input_dtype)
    y = torch.randint(0, 2, (n_labels,), generator=generator)
    c = torch.full((n, k), value) if n else torch.zeros(0, k)
    before, history = model_state(model), model.history_
    try:
        model.fit(x, y, c)
    except LatentSurgeonError:
        assert_same_state(model, before)
        assert model.history_ is history
        return
    assert all(p.dtype == model_dtype for p in model.parameters())
    assert all(bool(torch.isfinite(p.float()).all()) for p in model.parameters())
