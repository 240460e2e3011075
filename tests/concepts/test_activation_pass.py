"""The one activation pass of the concepts package and its non-finite check."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from latentsurgeon.concepts._activations import _layer_activations, finite
from latentsurgeon.errors import LatentSurgeonError, NonFiniteError
from latentsurgeon.hooks import hook_count

CPU = torch.device("cpu")


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
    acts, shape = _layer_activations(model, "3", x, "flatten", 3, CPU)
    assert shape == (6, 4, 4) and acts.dtype == torch.float64
    torch.testing.assert_close(acts, expected, rtol=0, atol=0)
    assert hook_count(model) == 0 and not model.training


@pytest.mark.parametrize("pooling, dim", [("flatten", 96), ("max", 6), ("mean", 6)])
def test_pooling(tiny_cnn, images, pooling, dim):
    acts, _ = _layer_activations(tiny_cnn(), "3", images(5, 1), pooling, 64, CPU)
    assert acts.shape == (5, dim)


def test_empty_and_non_finite(tiny_cnn, images):
    model = tiny_cnn()
    with pytest.raises(LatentSurgeonError, match="concept inputs are empty"):
        _layer_activations(model, "3", images(3, 1)[:0], "flatten", 64, CPU,
                           what="concept inputs")
    bad = images(4, 1)
    bad[2, 0, 0, 0] = math.nan
    with pytest.raises(NonFiniteError, match="random inputs"):
        _layer_activations(model, "3", bad, "flatten", 64, CPU, what="random inputs")
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
    whole, _ = _layer_activations(model, "3", x, "flatten", 12, CPU)
    model[4] = nn.Sequential(Counter(), model[4])
    counter = model[4][0]
    # The first pass above ran whole to learn how often layer 3 runs; every later one stops.
    acts, _ = _layer_activations(model, "3", x, "flatten", 4, CPU)
    assert counter.calls == 0
    torch.testing.assert_close(acts, whole, rtol=0, atol=0)


def test_probe_layers_orders_layers_without_a_whole_pass(tiny_cnn, images):
    from latentsurgeon.concepts import probe_layers

    model = tiny_cnn()
    x = images(40, 1)
    labels = torch.arange(40) % 2
    model[4] = nn.Sequential(Counter(), model[4])
    counter = model[4][0]
    table = probe_layers(model, x, labels, ["1", "3"], batch_size=10, progress=False)
    assert counter.calls == 1  # only the extraction's first (learning) pass ran past layer 3
    assert table.layers == ["1", "3"]
