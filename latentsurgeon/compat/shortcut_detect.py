"""shortcut_detect's ``ExplanationRegularization`` (M05, RRR) on
:class:`latentsurgeon.correct.ExplanationRegularization`.

Replace ``from shortcut_detect.mitigation import ExplanationRegularization`` by
``from latentsurgeon.compat.shortcut_detect import ExplanationRegularization``. The defaults are
shortcut_detect's (``lr=1e-4``, ``n_epochs=10``, ``batch_size=8``, ``random_state=None``: fresh
randomness), the penalty is its ``sum(mask * (d log p(y|x) / dx)^2)`` over the batch, and masks of
another spatial size are resized bilinearly as it does. ``docs/compat.md`` lists the differences
(the model stays on its device and keeps its mode; BatchNorm statistics are frozen while
fine-tuning).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latentsurgeon.activations.batching import to_tensor
from latentsurgeon.correct import ExplanationRegularization as _RRR
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError

__all__ = ["ExplanationRegularization"]


def resize_masks(masks: Any, images: torch.Tensor) -> torch.Tensor:
    """shortcut_detect's mask handling: ``(H, W)`` or ``(1, H, W)`` serve every image,
    ``(N, H, W)`` one each; another spatial size is resized to the images' bilinearly
    (``align_corners=False``). Returns ``(N, H_in, W_in)`` float.

    Raises:
        ShapeMismatchError: images not ``(N, C, H, W)``, masks of another rank, or a number of
            masks other than 1 or N.
    """
    if images.dim() != 4:
        raise ShapeMismatchError(
            f"ExplanationRegularization.fit(): images must be (N, C, H, W); got shape "
            f"{tuple(images.shape)}.")
    n, _, h_in, w_in = images.shape
    m = to_tensor(masks, "shortcut_masks").detach().float().cpu()
    if m.dim() == 2:
        m = m[None]
    if m.dim() != 3:
        raise ShapeMismatchError(
            f"ExplanationRegularization.fit(): shortcut_masks must be (N, H, W) or (H, W); got "
            f"shape {tuple(m.shape)}.")
    if m.shape[0] == 1 and n > 1:
        m = m.expand(n, -1, -1)
    if m.shape[0] != n:
        raise ShapeMismatchError(
            f"ExplanationRegularization.fit(): shortcut_masks batch size {m.shape[0]} must "
            f"match images {n} (or be 1, or a single (H, W) mask).")
    if tuple(m.shape[1:]) != (h_in, w_in):
        m = F.interpolate(m[:, None], size=(h_in, w_in), mode="bilinear",
                          align_corners=False)[:, 0]
    return m


class ExplanationRegularization:
    """Right for the Right Reasons (Ross et al. 2017) with shortcut_detect's signature.

    Loss ``CE + lambda_rrr * sum(mask * (d log p(y|x) / dx)^2)`` (the true label's
    log-probability; the penalty summed over the batch and the masked elements), Adam.

    Args:
        lambda_rrr: weight of the gradient penalty.
        lr: Adam's learning rate.
        n_epochs: epochs.
        batch_size: samples per step.
        head: where the logits are in a tuple (index) or dict (key) output; ``"logits"`` takes a
            tuple's first element.
        device: where to train; None = where the model is (shortcut_detect: CUDA when present).
        random_state: seed of the batch order and of torch's RNG during ``fit``; None = fresh
            randomness.

    Attributes after ``fit``: ``_history`` (shortcut_detect's: one dict per epoch with ``epoch``,
    ``ce_loss``, ``penalty``, the means over the epoch's batches), ``correction_`` (the fitted
    :class:`latentsurgeon.correct.ExplanationRegularization`).
    """

    def __init__(self, lambda_rrr: float = 1.0, lr: float = 1e-4, n_epochs: int = 10,
                 batch_size: int = 8, head: str | int = "logits",
                 device: str | torch.device | None = None,
                 random_state: int | None = None) -> None:
        self.lambda_rrr = lambda_rrr
        self.lr = lr
        self.n_epochs = n_epochs
        self.batch_size = batch_size
        self.head = head
        self.device = device
        self.random_state = random_state
        self._history: list[dict[str, float]] = []
        self._correction()._validate_params()  # bad settings fail here, as shortcut_detect's casts

    def _correction(self) -> _RRR:
        return _RRR(lambda_rrr=self.lambda_rrr, lr=self.lr, epochs=self.n_epochs,
                    batch_size=self.batch_size, head=self.head, device=self.device,
                    seed=self.random_state, masking="true_label", normalize=False,
                    progress=False)

    def fit(self, model: nn.Module, images: torch.Tensor, labels: np.ndarray,
            shortcut_masks: np.ndarray) -> ExplanationRegularization:
        """Fine-tune ``model`` in place with the RRR penalty.

        Args:
            model: a differentiable classifier.
            images: ``(N, C, H, W)`` inputs.
            labels: ``(N,)`` integer class labels (numpy or tensor).
            shortcut_masks: 1 = shortcut region: ``(N, H, W)``, ``(1, H, W)`` or ``(H, W)``;
                resized bilinearly to ``(H, W)`` of the images when needed.

        Returns:
            self
        """
        if not isinstance(model, nn.Module):
            raise InvalidParameterError(
                f"ExplanationRegularization.fit(): model must be a torch.nn.Module; got "
                f"{type(model).__name__}.")
        x = to_tensor(images, "images")
        y = to_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels,
                      "labels").reshape(-1)
        if len(y) != len(x):
            raise ShapeMismatchError(
                f"ExplanationRegularization.fit(): labels length {len(y)} must match images "
                f"{len(x)}.")
        masks = resize_masks(shortcut_masks, x)
        correction = self._correction().fit(model, x.float(), y, masks)
        history = correction.history_
        self._history = [{"epoch": epoch + 1, "ce_loss": float(ce), "penalty": float(penalty)}
                         for epoch, (ce, penalty) in enumerate(
                             zip(history["ce"], history["penalty"], strict=True))]
        self.correction_ = correction
        return self
