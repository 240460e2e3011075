"""Strategies: values in the layer's output space (as given, or probabilities to logits)."""

from __future__ import annotations

import pytest
import torch

from latentsurgeon.cbm import (
    DistributionIntervention,
    DoIntervention,
    GroundTruthIntervention,
    to_output_space,
)
from latentsurgeon.errors import InvalidParameterError, NonFiniteError, ShapeMismatchError

PRED = torch.zeros(3, 2)


def test_ground_truth_as_given_and_as_probabilities():
    truth = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    as_given = GroundTruthIntervention(truth)(PRED)
    assert torch.equal(as_given, truth)  # pytorch_concepts' behaviour: a logit 0 means p = 0.5
    as_logits = GroundTruthIntervention(truth, space="probs")(PRED)
    assert bool(torch.isfinite(as_logits).all())
    assert torch.allclose(torch.sigmoid(as_logits), truth, atol=2e-6)
    assert torch.allclose(as_logits.abs(), torch.full_like(truth, 13.8155), atol=1e-3)
    # intermediate probabilities map to their logits
    half = GroundTruthIntervention(torch.full((3, 2), 0.25), space="probs")(PRED)
    assert torch.allclose(half, torch.full((3, 2), torch.tensor(0.25).logit().item()))


def test_ground_truth_must_match_the_batch():
    with pytest.raises(ShapeMismatchError, match="each batch"):
        GroundTruthIntervention(torch.zeros(5, 2))(PRED)
    with pytest.raises(InvalidParameterError, match="no ground truth"):
        GroundTruthIntervention()(PRED)
    with pytest.raises(InvalidParameterError, match=r"\[0, 1\]"):
        GroundTruthIntervention(torch.full((3, 2), 1.5), space="probs")(PRED)
    with pytest.raises(NonFiniteError):
        GroundTruthIntervention(torch.full((3, 2), float("nan")))(PRED)
    with pytest.raises(InvalidParameterError, match="space"):
        GroundTruthIntervention(space="logit")


def test_do_intervention_broadcasts_constants():
    assert torch.equal(DoIntervention(2.0)(PRED), torch.full((3, 2), 2.0))
    per_concept = DoIntervention(torch.tensor([1.0, -1.0]))(PRED)
    assert per_concept.tolist() == [[1.0, -1.0]] * 3
    assert DoIntervention(torch.tensor([[0.5, 0.5]]))(PRED).shape == (3, 2)
    assert torch.allclose(DoIntervention(1.0, space="probs")(PRED), torch.full((3, 2), 13.8155),
                          atol=1e-3)
    with pytest.raises(ShapeMismatchError, match="broadcast"):
        DoIntervention(torch.ones(3))(PRED)
    with pytest.raises(InvalidParameterError, match="constants"):
        DoIntervention("1")


def test_distribution_intervention_is_seeded_and_leaves_the_global_rng():
    dist = torch.distributions.Bernoulli(probs=torch.tensor([0.2, 0.9]))
    pred = torch.zeros(2000, 2)
    state = torch.get_rng_state()
    first = DistributionIntervention(dist, space="probs", seed=5)
    a, b = first(pred), first(pred)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(a, b)  # a stream: the next call draws the next samples
    again = DistributionIntervention(dist, space="probs", seed=5)
    assert torch.equal(again(pred), a)
    first.reset()
    assert torch.equal(first(pred), a)
    rates = (torch.sigmoid(a) > 0.5).float().mean(0)
    assert abs(float(rates[0]) - 0.2) < 0.03 and abs(float(rates[1]) - 0.9) < 0.03
    # one distribution for every concept
    normal = DistributionIntervention(torch.distributions.Normal(3.0, 0.1), seed=0)(pred)
    assert normal.shape == (2000, 2) and abs(float(normal.mean()) - 3.0) < 0.01
    with pytest.raises(ShapeMismatchError):
        DistributionIntervention(torch.distributions.Normal(torch.zeros(3), 1.0))(pred)
    with pytest.raises(InvalidParameterError, match="seed"):
        DistributionIntervention(dist, seed=-1)


def test_to_output_space_is_finite_at_the_ends():
    logits = to_output_space(torch.tensor([0.0, 1.0]), "probs", eps=1e-3)
    assert torch.allclose(logits, torch.tensor([-6.9068, 6.9068]), atol=1e-3)
    assert torch.equal(to_output_space(torch.tensor([5.0]), "output"), torch.tensor([5.0]))
