"""The alias mechanisms: renamed keywords and an earlier positional order keep working, with
the documented warning, and a wrong mix of old and new is refused."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from latentsurgeon._aliases import MOVED, aliased, moved
from latentsurgeon.activations import layer_outputs
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.hooks import is_layer_selector


@moved(("model", "data", "layers"), is_old=lambda args: len(args) >= 2
       and not is_layer_selector(args[1]))
def _read(model, layers, data, *, scale=1):
    return model, layers, data, scale


@moved(("model", "layer", "inputs", "target"))
@aliased(deprecated={"inputs": "data"})
def _test(model, layer, data, *, target=0):
    return model, layer, data, target


def test_new_order_passes_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _read("m", "features", [1]) == ("m", "features", [1], 1)
        assert _test("m", "l", [1], target=3) == ("m", "l", [1], 3)


def test_old_order_recognised_by_value_is_mapped_with_a_warning():
    with pytest.warns(FutureWarning, match=r"\(model, data, layers\).*\(model, layers, data\)"):
        assert _read("m", [torch.zeros(1)], "features") == ("m", "features", [torch.zeros(1)], 1)


def test_old_order_recognised_by_count_reaches_a_renamed_parameter():
    with pytest.warns(FutureWarning) as record:
        assert _test("m", "l", [1], 4) == ("m", "l", [1], 4)
    assert len(record) == 1 and "(model, layer, inputs, target)" in str(record[0].message)


def test_too_many_positional_arguments_and_duplicates_are_refused():
    with pytest.raises(InvalidParameterError, match="at most 4 positional"):
        _test("m", "l", [1], 4, 5)
    with pytest.raises(InvalidParameterError, match="target was given both"):
        _test("m", "l", [1], 4, target=5)


def test_moved_orders_are_listed():
    assert MOVED["_read"] == ("model", "data", "layers")
    assert "layer_outputs" in MOVED


@pytest.mark.parametrize("value, expected", [
    ("features", True), (nn.ReLU, True), (nn.ReLU(), True), (["a", nn.Linear], True),
    ((), False), ([], False), (torch.zeros(2), False), ([torch.zeros(2)], False),
    ((torch.zeros(2), torch.zeros(2)), False), (None, False), (int, False), ([["a"]], False),
])
def test_is_layer_selector(value, expected):
    assert is_layer_selector(value) is expected


def test_layer_outputs_earlier_order_gives_the_same_values():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    new = layer_outputs(model, ["0", "2"], x, progress=False)
    with pytest.warns(FutureWarning, match="layer_outputs"):
        old = layer_outputs(model, x, ["0", "2"], progress=False)
    assert all(torch.equal(new[k], old[k]) for k in new)
