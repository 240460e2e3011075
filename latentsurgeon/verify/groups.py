"""Accuracy by group: clean and artifact-carrying test images pooled, grouped by (class, artifact).

Figures (each a function of sample weights, so the certificate bootstraps them):

* ``clean_acc``, ``poisoned_acc``: accuracy without and with the artifact;
* ``worst_group_acc``: the lowest accuracy over the (class x artifact) groups;
* ``balanced_acc``: the mean recall over classes, on the pooled images;
* with the artifact as the protected attribute ``a`` and "predicted the shortcut class ``c``" as
  the decision (as detoxai's group metrics for a binary decision): ``dp_difference``
  ``|P(y^ = c | a=1) - P(y^ = c | a=0)|`` (demographic parity) and ``eo_difference``
  ``max(|TPR_1 - TPR_0|, |FPR_1 - FPR_0|)`` with TPR/FPR of that decision on images of class ``c``
  and of the other classes (equalised odds).

Accuracy on artifact-carrying images mixes two effects, reliance on the artifact and the damage
the artifact does by covering part of the image (a model trained without it loses some points
too), so these figures are reported, not judged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from latentsurgeon.activations.batching import as_samples
from latentsurgeon.verify._scores import check_target, log_probabilities

__all__ = ["GroupTest", "group_metrics"]


def _rate(w: np.ndarray, where: np.ndarray, values: np.ndarray) -> np.ndarray:
    weights = w * where
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ values) / weights.sum(1)


@dataclass(frozen=True)
class GroupTest:
    """Per-image outcomes over the pooled clean (``artifact`` 0) and carrying (1) images.

    Attributes:
        target: the shortcut class.
        labels, predictions: ``(n,)`` class labels and argmax predictions.
        artifact: ``(n,)`` 0/1.
    """

    target: int
    labels: np.ndarray
    predictions: np.ndarray
    artifact: np.ndarray

    @property
    def n(self) -> int:
        return len(self.labels)

    def statistics(self) -> dict[str, Any]:
        y, a, c = self.labels, self.artifact.astype(bool), self.target
        correct = (self.predictions == y).astype(np.float64)
        decided = (self.predictions == c).astype(np.float64)
        groups = [(k, flag) for k in np.unique(y) for flag in (False, True)
                  if np.any((y == k) & (a == flag))]

        def worst(w: np.ndarray) -> np.ndarray:
            rates = np.stack([_rate(w, (y == k) & (a == flag), correct) for k, flag in groups], 1)
            with np.errstate(invalid="ignore"):
                return np.nanmin(np.where(np.isnan(rates), np.inf, rates), axis=1)

        def balanced(w: np.ndarray) -> np.ndarray:
            return np.nanmean(np.stack([_rate(w, y == k, correct) for k in np.unique(y)], 1), 1)

        def dp(w: np.ndarray) -> np.ndarray:
            return np.abs(_rate(w, a, decided) - _rate(w, ~a, decided))

        def eo(w: np.ndarray) -> np.ndarray:
            tpr = np.abs(_rate(w, a & (y == c), decided) - _rate(w, ~a & (y == c), decided))
            fpr = np.abs(_rate(w, a & (y != c), decided) - _rate(w, ~a & (y != c), decided))
            return np.maximum(tpr, fpr)

        return {"clean_acc": lambda w: _rate(w, ~a, correct),
                "poisoned_acc": lambda w: _rate(w, a, correct),
                "worst_group_acc": worst, "balanced_acc": balanced,
                "dp_difference": dp, "eo_difference": eo}


def group_metrics(model: nn.Module, clean: Any, poisoned: Any, *, target: int,
                  batch_size: int = 256, head: str | int | None = "logits") -> GroupTest:
    """Predictions on ``clean`` and ``poisoned`` (artifact-carrying) labelled images, pooled.

    Args:
        model: the classifier.
        clean: clean test images with labels (``decoy_digits(...).test``).
        poisoned: the artifact-carrying images with labels (``decoy_digits(...).poisoned``);
            images flagged ``artifact=0`` there count as clean.
        target: the shortcut class.
    """
    parts = []
    for role, data in (("clean", clean), ("poisoned", poisoned)):
        samples = as_samples(data, need_labels=True, what=role)
        flags = torch.full((len(samples.labels),), role == "poisoned")
        if role == "poisoned" and samples.artifact is not None:
            flags = samples.artifact.reshape(-1).bool()
        parts.append((samples.images.float(), samples.labels.reshape(-1).long(), flags))
    scores = [log_probabilities(model, x, batch_size=batch_size, head=head) for x, _, _ in parts]
    c = check_target(target, scores[0].shape[1], "group_metrics")
    return GroupTest(
        target=c, labels=torch.cat([p[1] for p in parts]).numpy(),
        predictions=np.concatenate([s.argmax(1) for s in scores]),
        artifact=torch.cat([p[2] for p in parts]).numpy().astype(np.float64))
