"""Summaries over seeds: the mean with a Student-t confidence interval, and the correlation and
entropy measures the experiments share."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from latentsurgeon._validation import check_finite
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError

__all__ = ["MeanInterval", "mean_interval", "off_diagonal_mean", "pearson_matrix",
           "spearman_matrix"]


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
    if not 0.0 < confidence < 1.0:
        raise InvalidParameterError(
            f"mean_interval: confidence must lie in (0, 1); got {confidence!r}.")
    check_finite(array, "the values summarised over seeds")
    mean = float(array.mean())
    if array.size == 1:
        return MeanInterval(mean, None, 1, confidence)
    sem = float(array.std(ddof=1)) / math.sqrt(array.size)
    half = float(stats.t.ppf(0.5 + confidence / 2.0, array.size - 1)) * sem
    return MeanInterval(mean, half, int(array.size), confidence)


def _checked_rows(rows: np.ndarray, what: str) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[0] < 2:
        raise InvalidParameterError(
            f"{what}: needs at least two rows (one per vector compared); got shape {rows.shape}.")
    check_finite(rows, what)
    flat = rows.std(axis=1) == 0
    if flat.any():
        raise LatentSurgeonError(
            f"{what}: rows {np.flatnonzero(flat).tolist()} are constant, so their correlation "
            "is undefined (an explanation that is the same everywhere, e.g. of a dead unit).")
    return rows


def pearson_matrix(rows: np.ndarray) -> np.ndarray:
    """``(m, m)`` Pearson correlations between the ``m`` rows of ``rows`` ``(m, L)``."""
    return np.corrcoef(_checked_rows(rows, "pearson_matrix"))


def spearman_matrix(rows: np.ndarray) -> np.ndarray:
    """``(m, m)`` Spearman rank correlations between the rows of ``rows`` ``(m, L)`` (the
    Pearson correlation of their ranks, ties averaged)."""
    ranks = stats.rankdata(_checked_rows(rows, "spearman_matrix"), axis=1)
    return np.corrcoef(ranks)


def off_diagonal_mean(matrix: np.ndarray) -> float:
    """Mean of the off-diagonal entries of a square matrix (lfxai's average correlation
    between different units)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    m = matrix.shape[0]
    if matrix.shape != (m, m) or m < 2:
        raise InvalidParameterError(
            f"off_diagonal_mean: needs a square matrix of side >= 2; got shape {matrix.shape}.")
    return float((matrix.sum() - np.trace(matrix)) / (m * (m - 1)))
