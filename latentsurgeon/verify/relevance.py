"""Relevance: the share of the shortcut class's input relevance that lies on the artifact, per
artifact-carrying image (:func:`latentsurgeon.metrics.artifact_relevance`, with the method named).

Relevance is an explanation of the gradient, not of the decision: a correction that changes
only how gradients pass (P-ClArC with ``gradient="straight_through"``) keeps the uncorrected
model's relevance while its decisions change, and a model whose input gradient is blocked on the
artifact shows none while still deciding on it. The certificate therefore judges relevance
beside the counterfactual tests, never instead of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from latentsurgeon.activations.batching import as_samples
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.metrics.relevance import RELEVANCE_METHODS, artifact_relevance

__all__ = ["RelevanceTest", "relevance_test"]


@dataclass(frozen=True)
class RelevanceTest:
    """Per-image artifact shares of :func:`relevance_test` over its ``n`` images.

    Attributes:
        target: the class whose logit is attributed.
        method: the attribution method (captum).
        shares: ``(n,)`` share in ``[0, 1]`` of ``|attribution|`` inside the mask.
        defined: ``(n,)`` 0/1, the image has a share (non-empty mask, non-zero attribution).
    """

    target: int
    method: str
    shares: np.ndarray
    defined: np.ndarray

    @property
    def n(self) -> int:
        return len(self.shares)

    def statistics(self) -> dict[str, Any]:
        """``{"share": weights (B, n) -> (B,)}``: the mean share over the images that have one."""
        def share(w: np.ndarray) -> np.ndarray:
            weights = w * self.defined
            with np.errstate(invalid="ignore", divide="ignore"):
                return (weights @ self.shares) / weights.sum(1)
        return {"share": share}


def relevance_test(model: nn.Module, data: Any, masks: Any = None, *, target: int,
                   method: str = "input_x_gradient", batch_size: int = 128,
                   head: str | int = "logits") -> RelevanceTest:
    """Artifact share of ``target``'s input relevance on every image of ``data``.

    Args:
        model: the classifier.
        data: artifact-carrying images (``decoy_digits(...).poisoned``: all classes, since the
            artifact pulls every image towards the shortcut class).
        masks: the artifact's masks; None takes ``data.masks``.
        target: the shortcut class (its logit is attributed on every image).
        method: one of ``latentsurgeon.metrics.RELEVANCE_METHODS``.

    Raises:
        InvalidParameterError: no image has a share (every mask empty or every attribution 0).
    """
    if method not in RELEVANCE_METHODS:
        raise InvalidParameterError(
            f"relevance_test: method must be one of {', '.join(RELEVANCE_METHODS)}; got "
            f"{method!r}.")
    samples = as_samples(data, what="data")
    masks = samples.masks if masks is None else masks
    if masks is None:
        raise InvalidParameterError("relevance_test: masks are needed (where the artifact "
                                    "sits); data carries none and none were given.")
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
        raise InvalidParameterError(
            f"relevance_test: target must be the shortcut class (an int); got {target!r}.")
    found = artifact_relevance(model, samples.images, masks, target=int(target), method=method,
                               batch_size=batch_size, head=head, per_sample=True)
    defined = found.defined.numpy().astype(np.float64)
    if not defined.any():
        raise InvalidParameterError(
            "relevance_test: no image has a share (every mask is empty or every attribution is "
            "zero); expected masks that mark the artifact.")
    return RelevanceTest(int(target), method, found.shares.double().numpy(), defined)


