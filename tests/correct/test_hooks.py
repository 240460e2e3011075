"""add_clarc_hook and add_mass_mean_probe_hook: the edit, removal, detoxai's argument names, the
gradient of the hooked model, and errors."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

import latentsurgeon.hooks
from latentsurgeon.concepts import CAV
from latentsurgeon.correct import add_clarc_hook, add_mass_mean_probe_hook
from latentsurgeon.correct.projection import clarc_projection
from latentsurgeon.errors import InvalidParameterError, LayerNotFoundError, NonFiniteError
from latentsurgeon.hooks import hook_count


def conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4))


def unit(n: int, seed: int = 0) -> torch.Tensor:
    v = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def test_hooks_package_keeps_hook_mechanics_only():
    assert not hasattr(latentsurgeon.hooks, "add_clarc_hook")
    with pytest.raises(ImportError):
        importlib.import_module("latentsurgeon.hooks.clarc")


def test_add_clarc_hook_projects_and_removes_idempotently():
    model = conv_net()
    x = torch.randn(5, 1, 4, 4)
    v, z = unit(48), torch.randn(48)
    plain = model(x)
    group = add_clarc_hook(model, v * 3.0, z, "1", alpha=0.5)  # v is normalised
    hooked = model(x)
    group.remove()
    group.remove()
    assert hook_count(model) == 0
    torch.testing.assert_close(model(x), plain)
    acts = model[1](model[0](x))
    expected = model[3](model[2](clarc_projection(acts, v, z, alpha=0.5)))
    torch.testing.assert_close(hooked, expected)
    assert not torch.allclose(hooked, plain)


def test_detoxai_argument_names_are_accepted():
    model = conv_net()
    x = torch.randn(3, 1, 4, 4)
    v, z = unit(48), torch.randn(48)
    with add_clarc_hook(model, v, z, "1"):
        ours = model(x)
    with add_clarc_hook(model=model, cav=v, mean_length=z, layer_name="1", alpha=1.0):
        theirs = model(x)
    torch.testing.assert_close(ours, theirs)
    with add_mass_mean_probe_hook(model, z, layer_names=["1"]):
        shifted = model(x)
    with add_mass_mean_probe_hook(model, z, ["1"]):
        torch.testing.assert_close(model(x), shifted)
    with pytest.raises(InvalidParameterError, match="not both"):
        add_clarc_hook(model, v, z, layer="1", layer_name="1")
    assert hook_count(model) == 0


def test_hooked_model_gradient_is_exact_unless_straight_through():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    v, z = unit(6).double(), torch.randn(6).double()
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    with add_clarc_hook(model, v, z, "1"):
        assert gradcheck(model, (x,))
    with add_clarc_hook(model, v, z, "1", gradient="straight_through"):
        assert not gradcheck(model, (x,), raise_exception=False)
    assert hook_count(model) == 0


def test_add_clarc_hook_accepts_a_fitted_cav():
    model = conv_net()
    acts = torch.randn(40, 3, 4, 4)
    labels = torch.arange(40) % 2
    acts[labels == 1, 0] += 2.0
    cav = CAV(pooling="mean").fit(acts, labels)
    x = torch.randn(3, 1, 4, 4)
    with add_clarc_hook(model, cav, cav.mean_clean_, "1"):
        out = model(x)
    expected = model[3](model[2](clarc_projection(model[1](model[0](x)), cav.direction_,
                                                  cav.mean_clean_, pooling="mean")))
    torch.testing.assert_close(out, expected)
    assert hook_count(model) == 0


def test_add_clarc_hook_errors():
    model = conv_net()
    with pytest.raises(LayerNotFoundError):
        add_clarc_hook(model, unit(48), torch.zeros(48), "nope")
    with pytest.raises(InvalidParameterError, match="non-zero"):
        add_clarc_hook(model, torch.zeros(48), torch.zeros(48), "1")
    with pytest.raises(InvalidParameterError, match="pooling must be one of"):
        add_clarc_hook(model, unit(48), torch.zeros(48), "1", pooling="sum")
    with pytest.raises(InvalidParameterError, match="gradient must be one of"):
        add_clarc_hook(model, unit(48), torch.zeros(48), "1", gradient="detach")
    with pytest.raises(NonFiniteError, match="cav"):
        add_clarc_hook(model, torch.full((48,), float("nan")), torch.zeros(48), "1")
    with pytest.raises(InvalidParameterError, match="layer must be a string"):
        add_clarc_hook(model, unit(48), torch.zeros(48), 1)
    assert hook_count(model) == 0


def test_mass_mean_probe_hook_shifts_every_selected_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    probe = torch.randn(4)
    x = torch.randn(3, 4)
    group = add_mass_mean_probe_hook(model, probe, ["0", "1"], alpha=0.5)
    out = model(x)
    assert len(group) == 2
    group.remove()
    group.remove()
    assert hook_count(model) == 0
    h = model[0](x) - 0.5 * probe
    h = model[1](h) - 0.5 * probe
    torch.testing.assert_close(out, model[2](h))
    with pytest.raises(InvalidParameterError, match="not a scalar"):
        add_mass_mean_probe_hook(model, 1.0, "0")
    cav = CAV().fit(torch.randn(20, 4), torch.arange(20) % 2)
    with pytest.raises(InvalidParameterError, match="not a CAV"):
        add_mass_mean_probe_hook(model, cav, "0")
