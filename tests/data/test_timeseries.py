"""Generated heartbeat series: shapes, determinism, class counts, normalisation, separability."""

from __future__ import annotations

import pytest
import torch

from latentsurgeon.data import BEAT_CLASSES, ECG5000_PROPORTIONS, beat_templates, beats
from latentsurgeon.errors import InvalidParameterError


def test_shapes_and_types():
    series, labels = beats(37, seed=0, length=90)
    assert series.shape == (37, 90, 1) and series.dtype == torch.float32
    assert labels.shape == (37,) and labels.dtype == torch.int64
    assert set(labels.tolist()) <= set(range(len(BEAT_CLASSES)))
    assert bool(torch.isfinite(series).all())


def test_deterministic_per_seed():
    a, la = beats(50, seed=3)
    b, lb = beats(50, seed=3)
    c, lc = beats(50, seed=4)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(a, c)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(beats(20, seed=g1)[0], beats(20, seed=g2)[0])
    state = torch.random.get_rng_state()
    beats(20, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state), "the global RNG is not used"


def test_class_balance_and_proportions():
    _, labels = beats(503, seed=0)
    counts = torch.bincount(labels, minlength=5).tolist()
    assert sorted(counts) == [100, 100, 101, 101, 101] and sum(counts) == 503
    _, labels = beats(5000, seed=0, proportions=ECG5000_PROPORTIONS)
    assert torch.bincount(labels, minlength=5).tolist() == [2919, 1767, 96, 194, 24]
    _, labels = beats(10, seed=0, proportions=[1, 0, 0, 0, 1])
    assert torch.bincount(labels, minlength=5).tolist() == [5, 0, 0, 0, 5]
    # shuffled, not sorted by class
    _, labels = beats(100, seed=0)
    assert not torch.equal(labels, labels.sort().values)


def test_each_series_is_z_normalised():
    series, _ = beats(64, seed=1)
    torch.testing.assert_close(series.mean(dim=1), torch.zeros(64, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(series.std(dim=1), torch.ones(64, 1), atol=1e-5, rtol=0)
    raw, _ = beats(64, seed=1, normalize=False)
    assert raw.std(dim=1).mean() < 0.5  # raw beats are in units of a normal R wave


def test_templates_are_distinct_shapes():
    templates = beat_templates(140)
    assert templates.shape == (5, 140)
    # a normal R wave of height 1 near a third of the window
    assert templates[0].max().item() == pytest.approx(1.0, abs=0.05)
    assert abs(templates[0].argmax().item() - 0.33 * 139) <= 2
    distances = torch.cdist(templates, templates)
    assert distances[~torch.eye(5, dtype=torch.bool)].min() > 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classes_are_separable_but_not_trivially(seed):
    # Nearest class centroid on the raw series, fitted on one draw, scored on another: far
    # above chance (0.2); the noise and jitter keep it short of perfect.
    train_x, train_y = beats(500, seed=seed)
    test_x, test_y = beats(500, seed=100 + seed)
    centroids = torch.stack([train_x[train_y == c, :, 0].mean(0) for c in range(5)])
    predicted = torch.cdist(test_x[:, :, 0], centroids).argmin(1)
    accuracy = (predicted == test_y).float().mean().item()
    assert 0.8 < accuracy < 0.995


def test_noise_parameter_acts():
    quiet, _ = beats(100, seed=0, noise=0.0, normalize=False)
    loud, _ = beats(100, seed=0, noise=0.3, normalize=False)
    # the same draws apart from the white noise
    assert (loud - quiet).std().item() == pytest.approx(0.3, rel=0.05)


def test_bad_parameters():
    with pytest.raises(InvalidParameterError, match="beats: n must"):
        beats(0)
    with pytest.raises(InvalidParameterError, match="length"):
        beats(10, length=8)
    with pytest.raises(InvalidParameterError, match="proportions"):
        beats(10, proportions=[1, 1])
    with pytest.raises(InvalidParameterError, match="proportions"):
        beats(10, proportions=[0, 0, 0, 0, 0])
    with pytest.raises(InvalidParameterError, match="seed"):
        beats(10, seed=-2)
