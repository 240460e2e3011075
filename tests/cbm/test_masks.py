"""build_mask: pytorch_concepts' quantile rule (table-driven), the exact-k rule, selections."""

from __future__ import annotations

import math

import pytest
import torch

from latentsurgeon.cbm import build_mask, count_from_fraction, intervention_count
from latentsurgeon.errors import InvalidParameterError, NonFiniteError, ShapeMismatchError

# (K selected, quantile, concepts replaced) from k = max(1, min(K, 1 + floor(quantile * (K - 1))))
QUANTILE_TABLE = [
    (1, 0.0, 1), (1, 0.5, 1), (1, 1.0, 1),
    (2, 0.0, 1), (2, 0.49, 1), (2, 0.5, 1), (2, 0.99, 1), (2, 1.0, 2),
    (3, 0.0, 1), (3, 0.49, 1), (3, 0.5, 2), (3, 0.99, 2), (3, 1.0, 3),
    (4, 0.0, 1), (4, 0.33, 1), (4, 0.34, 2), (4, 0.5, 2), (4, 0.67, 3), (4, 1.0, 4),
    (5, 0.25, 2), (5, 0.5, 3), (5, 0.75, 4), (5, 0.8, 4), (5, 1.0, 5),
    (10, 0.0, 1), (10, 0.1, 1), (10, 0.12, 2), (10, 0.5, 5), (10, 0.9, 9), (10, 1.0, 10),
]


@pytest.mark.parametrize(("n", "quantile", "expected"), QUANTILE_TABLE)
def test_quantile_formula_table(n, quantile, expected):
    assert intervention_count(n, quantile) == expected
    # the mask replaces exactly that many when scores are distinct
    scores = torch.randperm(n, generator=torch.Generator().manual_seed(n)).float().unsqueeze(0)
    mask = build_mask(scores, quantile=quantile)
    assert int((mask == 0).sum()) == expected
    # ... and they are the lowest scores
    replaced = scores[mask == 0]
    kept = scores[mask == 1]
    assert kept.numel() == 0 or replaced.max() < kept.min()


def _reference_mask(scores, selected, quantile):
    """Per-sample loop over pytorch_concepts' rule (the vectorised code must agree)."""
    out = torch.ones_like(scores)
    idx = torch.nonzero(selected).flatten()
    k_sel = len(idx)
    k = max(1, min(k_sel, 1 + math.floor(quantile * (k_sel - 1))))
    for row in range(scores.shape[0]):
        sel = scores[row, idx]
        threshold = torch.kthvalue(sel, k).values
        for j, col in enumerate(idx.tolist()):
            if sel[j] <= threshold:
                out[row, col] = 0.0
    return out


@pytest.mark.parametrize("quantile", [0.0, 0.2, 0.5, 0.77, 1.0])
def test_vectorised_quantile_rule_matches_a_per_sample_reference(quantile):
    g = torch.Generator().manual_seed(3)
    # few distinct values, so ties at the threshold are common
    scores = torch.randint(0, 4, (50, 7), generator=g).float()
    selected = torch.tensor([True, False, True, True, False, True, True])
    got = build_mask(scores, selected, quantile)
    assert torch.equal(got, _reference_mask(scores, selected, quantile))
    assert bool((got[:, ~selected] == 1).all())  # unselected concepts are never replaced


def test_ties_at_the_threshold_are_replaced_and_uniform_scores_replace_everything():
    scores = torch.tensor([[0.0, 1.0, 1.0, 2.0]])
    # K=4, quantile 0.34 -> k=2; the 2nd smallest is 1.0 and both 1.0s are replaced
    assert build_mask(scores, quantile=0.34).tolist() == [[0.0, 0.0, 0.0, 1.0]]
    uniform = torch.zeros(3, 5)
    for quantile in (0.0, 0.5, 1.0):
        assert bool((build_mask(uniform, quantile=quantile) == 0).all())
    # quantile 0 still replaces one concept
    assert int((build_mask(torch.arange(5.0).unsqueeze(0), quantile=0.0) == 0).sum()) == 1


def test_exact_k_breaks_ties_by_concept_order():
    uniform = torch.zeros(2, 5)
    for k in range(6):
        mask = build_mask(uniform, k=k)
        assert mask[0].tolist() == [0.0] * k + [1.0] * (5 - k)
    scores = torch.tensor([[3.0, 1.0, 2.0, 1.0, 0.0]])
    assert build_mask(scores, k=2).tolist() == [[1.0, 0.0, 1.0, 1.0, 0.0]]
    assert build_mask(scores, k=3).tolist() == [[1.0, 0.0, 1.0, 0.0, 0.0]]
    # with a selection, k counts among the selected concepts only
    assert build_mask(scores, [0, 2, 3], k=2).tolist() == [[1.0, 1.0, 0.0, 0.0, 1.0]]


def test_masks_are_per_sample():
    scores = torch.tensor([[0.0, 5.0, 9.0], [9.0, 0.0, 5.0], [5.0, 9.0, 0.0]])
    assert build_mask(scores, k=1).tolist() == [[0, 1, 1], [1, 0, 1], [1, 1, 0]]


@pytest.mark.parametrize(("n", "fraction", "expected"),
                         [(2, 0.25, 1), (2, 0.2, 0), (4, 0.25, 1), (4, 0.5, 2), (3, 0.5, 2),
                          (18, 0.25, 5), (18, 0.5, 9), (7, 1.0, 7), (7, 0.0, 0)])
def test_fraction_rounds_half_up(n, fraction, expected):
    assert count_from_fraction(n, fraction) == expected
    mask = build_mask(torch.rand(4, n, generator=torch.Generator().manual_seed(0)),
                      fraction=fraction)
    assert bool(((mask == 0).sum(1) == expected).all())


def test_bad_arguments_are_clear_errors():
    scores = torch.zeros(2, 3)
    with pytest.raises(InvalidParameterError, match="quantile"):
        build_mask(scores, quantile=1.5)
    with pytest.raises(InvalidParameterError, match="not both"):
        build_mask(scores, k=1, fraction=0.5)
    with pytest.raises(InvalidParameterError, match=r"k must lie in \[0, 2\]"):
        build_mask(scores, [0, 1], k=3)
    with pytest.raises(InvalidParameterError, match="index"):
        build_mask(scores, [0, 3])
    with pytest.raises(InvalidParameterError, match="repeats"):
        build_mask(scores, [1, -2])
    with pytest.raises(InvalidParameterError, match="selects no concept"):
        build_mask(scores, torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ShapeMismatchError):
        build_mask(torch.zeros(3))
    with pytest.raises(NonFiniteError):
        build_mask(torch.tensor([[0.0, float("nan"), 1.0]]))
