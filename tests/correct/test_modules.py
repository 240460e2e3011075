"""ClarcProjection and MassMeanShift: equal to the hooks, traceable, buffers in state_dict, and
the gradient mode survives a torch.save round trip."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

from latentsurgeon.correct import ClarcProjection, MassMeanShift, add_clarc_hook
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.hooks import hook_count

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace


def unit(n: int) -> torch.Tensor:
    v = torch.randn(n, generator=torch.Generator().manual_seed(0))
    return v / v.norm()


def test_modules_equal_hooks_and_trace():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4))
    x = torch.randn(4, 1, 4, 4)
    v, z = unit(48), torch.randn(48)
    with add_clarc_hook(model, v, z, "1", alpha=0.5):
        hooked = model(x)
    assert hook_count(model) == 0
    wrapped = nn.Sequential(model[0], model[1], ClarcProjection(v, z, 0.5), model[2], model[3])
    torch.testing.assert_close(wrapped(x), hooked)
    traced = torch.jit.trace(wrapped, x)
    torch.testing.assert_close(traced(x), hooked)
    shift = MassMeanShift(torch.ones(48), alpha=2.0)
    torch.testing.assert_close(shift(torch.zeros(2, 3, 4, 4)), torch.full((2, 3, 4, 4), -2.0))
    assert set(ClarcProjection(v, z).state_dict()) == {"direction", "reference", "alpha"}


def test_module_gradient_modes_and_save():
    v, z = unit(6).double(), torch.zeros(6).double()
    exact = ClarcProjection(v, z).double()
    straight = ClarcProjection(v, z, gradient="straight_through").double()
    a = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    assert gradcheck(exact, (a,))
    assert not gradcheck(straight, (a,), raise_exception=False)
    buffer = io.BytesIO()
    torch.save(straight, buffer)
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False)
    assert again.gradient == "straight_through" and "straight_through" in repr(again)
    with pytest.raises(InvalidParameterError, match="gradient"):
        ClarcProjection(v, z, gradient="none")
