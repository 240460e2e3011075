"""The projection math: the formula, channel space, references, and that its backward pass is
the derivative of its forward (float64 finite differences), unless straight-through is asked."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

from latentsurgeon.correct.projection import clarc_projection, mass_mean_shift
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError


def unit(n: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    v = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return v / v.norm()


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


@pytest.mark.parametrize("pooling,shape,dim", [("flatten", (3, 2, 2, 2), 8), ("mean", (3, 2, 2, 2), 2),
                                               ("flatten", (3, 5), 5)])
def test_exact_gradient_is_the_derivative_of_the_forward(pooling, shape, dim):
    """gradcheck: autograd's Jacobian equals central finite differences in float64."""
    v, z = unit(dim, dtype=torch.float64), torch.randn(dim, dtype=torch.float64)
    a = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    weight = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    assert gradcheck(lambda t: clarc_projection(t, v, z, 0.8, pooling), (a,))
    assert gradcheck(lambda t: clarc_projection(t, v, z, 0.8, pooling, sample_weight=weight),
                     (a,))
    # straight-through: the forward is projected, the backward is the identity -> not the
    # derivative (the check must be able to fail)
    assert not gradcheck(lambda t: clarc_projection(t, v, z, 0.8, pooling,
                                                    gradient="straight_through"), (a,),
                         raise_exception=False)
    out = clarc_projection(a, v, z, 0.8, pooling, gradient="straight_through")
    (grad,) = torch.autograd.grad(out.sum(), a)
    torch.testing.assert_close(grad, torch.ones_like(a))


def test_exact_backward_is_the_projection():
    """d a'/d a = I - alpha v v^T: a gradient along v is scaled by (1 - alpha)."""
    v = unit(6, dtype=torch.float64)
    a = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    out = clarc_projection(a, v, torch.zeros(6, dtype=torch.float64), alpha=1.0)
    (grad,) = torch.autograd.grad(out, a, grad_outputs=v.expand(2, 6))
    torch.testing.assert_close(grad, torch.zeros_like(grad))


def test_result_is_never_a_view_of_the_input():
    a = torch.randn(3, 4)
    out = clarc_projection(a, unit(4), torch.zeros(4), alpha=0.0)
    out.add_(1.0)  # a later in-place op on the corrected output
    assert not torch.equal(out, a)


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


def test_mass_mean_shift_is_a_constant_shift():
    a = torch.randn(2, 3, 4, requires_grad=True)
    out = mass_mean_shift(a, torch.ones(12), alpha=2.0)
    torch.testing.assert_close(out, a - 2.0)
    (grad,) = torch.autograd.grad(out.sum(), a)
    torch.testing.assert_close(grad, torch.ones_like(a))


def test_gradient_mode_is_validated():
    from latentsurgeon.correct.projection import check_gradient

    with pytest.raises(InvalidParameterError, match="gradient must be one of 'exact'"):
        check_gradient("detached")


def test_exact_gradient_through_a_model_equals_finite_differences():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    v, z = unit(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)

    def corrected(x):
        return model[2](clarc_projection(model[1](model[0](x)), v, z))

    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert gradcheck(corrected, (x,))
