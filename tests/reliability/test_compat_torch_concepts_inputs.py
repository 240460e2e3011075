"""The bad-input corpus of ``latentsurgeon.compat.torch_concepts``: every public name is called
with a bad input at least once; each case raises our exception, with a message naming the
argument, what was expected and what was given, and leaves the layer as it was (hooks, modes,
flags, weights)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import latentsurgeon.compat.torch_concepts as tc
from latentsurgeon.compat.torch_concepts import (
    DistributionIntervention,
    DoIntervention,
    GradientPolicy,
    GroundTruthIntervention,
    InterventionModule,
    RandomPolicy,
    UncertaintyInterventionPolicy,
    UniformPolicy,
    intervene,
    intervention,
)
from latentsurgeon.errors import InvalidParameterError, NonFiniteError, ShapeMismatchError

from ._harness import Case, check

torch.manual_seed(0)
LAYER = nn.Linear(4, 3)
X = torch.randn(2, 4)
BERNOULLI = torch.distributions.Bernoulli(torch.tensor(0.5))


def _call(module: nn.Module, *args, **kwargs):
    return lambda: module(*args, **kwargs)


def _enter(*args, **kwargs):
    def run():
        with intervention(*args, **kwargs):
            LAYER(X)
    return run


def cases() -> list[Case]:
    layer = [LAYER]
    return [
        # strategies
        Case("a do-intervention to a string", lambda: DoIntervention("1"),
             InvalidParameterError, ["constants must be a number or a tensor", "str"]),
        Case("a do-intervention to NaN", lambda: DoIntervention(float("nan")), NonFiniteError,
             ["constants", "nan"]),
        Case("do-constants that do not broadcast", lambda: DoIntervention(torch.ones(2))(
            torch.zeros(4, 3)), ShapeMismatchError, ["(2,)", "(4, 3)"]),
        Case("a distribution intervention of numbers", lambda: DistributionIntervention(
            [0.2, 0.8]), InvalidParameterError, ["distribution must be", "list", "float"]),
        Case("an empty list of distributions", lambda: DistributionIntervention([]),
             InvalidParameterError, ["one distribution per concept", "empty"]),
        Case("a list item that is not scalar", lambda: DistributionIntervention(
            [torch.distributions.Normal(torch.zeros(2), 1.0)]), ShapeMismatchError,
             ["must be scalar", "item 0", "(2,)"]),
        Case("too few distributions for the layer", lambda: DistributionIntervention(
            [BERNOULLI] * 2)(torch.zeros(4, 3)), ShapeMismatchError,
             ["2 per-concept distributions", "(4, 3)", "3 concepts"]),
        Case("a distribution intervention with a negative seed", lambda: DistributionIntervention(
            BERNOULLI, seed=-1), InvalidParameterError, ["seed", "-1"]),
        Case("ground truth never set", lambda: GroundTruthIntervention(None)(torch.zeros(2, 3)),
             InvalidParameterError, ["no ground truth", "ground_truth"]),
        Case("ground truth of another shape", lambda: GroundTruthIntervention(torch.zeros(3, 3))(
            torch.zeros(2, 3)), ShapeMismatchError, ["(2, 3)", "(3, 3)"]),
        # policies
        Case("a random policy of negative scale", lambda: RandomPolicy(scale=-1.0),
             InvalidParameterError, ["scale must be", "[0, inf]", "-1.0"]),
        Case("a random policy of a string scale", lambda: RandomPolicy(scale="1"),
             InvalidParameterError, ["scale must be", "'1'"]),
        Case("an uncertainty point that is a string", lambda: UncertaintyInterventionPolicy(
            "0.5"), InvalidParameterError, ["max_uncertainty_point must be", "'0.5'"]),
        Case("gradients of another shape", lambda: GradientPolicy()(
            torch.zeros(2, 3), concept_grads=torch.zeros(2, 4)), ShapeMismatchError,
             ["concept_grads", "(2, 3)", "(2, 4)"]),
        Case("NaN gradients", lambda: GradientPolicy()(
            torch.zeros(2, 3), concept_grads=torch.full((2, 3), float("nan"))), NonFiniteError,
             ["concept_grads"]),
        Case("a mask at quantile 2", lambda: UniformPolicy().build_mask(torch.zeros(2, 3),
                                                                        quantile=2.0),
             InvalidParameterError, ["build_mask", "quantile must be", "[0, 1]", "2.0"]),
        Case("a mask of a scalar", lambda: UniformPolicy().build_mask(torch.tensor(1.0)),
             ShapeMismatchError, ["(..., F)", "()"]),
        Case("a mask of candidates out of range", lambda: RandomPolicy().build_mask(
            torch.zeros(2, 3), sel_idx=[5]), InvalidParameterError, ["concepts must index", "[5]"]),
        Case("per-slice candidates that do not broadcast", lambda: UniformPolicy().build_mask(
            torch.zeros(2, 5, 3), sel_idx=torch.zeros(3, 1, 1, dtype=torch.long)),
             ShapeMismatchError, ["out_concepts_to_intervene_on", "(3, 1)", "(2, 5)"]),
        Case("a mask of NaN scores", lambda: UncertaintyInterventionPolicy().build_mask(
            torch.full((2, 3), float("nan"))), NonFiniteError, ["scores"]),
        # the module
        Case("a strategy that is not callable", lambda: InterventionModule(
            LAYER, object(), UniformPolicy()), InvalidParameterError,
             ["strategy must be callable", "object"], layer),
        Case("a build_context that is not callable", lambda: InterventionModule(
            LAYER, DoIntervention(0.0), UniformPolicy(), build_context={"a": 1}),
             InvalidParameterError, ["build_context must be a callable", "extra_tensors", "dict"],
             layer),
        Case("a quantile above 1", lambda: InterventionModule(
            LAYER, DoIntervention(0.0), UniformPolicy(), quantile=1.5), InvalidParameterError,
             ["quantile must be", "[0, 1]", "1.5"], layer),
        Case("float positions", lambda: InterventionModule(
            LAYER, DoIntervention(0.0), UniformPolicy(), [1.5]), InvalidParameterError,
             ["integer positions", "1.5"], layer),
        Case("names without annotations", lambda: InterventionModule(
            LAYER, DoIntervention(0.0), UniformPolicy(), ["a"]), InvalidParameterError,
             ["names", "['a']", "out_concepts"], layer),
        Case("a selection that is a string", lambda: InterventionModule(
            LAYER, DoIntervention(0.0), UniformPolicy(), "a"), InvalidParameterError,
             ["out_concepts_to_intervene_on must be", "str"], layer),
        Case("a bool tensor selection", lambda: InterventionModule(
            LAYER, DoIntervention(0.0), UniformPolicy(), torch.ones(3, dtype=torch.bool)),
             InvalidParameterError, ["integer positions", "torch.bool"], layer),
        Case("positions out of range", _call(InterventionModule(
            LAYER, DoIntervention(0.0), UniformPolicy(), [3]), X), InvalidParameterError,
             ["concepts must index", "3 concepts", "[3]"], layer),
        Case("extra_tensors that are not a dict", _call(InterventionModule(
            LAYER, DoIntervention(0.0), UniformPolicy()), X, extra_tensors=[1]),
             InvalidParameterError, ["extra_tensors must be a dict", "list"], layer),
        Case("a build_context that misses concept_grads' shape", _call(InterventionModule(
            LAYER, DoIntervention(0.0), GradientPolicy(),
            build_context=lambda p, m, i, e, x: {"concept_grads": torch.zeros(1)}), X),
             ShapeMismatchError, ["concept_grads", "(2, 3)", "(1,)"], layer),
        Case("a strategy of the wrong shape", _call(InterventionModule(
            LAYER, GroundTruthIntervention(torch.zeros(5, 3)), UniformPolicy()), X),
             ShapeMismatchError, ["ground truth", "(2, 3)", "(5, 3)"], layer),
        Case("an extra module that is not a module", lambda: intervene(
            LAYER, DoIntervention(0.0), UniformPolicy(), extra_modules={"head": len}),
             InvalidParameterError, ["extra_modules['head']", "nn.Module"], layer),
        Case("intervention on a function", _enter(len, DoIntervention(0.0), UniformPolicy()),
             InvalidParameterError, ["target must be", "builtin_function_or_method"], layer),
        Case("intervention on a layer without a policy", _enter(LAYER, DoIntervention(0.0)),
             InvalidParameterError, ["intervention_policy", "None"], layer),
        Case("intervention on a module with arguments", _enter(InterventionModule(
            LAYER, DoIntervention(0.0), UniformPolicy()), quantile=0.5), InvalidParameterError,
             ["no other argument"], layer),
        Case("intervention whose layer refuses the input", _enter(
            LAYER, DoIntervention(torch.ones(2)), UniformPolicy()), ShapeMismatchError,
             ["(2,)", "(2, 3)"], layer),
    ]


def _names() -> list[str]:
    return [c.name for c in cases()]


@pytest.mark.parametrize("name", _names())
def test_bad_input_is_refused_clearly_and_changes_nothing(name):
    check(next(c for c in cases() if c.name == name))


def test_every_public_name_has_a_case():
    import inspect
    source = inspect.getsource(cases)
    missing = [n for n in tc.__all__ if n not in source]
    assert not missing, missing
    assert len(set(_names())) == len(_names())
