"""The one way the verify tests read a model: log-probabilities of every sample, batched, in eval
mode without gradients, through the one model-access layer (state restored, NaN refused)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from latentsurgeon._validation import check_finite
from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.activations.batching import index_batches
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.hooks import preserve_model_state


def log_probabilities(model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 256,
                      head: str | int | None = "logits") -> np.ndarray:
    """``(N, K)`` float64 log-softmax of the model's logits for ``inputs`` ``(N, ...)``."""
    access = ModelAccess(model, head=head)
    out = []
    with preserve_model_state(model), torch.no_grad():
        model.eval()
        for idx in index_batches(len(inputs), batch_size):
            logits = access.logits(inputs[idx])
            check_finite(logits, "the model's outputs")
            out.append(torch.log_softmax(logits.double(), dim=1).cpu())
    if not out:
        raise InvalidParameterError("verify: no samples to score.")
    return torch.cat(out).numpy()


def check_target(target: Any, n_classes: int, owner: str) -> int:
    """``target`` as a class index of a model with ``n_classes`` outputs."""
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)) \
            or not 0 <= int(target) < n_classes:
        raise InvalidParameterError(
            f"{owner}: target must be the shortcut class, an int in [0, {n_classes - 1}]; got "
            f"{target!r}.")
    return int(target)
