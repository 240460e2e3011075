"""Accuracy on clean versus poisoned data: the numbers a shortcut correction is judged by."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from latentsurgeon._aliases import aliased
from latentsurgeon._validation import check_finite
from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.activations.batching import (
    as_samples,
    batch_inputs,
    iter_batches,
)
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError
from latentsurgeon.hooks import preserve_model_state

__all__ = ["accuracy", "class_accuracies", "gap_closed", "predict", "shortcut_gap",
           "worst_class_accuracy"]


@aliased(deprecated={"inputs": "data"})
def predict(model: nn.Module, data: Any, *, batch_size: int = 256,
            device: str | torch.device | None = None, head: str | int | None = "logits"
            ) -> torch.Tensor:
    """Argmax class of every input: ``(N, ...) -> (N,)`` int64 on CPU.

    ``data``: a tensor, or any data :func:`~latentsurgeon.activations.batching.iter_batches`
    reads (the model input is a batch's first element; ``inputs=`` is the deprecated
    spelling). The model runs in eval mode without gradients on its own device; its mode, hooks
    and flags are restored.
    """
    access = ModelAccess(model, head=head, device=device)
    preds = []
    with preserve_model_state(model), torch.no_grad():
        model.eval()
        for batch in iter_batches(getattr(data, "images", data), batch_size):
            logits = access.logits(batch_inputs(batch))
            check_finite(logits, "the model's outputs")
            preds.append(logits.argmax(dim=1).cpu())
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def _labelled(data: Any, what: str) -> tuple[Any, torch.Tensor]:
    """``(inputs, labels)`` without copying in-memory data."""
    if hasattr(data, "images") and isinstance(getattr(data, "labels", None), torch.Tensor):
        images, labels = data.images, data.labels
    elif isinstance(data, (tuple, list)) and len(data) >= 2:
        images, labels = data[0], torch.as_tensor(data[1])
    else:
        samples = as_samples(data, need_labels=True, what=what)
        assert samples.labels is not None
        images, labels = samples.images, samples.labels
    n = len(labels)
    if n == 0:
        raise InvalidParameterError(f"{what} holds no samples.")
    if len(images) != n:
        raise ShapeMismatchError(f"{what}: {len(images)} inputs but {n} labels.")
    return images, labels.reshape(-1).long()


def accuracy(model: nn.Module, data: Any, *, batch_size: int = 256,
             device: str | torch.device | None = None, head: str | int | None = "logits"
             ) -> float:
    """Share of samples whose argmax logit equals the label (the one accuracy function;
    ``latentsurgeon.models.evaluate_accuracy`` is the same).

    Args:
        model: classifier ``(N, ...) -> (N, K)`` logits (or a dict/tuple, see ``head``).
        data: a split with ``.images``/``.labels`` (``decoy_digits(...).test``), an
            ``(inputs, labels)`` tuple, a TensorDataset or a DataLoader.
        batch_size: samples per forward pass.
        device: None (the model's device); analysis calls never move the model, so another
            device raises :class:`~latentsurgeon.errors.DeviceMismatchError`.
        head: dict key or tuple index of the logits for models with structured outputs.

    Returns:
        Accuracy in ``[0, 1]``.
    """
    images, labels = _labelled(data, "data")
    preds = predict(model, images, batch_size=batch_size, device=device, head=head)
    return float((preds == labels).float().mean())


def class_accuracies(model: nn.Module, data: Any, **kwargs: Any) -> dict[int, float]:
    """Accuracy per class present in ``data``: ``{class: accuracy}`` (kwargs as :func:`accuracy`)."""
    images, labels = _labelled(data, "data")
    preds = predict(model, images, **kwargs)
    correct = (preds == labels).float()
    classes = torch.unique(labels)
    return {int(c): float(correct[labels == c].mean()) for c in classes}


def worst_class_accuracy(model: nn.Module, data: Any, **kwargs: Any) -> float:
    """The lowest per-class accuracy (:func:`class_accuracies`); kwargs as :func:`accuracy`."""
    return min(class_accuracies(model, data, **kwargs).values())


def shortcut_gap(model: nn.Module, clean: Any, poisoned: Any, **kwargs: Any) -> dict[str, float]:
    """Accuracy on clean data, on the same data carrying the artifact, and the difference.

    Args:
        model: the classifier.
        clean: clean test data (``decoy_digits(...).test``).
        poisoned: the artifact-carrying test data (``decoy_digits(...).poisoned``).
        **kwargs: ``batch_size``, ``device``, ``head`` as for :func:`accuracy`.

    Returns:
        ``{"clean_acc", "poisoned_acc", "gap"}`` with ``gap = clean_acc - poisoned_acc``.
    """
    clean_acc = accuracy(model, clean, **kwargs)
    poisoned_acc = accuracy(model, poisoned, **kwargs)
    return {"clean_acc": clean_acc, "poisoned_acc": poisoned_acc, "gap": clean_acc - poisoned_acc}


def gap_closed(before: Mapping[str, float], after: Mapping[str, float]) -> float:
    """Share of the uncorrected model's shortcut loss that a correction wins back.

    ``(after.poisoned_acc - before.poisoned_acc) / (before.clean_acc - before.poisoned_acc)``:
    1 means poisoned accuracy climbed to the uncorrected clean accuracy, 0 no change, negative a
    loss. It counts recovered poisoned accuracy, not a shrunken difference, so a correction that
    merely lowers clean accuracy does not score; report the clean cost
    (``before.clean_acc - after.clean_acc``) beside it.

    Args:
        before, after: :func:`shortcut_gap` results of the uncorrected and corrected model.

    Returns:
        The share (NaN when the uncorrected model has no gap).
    """
    for name, result in (("before", before), ("after", after)):
        missing = [k for k in ("clean_acc", "poisoned_acc") if k not in result]
        if missing:
            raise InvalidParameterError(
                f"gap_closed: {name} must be a shortcut_gap() result with clean_acc and "
                f"poisoned_acc; it lacks {', '.join(missing)}.")
        values = [result["clean_acc"], result["poisoned_acc"]]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise InvalidParameterError(
                f"gap_closed: {name} holds non-finite or non-numeric accuracies {values}.")
    gap = before["clean_acc"] - before["poisoned_acc"]
    if gap <= 0:
        return math.nan
    return (after["poisoned_acc"] - before["poisoned_acc"]) / gap
