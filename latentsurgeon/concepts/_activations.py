"""The one activation pass of the concepts package: example sets -> pooled vectors at a layer.

Every forward-only read of a layer's activations in :mod:`latentsurgeon.concepts` (TCAV's concept
and random sets) goes through :func:`_layer_activations`, so that how the forward pass runs
(e.g. stopping it once the layer has produced its output) is decided in one place.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from latentsurgeon._validation import check_finite
from latentsurgeon.activations.batching import (
    DataLike,
    attention_mask_of,
    batch_inputs,
    iter_batches,
)
from latentsurgeon.activations.pooling import pool
from latentsurgeon.activations.read import LayerReader
from latentsurgeon.errors import LatentSurgeonError, ShapeMismatchError


def finite(value: Any, what: str) -> Any:
    """:func:`~latentsurgeon._validation.check_finite` with a fast path: a tensor whose sum is
    finite holds no NaN or Inf (both propagate through a sum), so the elementwise check (a
    boolean copy of the tensor) runs only when the sum is not finite, to raise or to clear an
    overflow of large finite values."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        if bool(torch.isfinite(value.sum())):
            return value
    return check_finite(value, what)


def _layer_activations(model: nn.Module, layer: str, data: DataLike, pooling: str,
                       batch_size: int, device: torch.device, bar: Any = None, *,
                       what: str = "inputs", out: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pooled activations of ``layer`` for every sample of ``data``, in order.

    The model runs in eval mode without gradients, and each forward pass stops once ``layer`` has
    produced its output (:class:`~latentsurgeon.activations.read.LayerReader`: the values are
    those of a whole pass; a later in-place operation of the model cannot change them); its mode
    and hooks are restored afterwards.

    Args:
        model, layer: the network and one layer name.
        data: the samples (anything :func:`~latentsurgeon.activations.batching.iter_batches`
            reads; the model input is a batch's first element).
        pooling: a mode of :mod:`~latentsurgeon.activations.pooling` (``"none"``: the layer
            must give one vector per sample); a dict batch's ``attention_mask`` is handed to it.
        batch_size, device: of the forward passes (``device`` is the model's).
        bar: a tqdm bar advanced once per batch.
        what: names the data in error messages.
        out: an ``(N, D)`` float64 CPU tensor to write into (no intermediate copies of the
            activations); it must have a row per sample.

    Returns:
        ``(acts, shape)``: ``(N, D)`` float64 on the CPU (``out`` when given) and the
        per-sample shape of the layer's output before pooling.

    Raises:
        NonFiniteError: NaN or Inf in the inputs or the activations.
        LatentSurgeonError: ``data`` holds no samples.
    """
    parts: list[torch.Tensor] = []
    shape: tuple[int, ...] = ()
    start = 0
    # The reader stops the pass once the layer has produced its output and keeps that output
    # safe from later in-place ops; pooling happens here, after the shape check.
    with LayerReader(model, [layer], device=device) as reader:
        for batch in iter_batches(data, batch_size):
            inputs = finite(batch_inputs(batch), what)
            acts = reader.read(inputs)[layer]
            if pooling == "none" and acts.dim() > 2:
                raise ShapeMismatchError(
                    "A CAV needs one vector per sample: use pooling='flatten', 'max' or 'mean' "
                    f"for activations of shape {tuple(acts.shape)}.")
            shape = tuple(acts.shape[1:])
            # A dict batch's attention mask makes (N, T, D) activations tokens (pooling's rule).
            vectors = finite(pool(acts, pooling, attention_mask_of(inputs)).reshape(len(acts), -1),
                             f"activations of {what} at layer {layer!r}")
            if out is None:
                parts.append(vectors.to("cpu", torch.float64))
            elif start + len(vectors) > len(out):
                raise LatentSurgeonError(f"The {what} yielded more samples than counted.")
            else:
                out[start:start + len(vectors)].copy_(vectors)
            start += len(vectors)
            if bar is not None:
                bar.update(1)
    if start == 0:
        raise LatentSurgeonError(f"The {what} are empty: no samples to compute activations of.")
    if out is not None:
        if start != len(out):
            raise LatentSurgeonError(f"The {what} yielded {start} samples, {len(out)} counted.")
        return out, shape
    return torch.cat(parts), shape
