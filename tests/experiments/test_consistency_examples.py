"""consistency-examples: every example-importance method beats a random ranking at finding
same-label training examples, on the digits and on the LSTM autoencoder's heartbeats (quick
settings, seeds 0-2)."""

from __future__ import annotations

import pytest
import torch

from latentsurgeon.experiments import consistency_examples, run_experiment
from latentsurgeon.experiments.consistency_examples import EXAMPLE_METHODS, similarity_rate

from .conftest import SEEDS, check_written


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("consistency_examples")
    return run_experiment("consistency-examples", seeds=SEEDS, quick=True, out=out), out


def test_similarity_rate_on_a_planted_ranking():
    train_labels = torch.tensor([0, 0, 1, 1, 2])
    test_labels = torch.tensor([0, 2])
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.2, 0.0],    # both same-label examples first
                           [0.2, 0.5, 0.4, 0.3, 0.1]])   # its only same-label example last
    assert similarity_rate(scores, train_labels, test_labels, 1) == pytest.approx(0.5)
    assert similarity_rate(scores, train_labels, test_labels, 2) == pytest.approx(0.5)
    assert similarity_rate(scores, train_labels, test_labels, 1, largest=False) == \
        pytest.approx(0.5)  # sample 0's lowest (index 4) misses, sample 1's lowest hits
    assert similarity_rate(scores, train_labels, test_labels, 5) == pytest.approx(0.3)


@pytest.mark.parametrize("dataset", ["digits", "beats"])
def test_every_method_beats_random(run, dataset):
    result, _ = run
    rates = result.rates[dataset]
    random = rates["random"].mean(axis=0)
    for method in EXAMPLE_METHODS:
        assert (rates[method].mean(axis=0) > random).all(), (dataset, method)
    # the representation-space methods by a wide margin at the smallest top-k
    for method in ("nn_cosine", "nn_inverse_distance", "simplex"):
        assert rates[method][:, 0].mean() > 2 * random[0], (dataset, method)


def test_random_ranking_matches_the_class_share(run):
    result, _ = run
    # ten balanced digit classes, five balanced beat classes: about 1/10 and 1/5 by chance
    assert abs(result.rates["digits"]["random"].mean() - 0.1) < 0.05
    assert abs(result.rates["beats"]["random"].mean() - 0.2) < 0.08


def test_checks_files_and_least_important(run):
    result, out = run
    assert result.holds and len(result.checks) == 2 * len(EXAMPLE_METHODS)
    tables = check_written(result, out / "consistency-examples")
    settings = consistency_examples.Settings.quick()
    assert len(tables["similarity"]) == \
        2 * len(SEEDS) * 2 * (len(EXAMPLE_METHODS) + 1) * len(settings.fractions)
    # the least important neighbours are less often of the same class than the most important
    for dataset in ("digits", "beats"):
        assert (result.least[dataset]["nn_cosine"].mean(axis=0)
                < result.rates[dataset]["nn_cosine"].mean(axis=0)).all()
