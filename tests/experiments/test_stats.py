"""Summaries over seeds and correlation measures, against scipy's independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, NonFiniteError
from latentsurgeon.experiments import mean_interval
from latentsurgeon.experiments._stats import off_diagonal_mean, pearson_matrix, spearman_matrix


@pytest.mark.parametrize("values", [[0.2, 0.4, 0.9], [1.0, 1.5], [3.0, 2.0, 2.5, 4.0, 1.0]])
def test_mean_interval_is_scipys_t_interval(values):
    interval = mean_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values),
                                 scale=stats.sem(values))
    assert interval.mean == pytest.approx(np.mean(values))
    assert interval.low == pytest.approx(low)
    assert interval.high == pytest.approx(high)
    assert interval.n == len(values)


def test_mean_interval_of_three_seeds_uses_t_with_two_degrees_of_freedom():
    interval = mean_interval([1.0, 2.0, 3.0])  # sd 1, sem 1/sqrt(3)
    assert interval.half_width == pytest.approx(4.302652729911275 / math.sqrt(3))
    assert interval.format(2) == "2.00 +- 2.48"


def test_one_value_has_no_interval():
    interval = mean_interval([0.5])
    assert interval.half_width is None and interval.low == interval.high == 0.5
    assert str(interval) == "0.500 (1 seed)"


def test_bad_inputs():
    with pytest.raises(InvalidParameterError, match="at least one"):
        mean_interval([])
    with pytest.raises(NonFiniteError):
        mean_interval([1.0, float("nan")])
    with pytest.raises(InvalidParameterError, match="confidence"):
        mean_interval([1.0, 2.0], confidence=1.0)


def test_correlation_matrices_match_scipy():
    rows = np.random.default_rng(0).normal(size=(4, 50))
    rows[1] += rows[0]  # a correlated pair
    pearson = pearson_matrix(rows)
    spearman = spearman_matrix(rows)
    for a in range(4):
        for b in range(4):
            assert pearson[a, b] == pytest.approx(stats.pearsonr(rows[a], rows[b])[0])
            assert spearman[a, b] == pytest.approx(stats.spearmanr(rows[a], rows[b])[0])
    assert pearson[0, 1] > 0.5


def test_off_diagonal_mean_and_constant_rows():
    matrix = np.array([[1.0, 0.2, 0.4], [0.2, 1.0, 0.6], [0.4, 0.6, 1.0]])
    assert off_diagonal_mean(matrix) == pytest.approx(0.4)
    with pytest.raises(LatentSurgeonError, match="constant"):
        pearson_matrix(np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]))
    with pytest.raises(InvalidParameterError):
        off_diagonal_mean(np.ones((1, 1)))
