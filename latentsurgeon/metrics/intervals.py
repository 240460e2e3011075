"""Intervals around a figure: a percentile bootstrap over samples (every figure of a test set) and
the Student-t interval of a mean over seeds (every figure that depends on training).

A bootstrap statistic is written once, as a function of *sample weights*: ``statistic(weights)``
takes ``(B, n)`` multiplicities (how often each of the ``n`` samples is drawn in each of ``B``
resamples) and returns ``(B,)`` values. Row 0 is all ones: the figure on the data as they are.
So one matrix product evaluates every resample at once, and figures computed from the same
samples (a corrected model and its reference) are resampled together, pairs kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from latentsurgeon._validation import check_finite
from latentsurgeon.errors import InvalidParameterError, NonFiniteError

__all__ = ["Estimate", "MeanInterval", "bootstrap", "bootstrap_weights", "mean_interval",
           "weighted_mean"]

#: Resamples drawn by default; the Monte Carlo error of a 95 % percentile bound is then about
#: 0.01 of the interval's width (Efron and Tibshirani 1993, ch. 19).
N_BOOT = 1000


@dataclass(frozen=True)
class MeanInterval:
    """The mean of ``n`` values (one per seed) and the half-width of its two-sided ``confidence``
    Student-t interval, ``t_{(1+c)/2, n-1} * s / sqrt(n)`` (``s`` the sample standard deviation).
    ``half_width`` is None for a single value: one seed gives no interval."""

    mean: float
    half_width: float | None
    n: int
    confidence: float = 0.95

    @property
    def low(self) -> float:
        return self.mean - (self.half_width or 0.0)

    @property
    def high(self) -> float:
        return self.mean + (self.half_width or 0.0)

    def format(self, digits: int = 3) -> str:
        """``"0.123 +- 0.045"`` (``"0.123 (1 seed)"`` without an interval)."""
        if self.half_width is None:
            return f"{self.mean:.{digits}f} (1 seed)"
        return f"{self.mean:.{digits}f} +- {self.half_width:.{digits}f}"

    def __str__(self) -> str:
        return self.format()


def mean_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95
                  ) -> MeanInterval:
    """Mean and ``confidence`` t-interval of ``values`` (one per seed).

    Raises:
        InvalidParameterError: no values, or ``confidence`` outside ``(0, 1)``.
        NonFiniteError: a value is NaN or Inf.
    """
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise InvalidParameterError("mean_interval: values must hold at least one number; "
                                    "got none.")
    _check_confidence(confidence, "mean_interval")
    check_finite(array, "the values summarised over seeds")
    mean = float(array.mean())
    if array.size == 1:
        return MeanInterval(mean, None, 1, confidence)
    sem = float(array.std(ddof=1)) / math.sqrt(array.size)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, array.size - 1)) * sem
    return MeanInterval(mean, half, int(array.size), confidence)


@dataclass(frozen=True)
class Estimate:
    """A figure and its two-sided ``confidence`` interval ``[low, high]``.

    ``method`` says where the interval comes from: ``"bootstrap"`` (percentile bootstrap over the
    ``n`` test samples) or ``"seeds"`` (Student-t over ``n`` training seeds, each seed's figure
    itself a point estimate)."""

    value: float
    low: float
    high: float
    n: int
    confidence: float = 0.95
    method: str = "bootstrap"

    def format(self, digits: int = 3, *, percent: bool = False) -> str:
        """``"0.219 [0.181, 0.259]"`` (``"21.9% [18.1%, 25.9%]"`` with ``percent``)."""
        if percent:
            d = max(digits - 2, 0)
            return (f"{100 * self.value:.{d}f}% [{100 * self.low:.{d}f}%, "
                    f"{100 * self.high:.{d}f}%]")
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n,
                "confidence": self.confidence, "method": self.method}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Estimate:
        return cls(float(values["value"]), float(values["low"]), float(values["high"]),
                   int(values["n"]), float(values["confidence"]), str(values["method"]))

    @classmethod
    def over_seeds(cls, values: Sequence[float] | np.ndarray, confidence: float = 0.95
                   ) -> Estimate:
        """The mean of one figure over training seeds with its t-interval
        (:func:`mean_interval`; one seed gives a zero-width interval, reported as ``n=1``)."""
        summary = mean_interval(values, confidence)
        return cls(summary.mean, summary.low, summary.high, summary.n, confidence, "seeds")

    def __str__(self) -> str:
        return self.format()


def _check_confidence(confidence: Any, owner: str) -> None:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) \
            or not 0.0 < float(confidence) < 1.0:
        raise InvalidParameterError(
            f"{owner}: confidence must lie in (0, 1) (a number); got {confidence!r}.")


def bootstrap_weights(n: int, n_boot: int = N_BOOT, *, seed: int = 0) -> np.ndarray:
    """``(n_boot + 1, n)`` float64 multiplicities: row 0 all ones, then ``n_boot`` resamples of
    ``n`` samples drawn with replacement (multinomial counts), from a generator seeded with
    ``seed`` (so two calls with the same ``n`` and ``seed`` resample the same samples)."""
    for name, value, low in (("n", n, 1), ("n_boot", n_boot, 10)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise InvalidParameterError(
                f"bootstrap: {name} must be an int >= {low}; got {value!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidParameterError(f"bootstrap: seed must be an int >= 0; got {seed!r}.")
    rng = np.random.default_rng(int(seed))
    counts = rng.multinomial(int(n), np.full(int(n), 1.0 / int(n)), size=int(n_boot))
    return np.vstack([np.ones((1, int(n))), counts.astype(np.float64)])


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(B,)`` weighted means of ``values`` ``(n,)`` under each row of ``weights`` ``(B, n)``
    (NaN for a row whose weights are all zero on these samples)."""
    values = np.asarray(values, dtype=np.float64)
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ values) / total


def bootstrap(statistic: Callable[[np.ndarray], np.ndarray], n: int, *, n_boot: int = N_BOOT,
              confidence: float = 0.95, seed: int = 0,
              weights: np.ndarray | None = None) -> Estimate:
    """A figure and its percentile-bootstrap interval over ``n`` samples.

    Args:
        statistic: ``weights (B, n) -> (B,)``, the figure under each row of sample weights
            (e.g. ``lambda w: weighted_mean(flags, w)``).
        n: the number of samples.
        n_boot: resamples.
        confidence: level of the two-sided interval.
        seed: the resampling seed.
        weights: precomputed :func:`bootstrap_weights` (to resample several figures together).

    Returns:
        An :class:`Estimate` whose ``value`` is the statistic on the data as they are.

    Raises:
        NonFiniteError: the figure itself is NaN or Inf (e.g. a rate over no samples).
        InvalidParameterError: more than 10 % of the resamples give no finite value.
    """
    _check_confidence(confidence, "bootstrap")
    if weights is None:
        weights = bootstrap_weights(n, n_boot, seed=seed)
    elif weights.shape[1] != n:
        raise InvalidParameterError(
            f"bootstrap: weights must have {n} columns (one per sample); got {weights.shape}.")
    values = np.asarray(statistic(weights), dtype=np.float64).reshape(-1)
    if values.shape[0] != weights.shape[0]:
        raise InvalidParameterError(
            f"bootstrap: statistic must return one value per row of weights "
            f"({weights.shape[0]}); got {values.shape[0]}.")
    if not math.isfinite(values[0]):
        raise NonFiniteError(f"bootstrap: the figure itself is {values[0]} (no samples it "
                             "is defined on?).")
    replicates = values[1:]
    finite = np.isfinite(replicates)
    if finite.mean() < 0.9:
        raise InvalidParameterError(
            f"bootstrap: only {int(finite.sum())} of {len(replicates)} resamples give a finite "
            "figure (too few samples in a group?); expected at least 90 %.")
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(replicates[finite], [tail, 100.0 - tail])
    return Estimate(float(values[0]), float(low), float(high), int(n), float(confidence))
