"""Intervention curves: each point is an independent computation's accuracy; the summary
numbers; the files; and the policies against random (the done-when: GradientPolicy and
UncertaintyPolicy beat RandomPolicy at 25 % and 50 % of the concepts, over 5 seeds)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from latentsurgeon.cbm import (
    ConceptBottleneckModel,
    GradientPolicy,
    GroundTruthIntervention,
    InterventionCurves,
    RandomPolicy,
    UniformPolicy,
    intervention,
    intervention_curve,
)
from latentsurgeon.data import toy_concepts
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError
from latentsurgeon.hooks import hook_count
from latentsurgeon.metrics import accuracy

from .conftest import one_thread


def _with_truth(model, split, **kwargs) -> float:
    truth = GroundTruthIntervention(split.concepts, space="probs")
    with intervention(model, "concepts", truth, UniformPolicy(), **kwargs):
        return accuracy(model, split, batch_size=len(split.labels))


def test_each_point_is_the_accuracy_of_that_intervention(xor_cbm, xor_small):
    split = xor_small.test
    curves = intervention_curve(xor_cbm, split, batch_size=97)  # batches that do not divide N
    assert curves.counts == [0, 1, 2] and curves.policies == ["random", "uncertainty",
                                                              "gradient", "uniform"]
    plain = accuracy(xor_cbm, split)
    every = _with_truth(xor_cbm, split)
    first_only = _with_truth(xor_cbm, split, concepts=[0])
    for policy in curves.policies:
        assert curves.task[policy][0, 0] == pytest.approx(plain, abs=1e-6)
        assert curves.task[policy][0, 2] == pytest.approx(every, abs=1e-6)
        assert curves.concept[policy][0, 2] == 1.0
    # uniform scores with k=1 replace the first concept (ties go to the lower index)
    assert curves.task["uniform"][0, 1] == pytest.approx(first_only, abs=1e-6)
    with torch.no_grad():
        logits = xor_cbm(split.inputs).concept_logits
    concept_acc = float(((logits > 0).float() == split.concepts).float().mean())
    assert curves.concept["random"][0, 0] == pytest.approx(concept_acc, abs=1e-6)
    # the random policy keeps one order per sample for every count (seed + run, reset per k)
    whole = intervention_curve(xor_cbm, split, policies=["random"], seed=7,
                               batch_size=len(split.labels))
    truth = GroundTruthIntervention(split.concepts, space="probs")
    with intervention(xor_cbm, "concepts", truth, RandomPolicy(seed=7), k=1):
        assert whole.task["random"][0, 1] == pytest.approx(
            accuracy(xor_cbm, split, batch_size=len(split.labels)), abs=1e-6)
    # the model is left as it was
    assert hook_count(xor_cbm) == 0 and not xor_cbm.training
    # an independent CBM's head was trained on the true concepts: all-truth = its oracle
    with torch.no_grad():
        oracle = float((xor_cbm.task_head(split.concepts).argmax(1) == split.labels)
                       .float().mean())
    assert every == pytest.approx(oracle, abs=1e-6)


def test_summary_numbers_files_and_figure(xor_cbm, xor_small, tmp_path):
    # the same model twice: the summary arithmetic does not care, but the caller is told
    with pytest.warns(UserWarning, match="runs 0 and 1 are the same weights on the same data"):
        curves = intervention_curve([xor_cbm, xor_cbm], [xor_small.test, xor_small.test],
                                    policies=["random", "uniform"], seed=3)
    with pytest.warns(UserWarning, match="count one run twice"):
        again = intervention_curve([xor_cbm, xor_cbm], [xor_small.test, xor_small.test],
                                   policies=["random", "uniform"], seed=3)
    assert np.array_equal(curves.task["random"], again.task["random"])  # seeded
    mean = curves.mean("uniform")
    assert curves.auc("uniform") == pytest.approx((mean[0] + 2 * mean[1] + mean[2]) / 4)
    assert curves.at("uniform", 0.25) == pytest.approx((mean[0] + mean[1]) / 2)
    assert curves.at("uniform", 1.0) == pytest.approx(mean[2])
    # the same model twice: no spread, the interval collapses onto the mean
    low, high = curves.interval("uniform")
    assert np.allclose(low, mean) and np.allclose(high, mean)
    path = curves.to_csv(tmp_path / "curves.csv")
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 2 * 3 and rows[0]["policy"] == "random" and rows[0]["n_runs"] == "2"
    assert float(rows[4]["task_mean"]) == pytest.approx(mean[1])
    figure = curves.plot("xor", references={"black box": 0.9})
    assert len(figure.axes) == 2
    summary = curves.summary()
    assert set(summary["policies"]["uniform"]) >= {"task_none", "task_all", "task_auc"}
    with pytest.raises(InvalidParameterError, match="policy"):
        curves.mean("gradient")


def test_t_intervals_over_runs():
    values = np.array([[0.5, 0.8], [0.6, 0.9], [0.7, 0.7]])
    curves = InterventionCurves([0, 1], 1, {"p": values}, {"p": values})
    low, high = curves.interval("p")
    half = stats.t.ppf(0.975, 2) * values.std(0, ddof=1) / np.sqrt(3)
    assert np.allclose(high - values.mean(0), half) and np.allclose(values.mean(0) - low, half)


def test_bad_calls(xor_cbm, xor_small):
    user = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(InvalidParameterError, match="GradientPolicy"):
        intervention_curve(user, xor_small.test, layer="0", policies={"g": GradientPolicy()})
    with pytest.raises(InvalidParameterError, match="Unknown policy"):
        intervention_curve(xor_cbm, xor_small.test, policies=["smart"])
    with pytest.raises(ShapeMismatchError, match="shape"):
        x, y, c = xor_small.test
        intervention_curve(xor_cbm, (x, y, torch.cat([c, c], 1)), policies=["uniform"])
    with pytest.raises(InvalidParameterError, match="inputs, labels, concepts"):
        intervention_curve(xor_cbm, xor_small.test[:2])
    with pytest.raises(InvalidParameterError, match="2 data sets for 3 models"):
        intervention_curve([xor_cbm] * 3, [xor_small.test] * 2)


def _noisy_runs(name, seeds, noise, **sizes):
    models, tests = [], []
    with one_thread():
        for seed in seeds:
            data = toy_concepts(name, seed=seed, noise=noise, **sizes)
            models.append(ConceptBottleneckModel(
                data.n_features, data.n_concepts, 2, head_kind="mlp", scheme="independent",
                seed=seed, epochs=40).fit(data.train))
            tests.append(data.test)
        return intervention_curve(models, tests, policies=["random", "uncertainty", "gradient"])


def _beat_random(curves: InterventionCurves):
    for fraction in (0.25, 0.5):
        random = curves.at("random", fraction)
        for policy in ("uncertainty", "gradient"):
            assert curves.at(policy, fraction) > random + 0.005, (policy, fraction, curves.summary())


@pytest.mark.slow
@pytest.mark.parametrize(("name", "noise"), [("xor", 0.1), ("checkmark", 1.0)])
def test_gradient_and_uncertainty_beat_random_over_five_seeds(name, noise):
    _beat_random(_noisy_runs(name, range(5), noise, n_train=2000, n_test=2000))


def test_gradient_and_uncertainty_beat_random_fast():
    _beat_random(_noisy_runs("xor", range(3), 0.1, n_train=600, n_test=1000))


def test_paired_differences_to_random():
    random = np.array([[0.5, 0.6, 1.0], [0.7, 0.75, 1.0], [0.6, 0.7, 1.0]])
    smart = random + np.array([[0.0, 0.10, 0.0], [0.0, 0.12, 0.0], [0.0, 0.08, 0.0]])
    curves = InterventionCurves([0, 1, 2], 2, {"random": random, "smart": smart},
                                {"random": random, "smart": smart})
    mean, low, high = curves.difference("smart", fraction=0.5)
    half = stats.t.ppf(0.975, 2) * 0.02 / np.sqrt(3)
    assert mean == pytest.approx(0.10) and high - mean == pytest.approx(half)
    assert curves.difference("smart", fraction=0.25)[0] == pytest.approx(0.05)
    assert curves.difference("smart")[0] == pytest.approx(0.05)  # area: 0.10 * 1/2
    assert curves.summary()["policies"]["smart"]["vs_random_at_50"][0] == pytest.approx(0.10)
