"""Counterfactual insertion: paste the artifact into clean images of every other class and count
how many the model then assigns to the shortcut class.

Each eligible image (true class other than the shortcut class ``c``) is scored three times: as it
is, with the artifact pasted, and with the artifact's region filled neutrally (the *control*: the
same pixels changed, without the artifact). Per image:

* ``flipped``: the prediction was not ``c`` and becomes ``c`` with the artifact;
* ``control_flipped``: the same with the neutral fill;
* ``shift``: the change of ``log p(c | x)`` when the artifact is pasted (``control_shift`` for the
  fill).

The headline figure is the **excess flip rate** ``mean(flipped) - mean(control_flipped)``: the
share of other-class images the artifact itself sends to ``c``, beyond what occluding that region
does. A model that does not use the artifact gives about 0 whatever the artifact looks like.
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
from latentsurgeon.verify.artifact import FILLS, Artifact, remove

__all__ = ["InsertionTest", "counterfactual_insertion"]


@dataclass(frozen=True)
class InsertionTest:
    """Per-image outcomes of :func:`counterfactual_insertion` over its ``n`` eligible images.

    Attributes:
        target: the shortcut class.
        indices: ``(n,)`` positions of the eligible images in the data.
        flipped, control_flipped: ``(n,)`` 0/1, see the module docstring.
        shift, control_shift: ``(n,)`` changes of ``log p(target | x)``.
    """

    target: int
    indices: np.ndarray
    flipped: np.ndarray
    control_flipped: np.ndarray
    shift: np.ndarray
    control_shift: np.ndarray

    @property
    def n(self) -> int:
        return len(self.indices)

    def statistics(self) -> dict[str, Any]:
        """``{figure: weights (B, n) -> (B,)}``: ``flip_rate`` (excess over the control),
        ``raw_flip_rate``, ``control_flip_rate``, ``log_prob_shift`` (excess)."""
        return {
            "flip_rate": lambda w: weighted_mean(self.flipped - self.control_flipped, w),
            "raw_flip_rate": lambda w: weighted_mean(self.flipped, w),
            "control_flip_rate": lambda w: weighted_mean(self.control_flipped, w),
            "log_prob_shift": lambda w: weighted_mean(self.shift - self.control_shift, w),
        }


def counterfactual_insertion(model: nn.Module, data: Any, artifact: Artifact, *, target: int,
                             fill: str = "local_mean", batch_size: int = 256,
                             head: str | int | None = "logits") -> InsertionTest:
    """Paste ``artifact`` into every clean image of ``data`` whose class is not ``target``.

    Args:
        model: the classifier ``(N, ...) -> (N, K)``.
        data: clean images with labels (a split with ``.images``/``.labels``, a tuple, a
            Dataset or a DataLoader).
        artifact: what to paste (:class:`~latentsurgeon.verify.artifact.Artifact`).
        target: the shortcut class.
        fill: the control's neutral fill of the artifact's region (``"local_mean"`` or
            ``"clean_mean"``: the mean of ``data``'s images there).
        batch_size: samples per forward pass.
        head: where the logits are in a structured output.

    Returns:
        An :class:`InsertionTest` (its figures: :meth:`InsertionTest.statistics`).

    Raises:
        InvalidParameterError: no image of another class, a bad ``target`` or ``fill``.
    """
    if not isinstance(artifact, Artifact):
        raise InvalidParameterError(
            f"counterfactual_insertion: artifact must be an Artifact; got "
            f"{type(artifact).__name__}.")
    if fill not in FILLS:
        raise InvalidParameterError(
            f"counterfactual_insertion: fill must be one of {', '.join(FILLS)}; got {fill!r}.")
    samples = as_samples(data, need_labels=True, what="data")
    images = samples.images.float()
    labels = samples.labels.reshape(-1).long()
    base = log_probabilities(model, images[:1], batch_size=batch_size, head=head)
    c = check_target(target, base.shape[1], "counterfactual_insertion")
    eligible = torch.nonzero(labels != c).reshape(-1)
    if len(eligible) == 0:
        raise InvalidParameterError(
            f"counterfactual_insertion: data holds no image of a class other than {c}; "
            "expected clean images of the other classes.")
    x = images[eligible]
    pasted = artifact.paste(x)
    control = remove(x, artifact.masks_for(x), fill=fill, reference=images)
    scores = [log_probabilities(model, v, batch_size=batch_size, head=head)
              for v in (x, pasted, control)]
    before, after, neutral = (s.argmax(1) for s in scores)
    was_other = before != c
    return InsertionTest(
        target=c, indices=eligible.numpy(),
        flipped=(was_other & (after == c)).astype(np.float64),
        control_flipped=(was_other & (neutral == c)).astype(np.float64),
        shift=scores[1][:, c] - scores[0][:, c],
        control_shift=scores[2][:, c] - scores[0][:, c])
