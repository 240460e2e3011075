"""Verification metrics: clean vs poisoned accuracy, worst-class accuracy, artifact relevance, and
the intervals around a figure (bootstrap over samples, t over seeds)."""

from latentsurgeon.metrics.accuracy import (
    accuracy,
    class_accuracies,
    gap_closed,
    predict,
    shortcut_gap,
    worst_class_accuracy,
)
from latentsurgeon.metrics.intervals import (
    Estimate,
    MeanInterval,
    bootstrap,
    bootstrap_weights,
    mean_interval,
    weighted_mean,
)
from latentsurgeon.metrics.relevance import (
    RELEVANCE_METHODS,
    RelevanceShares,
    artifact_relevance,
    artifact_relevance_change,
)

__all__ = [
    "RELEVANCE_METHODS",
    "Estimate",
    "MeanInterval",
    "RelevanceShares",
    "bootstrap",
    "bootstrap_weights",
    "mean_interval",
    "weighted_mean",
    "accuracy",
    "artifact_relevance",
    "artifact_relevance_change",
    "class_accuracies",
    "gap_closed",
    "predict",
    "shortcut_gap",
    "worst_class_accuracy",
]
