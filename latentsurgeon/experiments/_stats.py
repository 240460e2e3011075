"""Summaries over seeds: the mean with a Student-t confidence interval, and the correlation and
entropy measures the experiments share."""

from __future__ import annotations

import numpy as np
from scipy import stats

from latentsurgeon._validation import check_finite
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError
from latentsurgeon.metrics.intervals import MeanInterval, mean_interval

__all__ = ["MeanInterval", "mean_interval", "off_diagonal_mean", "pearson_matrix",
           "spearman_matrix"]


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
