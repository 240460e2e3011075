"""Policies score concepts, lowest first: uniform, random (seeded, per sample), uncertainty,
gradient (the largest |d task / d concept| first; pytorch_concepts' master had the sign wrong)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentsurgeon.cbm import (
    GradientPolicy,
    RandomPolicy,
    UncertaintyPolicy,
    UniformPolicy,
    build_mask,
    task_gradients,
)
from latentsurgeon.errors import InvalidParameterError, NonFiniteError, ShapeMismatchError


def test_uniform_scores_are_zero():
    assert torch.equal(UniformPolicy()(torch.randn(4, 3)), torch.zeros(4, 3))


def test_random_policy_is_seeded_per_sample_and_restartable():
    pred = torch.zeros(500, 6)
    policy = RandomPolicy(seed=1)
    first, second = policy(pred), policy(pred)
    assert not torch.equal(first, second)
    assert torch.equal(RandomPolicy(seed=1)(pred), first)
    policy.reset()
    assert torch.equal(policy(pred), first)
    # every sample gets its own order: the concept replaced first varies across samples
    chosen = (build_mask(first, k=1) == 0).float().argmax(1)
    counts = torch.bincount(chosen, minlength=6).float() / 500
    assert bool((counts > 0.1).all()) and bool((counts < 0.24).all())
    state = torch.get_rng_state()
    RandomPolicy(seed=2)(pred)
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(InvalidParameterError, match="seed"):
        RandomPolicy(seed=1.5)


def test_uncertainty_replaces_the_probability_closest_to_one_half_first():
    logits = torch.tensor([[3.0, -0.2, -4.0, 1.0], [0.1, -5.0, 2.0, -0.05]])
    mask = build_mask(UncertaintyPolicy()(logits), k=1)
    assert mask.tolist() == [[1, 0, 1, 1], [1, 1, 1, 0]]
    probs = torch.sigmoid(logits)
    assert torch.equal(build_mask(UncertaintyPolicy("probs")(probs), k=2),
                       build_mask(UncertaintyPolicy()(logits), k=2))
    with pytest.raises(InvalidParameterError, match="layer_output"):
        UncertaintyPolicy("prob")


def test_gradient_policy_replaces_the_largest_gradients_first():
    grads = torch.tensor([[0.1, -3.0, 0.5, 2.0], [-0.01, 0.02, -0.5, 0.03]])
    scores = GradientPolicy()(torch.zeros(2, 4), concept_grads=grads)
    assert build_mask(scores, k=1).tolist() == [[1, 0, 1, 1], [1, 1, 0, 1]]
    assert build_mask(scores, k=2).tolist() == [[1, 0, 1, 0], [1, 1, 0, 0]]
    # pytorch_concepts' master scored +|grad|, which replaces the smallest first
    wrong = build_mask(grads.abs(), k=1)
    assert not torch.equal(wrong, build_mask(scores, k=1))
    # no gradients: all zeros, i.e. uniform
    assert torch.equal(GradientPolicy()(torch.randn(2, 4)), torch.zeros(2, 4))
    with pytest.raises(ShapeMismatchError):
        GradientPolicy()(torch.zeros(2, 4), concept_grads=torch.zeros(2, 3))
    with pytest.raises(NonFiniteError):
        GradientPolicy()(torch.zeros(1, 2), concept_grads=torch.tensor([[1.0, float("inf")]]))


def _linear_head(weights: list[list[float]]) -> nn.Linear:
    head = nn.Linear(len(weights[0]), len(weights), bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor(weights))
    return head


def test_task_gradients_match_an_independent_per_sample_computation():
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    pred = torch.randn(6, 5)
    build = task_gradients(lambda logits: head(torch.sigmoid(logits)))
    got = build(None, pred)["concept_grads"]
    for i in range(6):  # one sample at a time, the predicted class's log-probability
        x = pred[i:i + 1].clone().requires_grad_(True)
        log_probs = head(torch.sigmoid(x)).log_softmax(1)
        log_probs[0, int(log_probs.argmax())].backward()
        assert torch.allclose(got[i], x.grad[0], atol=1e-6)
    # a fixed class
    fixed = task_gradients(lambda logits: head(torch.sigmoid(logits)), target=2)(None, pred)
    x = pred.clone().requires_grad_(True)
    head(torch.sigmoid(x)).log_softmax(1)[:, 2].sum().backward()
    assert torch.allclose(fixed["concept_grads"], x.grad, atol=1e-6)
    # inside no_grad too, without touching the head's parameters
    head.zero_grad(set_to_none=True)
    with torch.no_grad():
        again = build(None, pred)["concept_grads"]
    assert torch.allclose(again, got) and all(p.grad is None for p in head.parameters())


def test_gradient_policy_with_task_gradients_picks_the_most_influential_concept():
    # a linear head on the concepts: the influence of concept j is |w_1j - w_0j|
    head = _linear_head([[0.0, 0.0, 0.0], [0.5, -4.0, 1.0]])
    build = task_gradients("task_head")
    module = nn.Module()
    module.task_head = head
    context = build(module, torch.zeros(4, 3))
    mask = build_mask(GradientPolicy()(torch.zeros(4, 3), **context), k=1)
    assert bool((mask[:, 1] == 0).all()) and int((mask == 0).sum()) == 4
    with pytest.raises(InvalidParameterError, match="extra_modules"):
        task_gradients("missing")(module, torch.zeros(1, 3))
    with pytest.raises(InvalidParameterError, match="target"):
        task_gradients(target="max")


def test_task_gradients_head_spelling_is_a_deprecated_alias_of_task_head():
    module = nn.Module()
    module.task_head = _linear_head([[0.0, 0.0, 0.0], [0.5, -4.0, 1.0]])
    pred = torch.zeros(4, 3)
    new = task_gradients(task_head="task_head")(module, pred)
    with pytest.warns(FutureWarning, match="head= is deprecated; use task_head="):
        old = task_gradients(head="task_head")(module, pred)
    assert torch.equal(old["concept_grads"], new["concept_grads"])
