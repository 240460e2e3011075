"""Representations an example explainer compares: a layer's output per sample, as ``(N, D)``.

They come from a model run over data (``model`` given), from an
:class:`~latentsurgeon.activations.ActivationStore` (one of its layers), or are given directly
(a tensor or array ``(N, ...)``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from latentsurgeon._aliases import moved
from latentsurgeon._validation import check_finite
from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.activations.batching import (
    batch_inputs,
    check_batch_size,
    iter_batches,
    n_batches,
)
from latentsurgeon.activations.store import ActivationStore
from latentsurgeon.errors import LatentSurgeonError, ShapeMismatchError
from latentsurgeon.explain._checks import no_samples
from latentsurgeon.hooks import preserve_model_state

__all__ = ["representations", "store_layer"]

logger = logging.getLogger(__name__)


def store_layer(store: ActivationStore, layer: str | None) -> str:
    """The store layer to read: ``layer``, or the store's only layer."""
    if layer is not None:
        if layer not in store.layers:
            raise LatentSurgeonError(
                f"The store at {store.path} holds no layer {layer!r}; it holds {store.layers}.")
        return layer
    if len(store.layers) != 1:
        raise LatentSurgeonError(
            f"The store at {store.path} holds {len(store.layers)} layers ({store.layers}); pass "
            "layer=... to choose one.")
    return store.layers[0]


def block_representations(block: Any, model: nn.Module | None, layer: str | None, *,
                          batch_size: int, device: str | torch.device | None,
                          progress: bool) -> torch.Tensor:
    """:func:`representations` of a rank's block (:class:`latentsurgeon.explain._base.Block`):
    a store's rows ``[start, end)``, or the representations of the block's data."""
    if isinstance(block.data, ActivationStore):
        store = block.data
        if model is not None:
            store.check_model(model)
        reps = store.tensor(store_layer(store, layer), slice(block.start, block.end))
        return representations(None, None, reps)
    return representations(model, layer, block.data, batch_size=batch_size, device=device,
                           progress=progress)


@moved(("data", "model", "layer"), is_old=lambda args: bool(args) and args[0] is not None
       and not isinstance(args[0], nn.Module), defaults={"model": None, "layer": None})
def representations(
    model: nn.Module | None,
    layer: str | None,
    data: Any,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Per-sample representations ``(N, D)`` (each sample's representation flattened).

    The order is the library's (model, layer, data; ``representations(None, None, reps)``
    for representations given as they are); the earlier ``(data, model, layer)`` still works,
    with a ``FutureWarning``.

    Args:
        model: the network whose ``layer`` (or output, when ``layer`` is None) represents a
            sample, or None when ``data`` are the representations. Run in eval mode without
            gradients; the forward pass stops after ``layer``.
        layer: one exact layer name (of the model, or of the store).
        data: with ``model``: inputs (a tensor, a tuple ``(inputs, labels, ...)``, a split, a
            Dataset or a DataLoader; see :func:`~latentsurgeon.activations.batching.iter_batches`).
            Without ``model``: the representations themselves, a tensor or array ``(N, ...)``,
            or an :class:`ActivationStore` (its layer ``layer``, or its only layer).
        batch_size: samples per forward pass.
        device: None or the model's device (an analysis never moves the model).
        progress: a tqdm bar over batches.

    Returns:
        A CPU tensor ``(N, D)`` in the model's (or the data's) floating dtype.

    Raises:
        NonFiniteError: a representation holds NaN or Inf.
    """
    check_batch_size(batch_size)
    if isinstance(data, ActivationStore):
        if model is not None:
            data.check_model(model)
        reps = data.tensor(store_layer(data, layer))
    elif model is None:
        if not isinstance(data, (torch.Tensor, np.ndarray)):
            raise LatentSurgeonError(
                f"Without a model the data must be representations (a tensor, an array or an "
                f"ActivationStore); got {type(data).__name__}. Pass model= to compute them.")
        reps = torch.as_tensor(data)
    else:
        access = ModelAccess(model, head=None, device=device)
        name = None if layer is None else access.layer(layer)
        parts = []
        with preserve_model_state(model), torch.no_grad():
            model.eval()
            for batch in tqdm(iter_batches(data, batch_size), total=n_batches(data, batch_size),
                              desc="representations", unit="batch", leave=False,
                              disable=None if progress else True):
                out = access.forward_to(batch_inputs(batch), name)
                parts.append(out.detach().reshape(out.shape[0], -1).to("cpu", copy=True))
        if not parts:
            raise no_samples(data, "data", "representations()")
        reps = torch.cat(parts)
    if reps.dim() == 0:
        raise ShapeMismatchError("Representations must be (N, ...); got a scalar.")
    if reps.shape[0] == 0:
        raise no_samples(data, "data", "representations()")
    if not reps.is_floating_point():
        reps = reps.float()
    reps = reps.reshape(reps.shape[0], -1)
    return check_finite(reps, "the representations")
