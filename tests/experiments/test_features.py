"""Masks from importance scores, random rankings, and the runner's shared pieces."""

from __future__ import annotations

import pytest
import torch

from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError
from latentsurgeon.experiments._base import check_seeds, torch_threads, write_csv
from latentsurgeon.experiments._features import random_scores, top_feature_masks


def test_masks_zero_exactly_the_k_largest_positions_summed_over_channels():
    scores = torch.zeros(2, 2, 2, 3)
    scores[0, 0, 0, 2] = 5.0
    scores[0, 1, 0, 2] = -1.0   # |5| + |-1| = 6: the largest position of sample 0
    scores[0, 1, 1, 0] = -4.0   # second largest (the sign does not matter)
    scores[1, 0, 1, 1] = 2.0
    masks = top_feature_masks(scores, 2)
    assert masks.shape == (2, 1, 2, 3)
    zeros = [set(map(tuple, torch.nonzero(m[0] == 0).tolist())) for m in masks]
    assert zeros[0] == {(0, 2), (1, 0)}
    # sample 1: one clear maximum, then a tie among zeros broken by the lowest position
    assert zeros[1] == {(1, 1), (0, 0)}
    assert torch.equal(top_feature_masks(scores, 0), torch.ones(2, 1, 2, 3))
    assert top_feature_masks(scores, 6).sum() == 0


def test_mask_errors():
    with pytest.raises(InvalidParameterError, match="k must lie in"):
        top_feature_masks(torch.ones(1, 1, 2, 2), 5)
    with pytest.raises(ShapeMismatchError):
        top_feature_masks(torch.ones(3, 4), 1)


def test_random_scores_are_seeded():
    assert torch.equal(random_scores((3, 4), 7), random_scores((3, 4), 7))
    assert not torch.equal(random_scores((3, 4), 7), random_scores((3, 4), 8))


def test_check_seeds():
    assert check_seeds([2, 0]) == (2, 0)
    for bad in ([], [0, 0], [-1], [1.5], 3, "0 1", [True]):
        with pytest.raises(InvalidParameterError, match="seeds"):
            check_seeds(bad)


def test_torch_threads_restores_the_callers_setting_also_on_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_write_csv_refuses_nan(tmp_path):
    path = write_csv(tmp_path / "t.csv", [{"a": 1, "b": 0.5}, {"a": 2, "c": "x"}])
    assert path.read_text().splitlines() == ["a,b,c", "1,0.5,", "2,,x"]
    from latentsurgeon.errors import NonFiniteError

    with pytest.raises(NonFiniteError):
        write_csv(tmp_path / "u.csv", [{"a": float("nan")}])
