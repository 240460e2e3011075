"""TCAV's scores and significance tests.

Scores over the class inputs ``X_k`` (Kim et al. 2018, section 3.3 and their code):

* sign count: ``|{x : S_v(x) > 0}| / |X_k|``;
* magnitude: ``sum_x max(S_v(x), 0) / sum_x |S_v(x)|``, a ratio in ``[0, 1]`` (captum's
  ``"magnitude"`` is the *mean* of ``S_v`` instead, an unbounded number; we report that mean
  as ``mean_derivative``).

Two significance tests (``test=``):

* ``"ttest"`` (Kim et al. 2018): two-sided ``scipy.stats.ttest_ind`` (equal variances) of the
  concept's per-run sign counts against the null's. The concept's runs all share the *same*
  concept examples, so they are not independent replicates of "a concept": a random set of
  images used as the concept is flagged significant far more often than the significance level
  (on the decoy digits CNN, 25-40% of random concepts at 0.05), and a planted watermark's
  p-value swings between 1e-5 and 0.09 with the seed of the random draws.
* ``"set"``: treats the concept set as the unit of replication. The concept's mean over runs of
  ``mean_derivative`` is compared with the spread of single null runs (a t prediction interval:
  ``t = (m - mean(null)) / (sd(null) * sqrt(1 + 1/M))``, ``M - 1`` degrees of freedom). Under the
  null the concept's mean varies at most as much as a single run, so the test is valid
  (conservative): about 1-2% of random concepts are flagged on the same model at 0.05, while a
  planted watermark is still found with flatten pooling. It uses the mean derivative because the
  sign count saturates at 0 or 1 and then cannot separate a concept from a random direction.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy import stats

__all__ = ["TESTS", "set_test", "tcav_scores", "ttest"]

TESTS = ("ttest", "set")


def tcav_scores(derivatives: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Sign-count and magnitude scores of ``derivatives (R, N)`` -> two ``(R,)`` arrays.

    Magnitude is ``sum(max(S, 0)) / sum(|S|)`` (0 where every derivative is 0).
    """
    d = derivatives.double()
    sign = (d > 0).double().mean(1)
    total = d.abs().sum(1)
    magnitude = torch.where(total > 0, d.clamp(min=0).sum(1) / total.clamp(min=1e-300),
                            torch.zeros_like(total))
    return sign.numpy(), magnitude.numpy()


def ttest(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided equal-variance t-test (Kim et al.); NaN with fewer than 2 values per side."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # scipy returns NaN for two constant samples
        return 1.0 if a[0] == b[0] else 0.0
    with warnings.catch_warnings():
        # Sign counts are often all 0 or all 1 on one side; scipy warns about precision then.
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a, b).pvalue)


def set_test(runs: np.ndarray, null: np.ndarray) -> float:
    """Prediction-interval t-test of ``mean(runs)`` against single null runs (module doc)."""
    if len(runs) < 1 or len(null) < 2:
        return math.nan
    m = float(np.mean(runs))
    sd = float(np.std(null, ddof=1))
    if sd == 0:
        return 1.0 if m == float(null[0]) else 0.0
    t = (m - float(np.mean(null))) / (sd * math.sqrt(1.0 + 1.0 / len(null)))
    return float(2.0 * stats.t.sf(abs(t), len(null) - 1))
