"""The checks every explain entry point applies to its data, one rule each:

* :func:`check_samples` - data holding no samples (or on the ``meta`` device) is an error
  naming the argument (not a reshape, ``torch.cat`` or division error deep inside, nor an
  empty result).
* :func:`warn_all_zero` - a result that cannot be all zero for a working model warns, naming
  the likely cause, instead of passing for an answer.
* :func:`sample_shape` / :func:`shape_problem` - the shape of one sample, recorded when a method
  is fitted, so a test set of another shape is named as such instead of as a raw torch error.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from latentsurgeon.activations.batching import batch_inputs, count_samples, iter_batches
from latentsurgeon.activations.store import ActivationStore
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError

__all__ = ["check_samples", "describe", "sample_shape", "shape_problem", "warn_all_zero"]


def describe(data: Any) -> str:
    """``"a Tensor of shape (0, 5)"``, ``"a DataLoader"``: what a message says was given."""
    shape = getattr(data, "shape", None)
    kind = type(data).__name__
    return f"a {kind} of shape {tuple(shape)}" if shape is not None else f"a {kind}"


def _count(data: Any) -> int | None:
    if isinstance(data, ActivationStore):
        return data.n_samples
    if isinstance(data, np.ndarray):
        return len(data) if data.ndim else None
    try:
        return count_samples(data)
    except LatentSurgeonError:  # unreadable data: the reader says why, with its own message
        return None


def _memory_tensors(data: Any) -> list[torch.Tensor]:
    """The tensors of in-memory data (a tensor, a tuple or dict of them, a split)."""
    if isinstance(data, torch.Tensor):
        return [data]
    if isinstance(data, Mapping):
        return [v for v in data.values() if isinstance(v, torch.Tensor)]
    if isinstance(data, (tuple, list)):
        return [v for v in data if isinstance(v, torch.Tensor)]
    return [v for v in (getattr(data, "images", None), getattr(data, "labels", None))
            if isinstance(v, torch.Tensor)]


def no_samples(data: Any, argument: str, owner: str) -> InvalidParameterError:
    """The one error for data holding no samples (raised up front when the size is known, or by
    a reader that found none)."""
    return InvalidParameterError(
        f"{owner}: {argument} holds no samples (got {describe(data)}); it needs at least one "
        "sample.")


def check_samples(data: Any, argument: str, owner: str) -> None:
    """Raise :class:`InvalidParameterError` when ``data`` is known to hold no samples (data
    whose size cannot be known without reading it pass; their reader checks), or holds
    tensors on the ``meta`` device (shapes without values: torch would fail to copy them)."""
    if any(t.is_meta for t in _memory_tensors(data)):
        raise InvalidParameterError(
            f"{owner}: {argument} is on the 'meta' device (shapes without values), so nothing "
            "can be computed from it; pass tensors holding values (on the model's device).")
    if _count(data) == 0:
        raise no_samples(data, argument, owner)


def sample_shape(data: Any) -> tuple[int, ...] | None:
    """The shape of one sample's input (without the batch dimension), read from the first
    batch of in-memory data (a DataLoader over a TensorDataset counts); None when unknown (a
    store, a dict of tensors, other Datasets and loaders: peeking at them would run their
    workers and draw from the global RNG when they shuffle)."""
    if isinstance(data, ActivationStore):
        return None
    if isinstance(data, np.ndarray):
        return tuple(data.shape[1:]) if data.ndim else None
    if isinstance(data, DataLoader):
        dataset = data.dataset
        return (tuple(dataset.tensors[0].shape[1:]) if isinstance(dataset, TensorDataset)
                else None)
    if not isinstance(data, (torch.Tensor, tuple, list, TensorDataset)) and not hasattr(
            data, "images"):
        return None
    try:
        first = next(iter(iter_batches(data, 1)), None)
    except Exception:  # noqa: BLE001 - a peek must not replace the reader's own error
        return None
    inputs = batch_inputs(first)
    return tuple(inputs.shape[1:]) if isinstance(inputs, torch.Tensor) else None


def shape_problem(expected: tuple[int, ...] | None, data: Any, argument: str,
                  owner: str) -> str | None:
    """A sentence naming both shapes when ``data``'s samples are not shaped like ``expected``
    (the samples the method was fitted on), else None."""
    if expected is None:
        return None
    found = sample_shape(data)
    if found is None or found == expected:
        return None
    return (f"{owner}: {argument} holds samples of shape {found}, but it was fitted on samples "
            f"of shape {expected}; pass data shaped like the training data.")


def warn_all_zero(result: torch.Tensor, what: str, cause: str, *, stacklevel: int = 3) -> None:
    """Warn (``UserWarning``) when ``result`` is non-empty and all zero: ``what`` (the result,
    for the message) rests on nothing, and ``cause`` says why that usually happens."""
    if result.numel() and not bool(result.any()):
        warnings.warn(f"{what} are all zero: {cause}", UserWarning, stacklevel=stacklevel)
