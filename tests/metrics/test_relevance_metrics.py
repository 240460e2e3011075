"""artifact_relevance against analytic cases and a direct computation of captum's InputXGradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentsurgeon.errors import (
    DeviceMismatchError,
    InvalidParameterError,
    LatentSurgeonError,
    NonFiniteError,
    ShapeMismatchError,
)
from latentsurgeon.metrics import artifact_relevance, artifact_relevance_change

H = W = 6


def masked_linear(inside: bool, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    mask = torch.zeros(H, W)
    mask[:2, :3] = 1
    model = nn.Sequential(nn.Flatten(), nn.Linear(H * W, 4))
    with torch.no_grad():
        keep = mask if inside else 1 - mask
        model[1].weight.mul_(keep.reshape(1, -1))
    return model, mask


def images(n: int = 9) -> torch.Tensor:
    return torch.rand(n, 1, H, W, generator=torch.Generator().manual_seed(1)) + 0.1


def test_weights_only_inside_give_one_only_outside_give_zero():
    x = images()
    inside, mask = masked_linear(True)
    outside, _ = masked_linear(False)
    assert artifact_relevance(inside, x, mask) == pytest.approx(1.0)
    assert artifact_relevance(outside, x, mask.expand(9, -1, -1)) == pytest.approx(0.0)
    for method in ("saliency", "integrated_gradients"):
        assert artifact_relevance(inside, x, mask, method=method) == pytest.approx(1.0)
        assert artifact_relevance(outside, x, mask, method=method) == pytest.approx(0.0, abs=1e-6)


def test_equals_a_direct_input_times_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Flatten(),
                          nn.Linear(3 * H * W, 4))
    x = images()
    masks = torch.zeros(9, H, W)
    masks[:, 3:, 3:] = 1
    targets = torch.arange(9) % 4
    xg = x.clone().requires_grad_(True)
    out = model(xg).gather(1, targets[:, None]).sum()
    (grad,) = torch.autograd.grad(out, xg)
    attr = (xg * grad).detach().abs()
    expected = (attr * masks[:, None]).flatten(1).sum(1) / attr.flatten(1).sum(1)
    shares, defined = artifact_relevance(model, x, masks, target=targets, per_sample=True,
                                         batch_size=4)
    assert bool(defined.all())
    torch.testing.assert_close(shares, expected)
    assert artifact_relevance(model, x, masks, target=targets) == pytest.approx(float(expected.mean()))
    # targets=None attributes the predicted class; an int every sample's same class
    predicted = model(x).argmax(1)
    assert artifact_relevance(model, x, masks) == pytest.approx(
        artifact_relevance(model, x, masks, target=predicted))
    assert artifact_relevance(model, x, masks, target=2) == pytest.approx(
        artifact_relevance(model, x, masks, target=torch.full((9,), 2)))


def test_samples_without_mask_are_left_out():
    model, mask = masked_linear(True)
    x = images(4)
    masks = mask.expand(4, -1, -1).clone()
    masks[1:] = 0
    shares, defined = artifact_relevance(model, x, masks, per_sample=True)
    assert shares[0] == pytest.approx(1.0) and defined.tolist() == [True, False, False, False]
    assert torch.isfinite(shares).all() and not shares[1:].any()
    assert artifact_relevance(model, x, masks) == pytest.approx(1.0)
    # nothing to average is an error, never NaN
    with pytest.raises(InvalidParameterError, match=r"no sample has a share.*empty for 4 of 4"):
        artifact_relevance(model, x, torch.zeros(H, W))
    with pytest.raises(InvalidParameterError, match="method must be one of"):
        artifact_relevance(model, x, mask, method="lrp")
    with pytest.raises(LatentSurgeonError, match=r"artifact_relevance\(\) needs masks"):
        artifact_relevance(model, x, None)


def test_change_helper_compares_the_same_targets():
    inside, mask = masked_linear(True)
    outside, _ = masked_linear(False)
    x = images()
    change = artifact_relevance_change(inside, outside, x, mask)
    assert change["before"] == pytest.approx(1.0)
    assert change["after"] == pytest.approx(0.0)
    assert change["reduction"] == pytest.approx(1.0)


def test_model_state_is_restored():
    model, mask = masked_linear(True)
    model.train()
    artifact_relevance(model, images(), mask)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_tabular_rows_with_masks_of_their_own_shape():
    """(N, D) inputs: share of |x * grad| on the masked columns, against a direct computation."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    x = torch.randn(8, 5)
    masks = torch.zeros(8, 5)
    masks[:, 4] = 1
    masks[::2, 0] = 1
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg)[:, 1].sum(), xg)
    attr = (x * grad).abs()
    expected = (attr * masks).sum(1) / attr.sum(1)
    shares = artifact_relevance(model, x, masks, target=1, per_sample=True).shares
    torch.testing.assert_close(shares, expected)
    # one (D,) mask for every row
    column = torch.zeros(5)
    column[4] = 1
    torch.testing.assert_close(artifact_relevance(model, x, column, target=1,
                                                  per_sample=True).shares,
                               attr[:, 4] / attr.sum(1))


def test_shortcut_detect_single_mask_and_errors_name_artifact_relevance():
    model, mask = masked_linear(True)
    x = images()
    assert artifact_relevance(model, x, mask[None]) == pytest.approx(1.0)  # (1, H, W)
    with pytest.raises(ShapeMismatchError, match=r"artifact_relevance\(\): masks must have"):
        artifact_relevance(model, x, torch.ones(4, 6, 6))
    with pytest.raises(NonFiniteError, match="artifact_relevance"):
        artifact_relevance(model, x * float("nan"), mask)
    with pytest.raises(DeviceMismatchError):
        artifact_relevance(model, x, mask, device="meta")
    with pytest.raises(InvalidParameterError, match="batch_size"):
        artifact_relevance(model, x, mask, batch_size=0)
    with pytest.raises(InvalidParameterError, match=r"target must lie in \[0, 3\]"):
        artifact_relevance(model, x, mask, target=4)


def test_zero_attribution_warns_and_no_share_at_all_is_an_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(H * W, 3))
    with torch.no_grad():
        model[1].weight.zero_()  # the output does not depend on the input: attribution 0
    x = images(4)
    mask = torch.zeros(H, W)
    mask[:2, :2] = 1
    with pytest.warns(UserWarning, match="zero everywhere for 4 of 4"), \
            pytest.raises(InvalidParameterError, match="attribution is zero for the other 4"):
        artifact_relevance(model, x, mask)


def test_earlier_spellings_give_the_same_number_with_a_warning():
    model, mask = masked_linear(True)
    x = images()
    new = artifact_relevance(model, x, mask, target=1)
    with pytest.warns(FutureWarning, match="targets= is deprecated"):
        assert artifact_relevance(model, x, mask, targets=1) == new
    with pytest.warns(FutureWarning, match="positional arguments"):
        assert artifact_relevance(model, x, mask, 1) == new
    with pytest.warns(FutureWarning, match="images= is deprecated"):
        assert artifact_relevance(model, images=x, masks=mask, target=1) == new


def test_change_without_relevance_before_has_no_reduction():
    outside, mask = masked_linear(False)
    inside, _ = masked_linear(True)
    change = artifact_relevance_change(outside, inside, images(), mask)
    assert change["before"] == pytest.approx(0.0) and change["reduction"] is None
