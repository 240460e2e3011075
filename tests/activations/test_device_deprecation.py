"""device= on analysis calls is deprecated: they run where the model is, so the argument never
offered a choice. Passing it warns once per process, still refuses another device, and gives
the same result as leaving it out; leaving it out never warns."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from latentsurgeon.activations import layer_outputs
from latentsurgeon.activations.batching import DEVICE_DEPRECATION
from latentsurgeon.concepts import tcav
from latentsurgeon.errors import DeviceMismatchError
from latentsurgeon.metrics import accuracy


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()


def test_the_models_own_device_warns_and_gives_the_same_result():
    model, x = _model(), torch.randn(6, 3)
    plain = layer_outputs(model, "0", x, progress=False)
    with pytest.warns(FutureWarning, match="device= on analysis calls is deprecated"):
        given = layer_outputs(model, "0", x, device="cpu", progress=False)
    assert torch.equal(plain["0"], given["0"])


def test_another_device_is_still_refused():
    with pytest.warns(FutureWarning), pytest.raises(DeviceMismatchError, match="meta"):
        layer_outputs(_model(), "0", torch.randn(2, 3), device="meta", progress=False)


def test_a_call_warns_once_and_no_device_never_warns():
    model, x, y = _model(), torch.randn(8, 3), torch.randint(0, 2, (8,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        accuracy(model, (x, y))
        tcav(model, "0", x[:4], 1, x[4:], random=torch.randn(12, 3), n_runs=2,
             progress=False)
        assert not [w for w in caught if DEVICE_DEPRECATION in str(w.message)]
    # one call says it once, however many passes and layers it runs through
    for call in (lambda: tcav(model, "0", x[:4], 1, x[4:], random=torch.randn(12, 3), n_runs=2,
                              device="cpu", progress=False),
                 lambda: accuracy(model, (x, y), device="cpu")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            call()
        assert len([w for w in caught if DEVICE_DEPRECATION in str(w.message)]) == 1
