"""The one activation pass of the concepts package and its non-finite check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from latentsurgeon.concepts._activations import _layer_activations, finite
from latentsurgeon.errors import LatentSurgeonError, NonFiniteError
from latentsurgeon.hooks import hook_count


class AddInPlace(nn.Module):
    """``x += 1`` on the previous layer's output, as a residual block's ``out += identity``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x += 1.0
        return x


def test_reads_the_layers_own_output_whatever_follows(tiny_cnn, images):
    model = tiny_cnn(torch.float64)
    x = images(10, 1).double()
    with torch.no_grad():
        expected = model[:4](x).flatten(1)
    model[4] = AddInPlace()
    acts, shape = _layer_activations(model, "3", x, "flatten", 3, None)
    assert shape == (6, 4, 4) and acts.dtype == torch.float64
    torch.testing.assert_close(acts, expected, rtol=0, atol=0)
    assert hook_count(model) == 0 and not model.training


@pytest.mark.parametrize("pooling, dim", [("flatten", 96), ("max", 6), ("mean", 6)])
def test_pooling(tiny_cnn, images, pooling, dim):
    acts, _ = _layer_activations(tiny_cnn(), "3", images(5, 1), pooling, 64, None)
    assert acts.shape == (5, dim)


def test_empty_and_non_finite(tiny_cnn, images):
    model = tiny_cnn()
    with pytest.raises(LatentSurgeonError, match="concept inputs are empty"):
        _layer_activations(model, "3", images(3, 1)[:0], "flatten", 64, None,
                           what="concept inputs")
    bad = images(4, 1)
    bad[2, 0, 0, 0] = math.nan
    with pytest.raises(NonFiniteError, match="random inputs"):
        _layer_activations(model, "3", bad, "flatten", 64, None, what="random inputs")
    assert hook_count(model) == 0


def test_finite_fast_path_and_its_fallback():
    big = torch.full((4,), 3e38)  # finite, but the float32 sum overflows to inf
    assert finite(big, "x") is big
    for bad in (math.nan, math.inf, -math.inf):
        x = torch.zeros(3, 2)
        x[1, 0] = bad
        with pytest.raises(NonFiniteError, match="samples 1"):
            finite(x, "x")
    ints = torch.arange(3)
    assert finite(ints, "x") is ints


class Counter(nn.Module):
    """Identity that counts its calls: shows whether the forward pass got past the layer read."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


def test_stops_the_forward_pass_after_the_layer(tiny_cnn, images):
    model = tiny_cnn()
    x = images(12, 1)
    whole, _ = _layer_activations(model, "3", x, "flatten", 12, None)
    model[4] = nn.Sequential(Counter(), model[4])
    counter = model[4][0]
    # The first pass above ran whole to learn how often layer 3 runs; every later one stops.
    acts, _ = _layer_activations(model, "3", x, "flatten", 4, None)
    assert counter.calls == 0
    torch.testing.assert_close(acts, whole, rtol=0, atol=0)


def test_probe_layers_orders_layers_without_a_whole_pass(tiny_cnn, images):
    from latentsurgeon.concepts import probe_layers

    model = tiny_cnn()
    x = images(40, 1)
    labels = torch.arange(40) % 2
    model[4] = nn.Sequential(Counter(), model[4])
    counter = model[4][0]
    table = probe_layers(model, ["1", "3"], x, labels, batch_size=10, progress=False)
    assert counter.calls == 1  # only the extraction's first (learning) pass ran past layer 3
    assert table.layers == ["1", "3"]


@pytest.fixture
def whole_passes(monkeypatch):
    """Every reader runs the whole model (early exit off everywhere)."""
    from latentsurgeon.hooks.stop import ForwardStopper

    original = ForwardStopper.__init__

    def never_stop(self, model, names, *, enabled=True):
        original(self, model, names, enabled=False)

    return lambda: monkeypatch.setattr(ForwardStopper, "__init__", never_stop)


def test_early_exit_changes_nothing_but_the_time(setup, whole_passes):
    from latentsurgeon.concepts import probe_layers, tcav

    model, inputs, concept, pool_ = setup
    labels = torch.arange(len(pool_)) % 2
    kwargs = {"n_runs": 4, "set_size": 30, "seed": 0, "progress": False}
    stopped = tcav(model, "3", inputs, 0, concept, random=pool_, **kwargs)
    probes = probe_layers(model, ["1", "3"], pool_, labels, progress=False)
    whole_passes()
    whole = tcav(model, "3", inputs, 0, concept, random=pool_, **kwargs)
    whole_probes = probe_layers(model, ["1", "3"], pool_, labels, progress=False)
    for name in ("sign_count", "magnitude", "random_sign_count", "cav_accuracy"):
        assert np.array_equal(getattr(stopped, name), getattr(whole, name)), name
    assert stopped.p_value == whole.p_value
    assert torch.equal(stopped.derivatives, whole.derivatives)
    for a, b in zip(stopped.concept_cavs + stopped.random_cavs,
                    whole.concept_cavs + whole.random_cavs, strict=True):
        assert torch.equal(a.direction_, b.direction_)
    assert probes.rows == whole_probes.rows
    assert hook_count(model) == 0
