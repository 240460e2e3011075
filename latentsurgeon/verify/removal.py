"""Counterfactual removal: take the artifact out of shortcut-class images that carry it and
measure how much the shortcut class's score falls.

The masked region is filled neutrally (:data:`~latentsurgeon.verify.artifact.FILLS`; by default
``"local_mean"``, an inpainting by the mean of the pixels around the region). Per image:

* ``drop``: ``p(c | x) - p(c | x without the artifact)``, a probability in ``[-1, 1]``;
* ``left``: the prediction was ``c`` and is no longer ``c`` after the removal.

A model that does not use the artifact keeps its score (``drop`` about 0); one that decides on it
loses it. The test has only the shortcut class's artifact-carrying images to work with, so its
intervals are wider than insertion's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from latentsurgeon.activations.batching import as_samples
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.metrics.intervals import weighted_mean
from latentsurgeon.verify._scores import check_target, log_probabilities
from latentsurgeon.verify.artifact import FILLS, remove

__all__ = ["RemovalTest", "counterfactual_removal"]


@dataclass(frozen=True)
class RemovalTest:
    """Per-image outcomes of :func:`counterfactual_removal` over its ``n`` images.

    Attributes:
        target: the shortcut class.
        indices: ``(n,)`` positions of the images used in the data.
        drop: ``(n,)`` fall of ``p(target | x)`` when the artifact is removed.
        left: ``(n,)`` 0/1, the prediction leaves ``target``.
    """

    target: int
    indices: np.ndarray
    drop: np.ndarray
    left: np.ndarray

    @property
    def n(self) -> int:
        return len(self.indices)

    def statistics(self) -> dict[str, Any]:
        """``{figure: weights (B, n) -> (B,)}``: ``score_drop``, ``left_rate``."""
        return {"score_drop": lambda w: weighted_mean(self.drop, w),
                "left_rate": lambda w: weighted_mean(self.left, w)}


def counterfactual_removal(model: nn.Module, data: Any, masks: Any = None, *, target: int,
                           fill: str = "local_mean", reference: Any = None,
                           batch_size: int = 256, head: str | int | None = "logits"
                           ) -> RemovalTest:
    """Remove the artifact from the images of class ``target`` in ``data`` that carry it.

    Args:
        model: the classifier.
        data: artifact-carrying images with labels (``decoy_digits(...).poisoned``), and
            optionally ``.artifact`` flags (only flagged images are used) and ``.masks``.
        masks: where the artifact sits, ``(N, H, W)``, ``(H, W)`` or the inputs' shape; None
            takes ``data.masks``.
        target: the shortcut class.
        fill: how the region is filled (``"local_mean"``, or ``"clean_mean"`` with
            ``reference``).
        reference: clean images for ``fill="clean_mean"``.
        batch_size, head: as for every model read.

    Raises:
        InvalidParameterError: no artifact-carrying image of class ``target``; no masks.
    """
    if fill not in FILLS:
        raise InvalidParameterError(
            f"counterfactual_removal: fill must be one of {', '.join(FILLS)}; got {fill!r}.")
    samples = as_samples(data, need_labels=True, what="data")
    masks = samples.masks if masks is None else masks
    if masks is None:
        raise InvalidParameterError("counterfactual_removal: masks are needed (where the "
                                    "artifact sits); data carries none and none were given.")
    images = samples.images.float()
    labels = samples.labels.reshape(-1).long()
    base = log_probabilities(model, images[:1], batch_size=batch_size, head=head)
    c = check_target(target, base.shape[1], "counterfactual_removal")
    chosen = labels == c
    if samples.artifact is not None:
        chosen &= samples.artifact.reshape(-1).bool()
    indices = torch.nonzero(chosen).reshape(-1)
    if len(indices) == 0:
        raise InvalidParameterError(
            f"counterfactual_removal: data holds no artifact-carrying image of class {c}; "
            "expected the shortcut class's images with the artifact.")
    mask_tensor = torch.as_tensor(masks)
    per_sample = mask_tensor.dim() == images.dim() or (images.dim() == 4
                                                        and mask_tensor.dim() == 3)
    if per_sample:  # one mask per image of data: keep those of the chosen images
        if mask_tensor.shape[0] != len(images):
            raise InvalidParameterError(
                f"counterfactual_removal: {mask_tensor.shape[0]} masks for {len(images)} "
                "images; expected one per image, or one mask for all.")
        mask_tensor = mask_tensor[indices]
    x = images[indices]
    ref = None if reference is None else as_samples(reference, what="reference").images.float()
    cleaned = remove(x, mask_tensor, fill=fill, reference=ref)
    before = log_probabilities(model, x, batch_size=batch_size, head=head)
    after = log_probabilities(model, cleaned, batch_size=batch_size, head=head)
    return RemovalTest(
        target=c, indices=indices.numpy(),
        drop=np.exp(before[:, c]) - np.exp(after[:, c]),
        left=((before.argmax(1) == c) & (after.argmax(1) != c)).astype(np.float64))
