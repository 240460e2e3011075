"""Results do not depend on the batch size (kronfluence's check): tcav and probe_layers with
batch sizes 1, 7 and N, on a float64 model, plus negative controls proving the checks can fail.

Tolerance: the batch shape changes how the convolutions round (float64, ~1e-16 relative), and
nothing else. Everything downstream is deterministic, so the sign counts, held-out scores and
p-values agree exactly or to 1e-9, and the directions and derivatives to 1e-9 (absolute, unit
directions; derivatives of order 0.1 here).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentsurgeon.concepts import ProbeReport, TCAVResult, probe_layers, tcav

ATOL = 1e-9


def assert_tcav_equivalent(a: TCAVResult, b: TCAVResult) -> None:
    for key in ("sign_count", "random_sign_count", "cav_accuracy"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    for key in ("magnitude", "mean_derivative", "random_mean_derivative"):
        np.testing.assert_allclose(getattr(a, key), getattr(b, key), rtol=0, atol=ATOL,
                                   err_msg=key)
    for key in ("p_value_ttest", "p_value_set", "p_value_magnitude"):
        assert getattr(a, key) == pytest.approx(getattr(b, key), abs=ATOL, nan_ok=True), key
    torch.testing.assert_close(a.derivatives, b.derivatives, rtol=0, atol=ATOL)
    for x, y in zip(a.concept_cavs + a.random_cavs, b.concept_cavs + b.random_cavs,
                    strict=True):
        assert x.direction_.dtype == torch.float64
        torch.testing.assert_close(x.direction_, y.direction_, rtol=0, atol=ATOL)


def assert_probes_equivalent(a: ProbeReport, b: ProbeReport) -> None:
    assert a.layers == b.layers and a.chance == b.chance
    for ra, rb in zip(a.rows, b.rows, strict=True):
        assert ra == rb
    for layer in a.layers:
        coef_a = a.probes[layer][-1].coef_
        coef_b = b.probes[layer][-1].coef_
        np.testing.assert_allclose(coef_a, coef_b, rtol=0, atol=1e-7)


@pytest.fixture(scope="module")
def float64_setup():
    g = torch.Generator().manual_seed(21)
    torch.manual_seed(0)
    from torch import nn

    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 16, 16), nn.ReLU(), nn.Linear(16, 3),
    ).double().eval()
    inputs = torch.rand(23, 1, 8, 8, generator=g, dtype=torch.float64)
    concept = torch.rand(30, 1, 8, 8, generator=g, dtype=torch.float64)
    concept[:, :, 5:8, 0:3] = 1.0
    random = torch.rand(96, 1, 8, 8, generator=g, dtype=torch.float64)
    return model, inputs, concept, random


@pytest.mark.parametrize("method, pooling", [("logistic", "flatten"), ("pattern", "max"),
                                             ("mass_mean", "mean")])
def test_tcav_does_not_depend_on_the_batch_size(float64_setup, method, pooling):
    model, inputs, concept, random = float64_setup
    results = [tcav(model, "3", inputs, 2, concept, random=random, n_runs=4, method=method,
                    pooling=pooling, batch_size=size, progress=False)
               for size in (1, 7, len(random))]
    for other in results[1:]:
        assert_tcav_equivalent(results[0], other)


def test_negative_control_tcav(float64_setup):
    """A change far below what any reading of the scores would notice (one concept example
    moved by 1e-6) fails the check: it is sharp enough to catch a real batch-size dependence.
    (Moving a class input would not do: the ReLU network's gradient is piecewise constant.)"""
    model, inputs, concept, random = float64_setup
    moved = concept.clone()
    moved[5] += 1e-6
    a = tcav(model, "3", inputs, 2, concept, random=random, n_runs=4, batch_size=7, progress=False)
    b = tcav(model, "3", inputs, 2, moved, random=random, n_runs=4, batch_size=7, progress=False)
    with pytest.raises(AssertionError):
        assert_tcav_equivalent(a, b)


def test_probes_do_not_depend_on_the_batch_size(float64_setup):
    model, _, _, random = float64_setup
    labels = (random[:, 0, :4, :4].mean((1, 2)) > 0.5).long()
    reports = [probe_layers(model, ["0", "3", "6"], random, labels, pooling="mean",
                            batch_size=size, progress=False)
               for size in (1, 7, len(random))]
    for other in reports[1:]:
        assert_probes_equivalent(reports[0], other)


def test_negative_control_probes(float64_setup):
    model, _, _, random = float64_setup
    labels = (random[:, 0, :4, :4].mean((1, 2)) > 0.5).long()
    a = probe_layers(model, ["3"], random, labels, pooling="mean", progress=False)
    moved = random.clone()
    moved[:, :, 0, 0] += 1e-3
    b = probe_layers(model, ["3"], moved, labels, pooling="mean", progress=False)
    with pytest.raises(AssertionError):
        assert_probes_equivalent(a, b)
