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
