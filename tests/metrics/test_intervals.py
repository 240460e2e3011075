"""The bootstrap and the t-interval: values on the data as they are, paired resampling, and
intervals that cover the true value at their nominal rate (a simulation)."""

from __future__ import annotations

import numpy as np
import pytest

from latentsurgeon.errors import InvalidParameterError, NonFiniteError
from latentsurgeon.metrics import Estimate, bootstrap, bootstrap_weights, weighted_mean


def test_row_zero_is_the_data_and_resamples_keep_the_sample_count():
    weights = bootstrap_weights(50, 200, seed=3)
    assert weights.shape == (201, 50)
    assert np.all(weights[0] == 1)
    assert np.all(weights[1:].sum(1) == 50)
    assert np.array_equal(weights, bootstrap_weights(50, 200, seed=3))
    assert not np.array_equal(weights, bootstrap_weights(50, 200, seed=4))


def test_the_figure_is_the_plain_mean_and_the_interval_surrounds_it():
    values = np.arange(20, dtype=float)
    found = bootstrap(lambda w: weighted_mean(values, w), 20, n_boot=500)
    assert found.value == pytest.approx(9.5)
    assert found.low < 9.5 < found.high
    # the bootstrap standard error of a mean is s / sqrt(n) * sqrt((n-1)/n): a 95 % interval
    # spans about 2 * 1.96 of it
    se = values.std(ddof=0) / np.sqrt(20)
    assert found.high - found.low == pytest.approx(2 * 1.96 * se, rel=0.2)


@pytest.mark.parametrize("p, n", [(0.3, 120), (0.05, 400)])
def test_intervals_cover_the_true_rate_at_their_nominal_level(p, n):
    """500 simulated test sets of Bernoulli(p) outcomes: the 95 % percentile interval of the
    rate covers p in 91 to 98 % of them (the percentile bootstrap of a proportion slightly
    under-covers at small n; 500 runs give a Monte Carlo error of about 1 %)."""
    rng = np.random.default_rng(0)
    covered = 0
    runs = 500
    for run in range(runs):
        outcomes = (rng.random(n) < p).astype(float)
        found = bootstrap(lambda w, o=outcomes: weighted_mean(o, w), n, n_boot=400, seed=run)
        covered += found.low <= p <= found.high
    assert 0.91 <= covered / runs <= 0.98


def test_paired_resampling_narrows_a_difference_of_correlated_figures():
    rng = np.random.default_rng(1)
    a = rng.normal(size=200)
    b = a + rng.normal(scale=0.1, size=200)
    weights = bootstrap_weights(200, 400, seed=0)
    paired = bootstrap(lambda w: weighted_mean(b, w) - weighted_mean(a, w), 200, weights=weights)
    other = bootstrap_weights(200, 400, seed=9)
    unpaired = bootstrap(lambda w: weighted_mean(b, w) - weighted_mean(a, other[: len(w)]), 200,
                         weights=weights)
    assert paired.high - paired.low < 0.3 * (unpaired.high - unpaired.low)


def test_over_seeds_is_the_t_interval():
    found = Estimate.over_seeds([1.0, 2.0, 3.0])
    assert found.value == 2.0 and found.method == "seeds" and found.n == 3
    assert found.high - 2.0 == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)
    assert Estimate.from_dict(found.to_dict()) == found


def test_a_figure_that_is_nan_is_an_error_not_a_result():
    with pytest.raises(NonFiniteError, match="figure itself"):
        bootstrap(lambda w: weighted_mean(np.zeros(5), w * 0), 5)


def test_bad_arguments_name_themselves():
    with pytest.raises(InvalidParameterError, match="n_boot"):
        bootstrap_weights(5, 3)
    with pytest.raises(InvalidParameterError, match="confidence"):
        bootstrap(lambda w: w.sum(1), 5, confidence=1.5)
    with pytest.raises(InvalidParameterError, match="one value per row"):
        bootstrap(lambda w: np.zeros(3), 5)
