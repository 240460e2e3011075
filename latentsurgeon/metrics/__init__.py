"""Verification metrics: clean vs poisoned accuracy, worst-class accuracy, artifact relevance."""

from latentsurgeon.metrics.accuracy import (
    accuracy,
    class_accuracies,
    gap_closed,
    predict,
    shortcut_gap,
    worst_class_accuracy,
)
from latentsurgeon.metrics.relevance import (
    RELEVANCE_METHODS,
    RelevanceShares,
    artifact_relevance,
    artifact_relevance_change,
)

__all__ = [
    "RELEVANCE_METHODS",
    "RelevanceShares",
    "accuracy",
    "artifact_relevance",
    "artifact_relevance_change",
    "class_accuracies",
    "gap_closed",
    "predict",
    "shortcut_gap",
    "worst_class_accuracy",
]
