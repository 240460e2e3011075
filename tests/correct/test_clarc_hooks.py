"""add_clarc_hook, add_mass_mean_probe_hook, clarc_projection and the ClarcProjection module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentsurgeon.concepts import CAV
from latentsurgeon.correct import (
    ClarcProjection,
    MassMeanShift,
    add_clarc_hook,
    add_mass_mean_probe_hook,
)
from latentsurgeon.errors import LatentSurgeonError, LayerNotFoundError, ShapeMismatchError
from latentsurgeon.hooks import add_clarc_hook as hooks_add_clarc_hook
from latentsurgeon.hooks import hook_count
from latentsurgeon.hooks.clarc import clarc_projection


def conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4))


def unit(n: int, seed: int = 0) -> torch.Tensor:
    v = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def test_exported_from_hooks_and_correct():
    assert hooks_add_clarc_hook is add_clarc_hook


def test_flatten_projection_matches_formula():
    a = torch.randn(5, 3, 2, 2)
    v, z = unit(12), torch.randn(12)
    out = clarc_projection(a, v, z, alpha=0.7)
    flat = a.reshape(5, -1)
    expected = flat - 0.7 * ((flat - z) @ v)[:, None] * v[None]
    torch.testing.assert_close(out.reshape(5, -1), expected)
    # alpha=1 sets every sample's component to the reference's
    full = clarc_projection(a, v, z).reshape(5, -1)
    torch.testing.assert_close(full @ v, (z @ v).expand(5))


def test_channel_projection_acts_at_every_position():
    a = torch.randn(4, 3, 5, 6)
    v, z = unit(3), torch.randn(3)
    out = clarc_projection(a, v, z, pooling="max")
    per_pos = a.permute(0, 2, 3, 1)  # (N, H, W, C)
    expected = per_pos - ((per_pos - z) @ v)[..., None] * v
    torch.testing.assert_close(out.permute(0, 2, 3, 1), expected)


def test_gradient_passes_straight_through():
    a = torch.randn(3, 8, requires_grad=True)
    out = clarc_projection(a, unit(8), torch.zeros(8))
    (grad,) = torch.autograd.grad(out.sum(), a)
    torch.testing.assert_close(grad, torch.ones_like(a))


def test_scalar_reference_is_target_length():
    a = torch.randn(6, 4)
    v = unit(4)
    out = clarc_projection(a, v, torch.tensor(2.5))
    torch.testing.assert_close(out @ v, torch.full((6,), 2.5))


def test_sample_weight_edits_only_selected_samples():
    a = torch.randn(4, 5)
    v, z = unit(5), torch.randn(5)
    out = clarc_projection(a, v, z, sample_weight=torch.tensor([1.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(out[1], a[1])
    torch.testing.assert_close(out[0], clarc_projection(a[:1], v, z)[0])


def test_wrong_size_says_what_was_expected():
    with pytest.raises(ShapeMismatchError, match="need 12"):
        clarc_projection(torch.randn(2, 3, 2, 2), unit(5), torch.zeros(5))
    with pytest.raises(ShapeMismatchError, match="channel space"):
        clarc_projection(torch.randn(2, 3, 2, 2), unit(12), torch.zeros(12), pooling="mean")


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
    with pytest.raises(LatentSurgeonError, match="non-zero"):
        add_clarc_hook(model, torch.zeros(48), torch.zeros(48), "1")
    with pytest.raises(LatentSurgeonError, match="Unknown pooling"):
        add_clarc_hook(model, unit(48), torch.zeros(48), "1", pooling="sum")
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
    with pytest.raises(LatentSurgeonError, match="not a scalar"):
        add_mass_mean_probe_hook(model, 1.0, "0")


def test_modules_equal_hooks_and_trace():
    model = conv_net()
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
