"""prepare_masks: masks of the input's own shape for any rank, and the image forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentsurgeon.correct import prepare_masks
from latentsurgeon.errors import ShapeMismatchError


def test_image_forms_agree():
    images = torch.zeros(3, 2, 4, 4)
    region = torch.zeros(4, 4)
    region[1:3, 0] = 1
    forms = [region, region.numpy().astype(bool), region[None], region.expand(3, 4, 4),
             region.expand(3, 1, 4, 4), region.expand(1, 2, 4, 4), region.expand(3, 2, 4, 4)]
    full = region.expand(3, 2, 4, 4)
    for form in forms:
        out = prepare_masks(form, images)
        assert out.dim() == 4 and out.shape[0] == 3
        torch.testing.assert_close(torch.broadcast_to(out, images.shape), full)


def test_masks_are_resized_nearest():
    images = torch.zeros(2, 1, 8, 8)
    small = torch.zeros(4, 4)
    small[0, 0] = 1
    out = prepare_masks(small, images)
    assert out.shape == (2, 1, 8, 8)
    assert out[0, 0, :2, :2].eq(1).all() and out.sum() == 2 * 4
    with pytest.raises(ShapeMismatchError, match=r"\(8, 8\), \(1, 8, 8\), \(2, 8, 8\)"):
        prepare_masks(np.zeros((3, 8, 8)), images)


@pytest.mark.parametrize("shape", [(5, 7), (5, 3, 6), (5, 2, 3, 4, 2)])
def test_any_rank_takes_the_inputs_shape_or_the_per_sample_shape(shape):
    x = torch.zeros(shape)
    g = torch.Generator().manual_seed(0)
    full = (torch.rand(shape, generator=g) > 0.5).float()
    torch.testing.assert_close(prepare_masks(full, x), full)
    one = full[0]
    torch.testing.assert_close(prepare_masks(one, x), one.expand(shape))


def test_tabular_errors_name_the_caller_and_the_expected_shapes():
    x = torch.zeros(4, 6)
    with pytest.raises(ShapeMismatchError, match=r"artifact_relevance\(\): masks must have the "
                                                 r"inputs' shape \(4, 6\) or their per-sample "
                                                 r"shape \(6,\); got shape \(4, 5\)"):
        prepare_masks(torch.zeros(4, 5), x, name="masks", owner="artifact_relevance()")
    with pytest.raises(ShapeMismatchError, match="RRR"):
        prepare_masks(torch.zeros(3), x)
    with pytest.raises(ShapeMismatchError, match="at least one feature dimension"):
        prepare_masks(torch.zeros(4), torch.zeros(4))
