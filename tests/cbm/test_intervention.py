"""InterventionModule (pytorch_concepts' signature and semantics) and the intervention context
manager on an existing network's layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentsurgeon.cbm import (
    DoIntervention,
    GradientPolicy,
    GroundTruthIntervention,
    InterventionModule,
    InterventionPolicy,
    InterventionStrategy,
    RandomPolicy,
    UncertaintyPolicy,
    UniformPolicy,
    build_mask,
    intervention,
    task_gradients,
)
from latentsurgeon.errors import InvalidParameterError, LayerNotFoundError, NonFiniteError
from latentsurgeon.hooks import hook_count


class UserCBM(nn.Module):
    """A user's own network: a concept layer that outputs logits, a head on probabilities."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(4, 16), nn.ReLU())
        self.concept_layer = nn.Linear(16, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(torch.sigmoid(self.concept_layer(self.backbone(x))))


X = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
TRUTH = (torch.rand(8, 3, generator=torch.Generator().manual_seed(2)) > 0.5).float()


def test_output_is_pred_times_mask_plus_new_times_one_minus_mask():
    layer = nn.Linear(4, 3)
    wrapped = InterventionModule(layer, DoIntervention(torch.tensor([7.0, 8.0, 9.0])),
                                 RandomPolicy(seed=0), quantile=0.5)
    out = wrapped(X)
    pred = layer(X)
    mask = build_mask(RandomPolicy(seed=0)(pred), quantile=0.5)
    expected = pred * mask + torch.tensor([7.0, 8.0, 9.0]) * (1 - mask)
    assert torch.allclose(out, expected)
    assert torch.equal(wrapped.last_mask, mask)
    # quantile=0.5 of 3 concepts replaces 2 per sample
    assert bool(((wrapped.last_mask == 0).sum(1) == 2).all())
    # gradients flow into the kept predictions only
    out.sum().backward()
    assert layer.weight.grad is not None


def test_seed_example_build_context_and_extra_modules():
    """The seed's documented usage: build_context reaches module.task_head."""
    model = UserCBM()
    calls = []

    def build_context(module, predictions, *args, **kwargs):
        calls.append((module, args))
        with torch.enable_grad():
            pred = predictions.detach().requires_grad_(True)
            task_out = module.task_head(pred)
            grads = torch.autograd.grad(task_out.sum(), pred)[0]
        return {"concept_grads": grads.detach()}

    wrapped = InterventionModule(model.concept_layer, DoIntervention(0.0), GradientPolicy(),
                                 build_context=build_context,
                                 extra_modules={"task_head": model.head}, quantile=0.0)
    hidden = model.backbone(X)
    wrapped(hidden)
    module, args = calls[0]
    assert module is wrapped and torch.equal(args[0], hidden)
    assert dict(wrapped.named_children())["task_head"] is model.head
    assert "task_head.weight" in wrapped.state_dict()
    # d(sum of both logits) / d concept is the column sum of the head's weight: the largest
    # magnitude is replaced first (quantile=0 replaces exactly one)
    influence = model.head.weight.sum(0).abs()
    assert bool((wrapped.last_mask[:, int(influence.argmax())] == 0).all())
    assert int((wrapped.last_mask == 0).sum()) == len(X)
    with pytest.raises(InvalidParameterError, match="taken"):
        InterventionModule(model.concept_layer, DoIntervention(0.0), UniformPolicy(),
                           extra_modules={"module": model.head})


def test_wrapper_inside_a_model_replaces_the_layer():
    model = UserCBM()
    before = model(X)
    model.concept_layer = InterventionModule(model.concept_layer,
                                             GroundTruthIntervention(TRUTH, space="probs"),
                                             UniformPolicy())
    after = model(X)
    expected = model.head(TRUTH.clamp(1e-6, 1 - 1e-6))
    assert torch.allclose(after, expected, atol=1e-5) and not torch.allclose(after, before)


def test_space_probs_versus_values_taken_as_given_on_a_logit_layer():
    model = UserCBM()
    truth_head = model.head(TRUTH)
    with intervention(model, "concept_layer", GroundTruthIntervention(TRUTH, space="probs"),
                      UniformPolicy()):
        right = model(X)
    with intervention(model, "concept_layer", GroundTruthIntervention(TRUTH), UniformPolicy()):
        as_given = model(X)
    assert torch.allclose(right, truth_head, atol=1e-5)
    # taken as given, a 0/1 label on a logit layer means p = 0.5 / 0.73: not the truth
    assert torch.allclose(as_given, model.head(torch.sigmoid(TRUTH)), atol=1e-6)
    assert not torch.allclose(as_given, truth_head, atol=1e-2)


def test_context_manager_restores_the_model_also_after_an_exception():
    model = UserCBM()
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    clean = model(X).detach()
    with intervention(model, "concept_layer", DoIntervention(5.0), UniformPolicy()) as same:
        assert same is model
        assert hook_count(model) == 1
        assert not torch.allclose(model(X), clean)
    assert hook_count(model) == 0 and torch.allclose(model(X), clean)
    with pytest.raises(RuntimeError, match="boom"), \
            intervention(model, "concept_layer", DoIntervention(5.0), UniformPolicy()):
        raise RuntimeError("boom")
    assert hook_count(model) == 0 and model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    with pytest.raises(LayerNotFoundError, match="concept_layer"):
        with intervention(model, "concept_layr", DoIntervention(5.0), UniformPolicy()):
            pass
    assert hook_count(model) == 0


def test_context_manager_with_each_policy_on_a_user_model():
    model = UserCBM()
    strategy = GroundTruthIntervention(TRUTH, space="probs")
    head_of = task_gradients(lambda logits: model.head(torch.sigmoid(logits)))
    for policy, context in ((UniformPolicy(), None), (RandomPolicy(seed=0), None),
                            (UncertaintyPolicy(), None), (GradientPolicy(), head_of)):
        with intervention(model, "concept_layer", strategy, policy, build_context=context, k=1):
            out = model(X)
        assert out.shape == (8, 2)
    # the uncertainty policy replaces, in every sample, the concept closest to p = 0.5
    with torch.no_grad():
        logits = model.concept_layer(model.backbone(X))
        expected = logits.clone()
        expected[torch.arange(len(X)), logits.abs().argmin(1)] = 100.0
        with intervention(model, "concept_layer", DoIntervention(100.0), UncertaintyPolicy(),
                          k=1):
            assert torch.allclose(model(X), model.head(torch.sigmoid(expected)))


def test_selected_concepts_only_and_tuple_outputs():
    class TupleLayer(nn.Module):
        def forward(self, x):
            return x[:, :3], "extra"

    wrapped = InterventionModule(TupleLayer(), DoIntervention(-1.0), UniformPolicy(),
                                 concepts=[0, 2])
    out, extra = wrapped(torch.zeros(2, 5))
    assert extra == "extra" and out.tolist() == [[-1.0, 0.0, -1.0]] * 2


def test_non_finite_predictions_are_an_error():
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.bias[0] = float("nan")
    for policy in (UncertaintyPolicy(), UniformPolicy()):
        with pytest.raises(NonFiniteError, match="concept layer"):
            InterventionModule(layer, DoIntervention(0.0), policy)(X)


def test_bad_parameters():
    layer = nn.Linear(4, 3)
    with pytest.raises(InvalidParameterError, match="quantile"):
        InterventionModule(layer, DoIntervention(0.0), UniformPolicy(), quantile=2)
    with pytest.raises(InvalidParameterError, match="not both"):
        InterventionModule(layer, DoIntervention(0.0), UniformPolicy(), k=1, fraction=0.5)
    with pytest.raises(InvalidParameterError, match="callable"):
        InterventionModule(layer, "ground truth", UniformPolicy())


def test_user_policies_and_strategies_subclass_the_bases():
    class LargestFirst(InterventionPolicy):
        def scores(self, predictions, **context):
            return -predictions

    class Halve(InterventionStrategy):
        def values(self, predictions, **context):
            return predictions / 2

    layer = nn.Linear(4, 3)
    out = InterventionModule(layer, Halve(), LargestFirst(), k=1)(X)
    pred = layer(X)
    # exactly the largest prediction of each sample is halved, the others are kept
    largest = nn.functional.one_hot(pred.argmax(1), 3).bool()
    assert torch.allclose(out[largest], pred[largest] / 2)
    assert torch.equal(out[~largest], pred[~largest])

    class NoScores(InterventionPolicy):
        pass

    class NoValues(InterventionStrategy):
        pass

    with pytest.raises(TypeError, match="scores"):
        NoScores()
    with pytest.raises(TypeError, match="values"):
        NoValues()
