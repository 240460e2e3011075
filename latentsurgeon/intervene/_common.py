"""Helpers shared by patching and steering: running a model over user inputs, token positions."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from latentsurgeon.activations.access import ForwardFn, ModelAccess
from latentsurgeon.activations.batching import batch_inputs, batch_size_of, iter_batches
from latentsurgeon.errors import LatentSurgeonError, ShapeMismatchError

Positions = int | Sequence[int] | slice | torch.Tensor | None


def run_batches(
    model: nn.Module,
    inputs: Any,
    *,
    batch_size: int | None,
    forward_fn: ForwardFn | None,
    device: str | torch.device | None,
    before_batch: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[int, Any, Any]]:
    """Run ``model`` over ``inputs`` batch by batch through the one model call
    (:meth:`~latentsurgeon.activations.access.ModelAccess.call`: the model's device and dtype,
    ``model(**batch)`` for dicts, ``forward_fn``); yield ``(n_samples, batch, output)``.

    ``before_batch(start, stop)`` is called with the batch's sample range before its forward pass,
    so hooks know which rows of recorded activations belong to it.
    """
    access = ModelAccess(model, forward_fn=forward_fn, device=device)
    start = 0
    for batch in iter_batches(inputs, batch_size):
        batch = batch_inputs(batch)
        n = batch_size_of(batch)
        if before_batch is not None:
            before_batch(start, start + n)
        yield n, batch, access.call(batch)
        start += n


def check_positions(positions: Positions, activation: torch.Tensor, what: str) -> None:
    """Positions index the token axis (dim 1) of ``(N, T, D)`` activations and nothing else."""
    if positions is None:
        return
    if activation.dim() != 3:
        raise ShapeMismatchError(
            f"{what}: positions= selects tokens of (N, T, D) activations, but this layer's "
            f"activation has shape {tuple(activation.shape)}. Use positions=None here "
            "(or a custom function to select channels or pixels)."
        )


def position_index(positions: Positions) -> Any:
    """An index for dim 1 that keeps the dimension (so ``x[:, idx]`` stays 3-D)."""
    if isinstance(positions, int):
        return [positions]
    if isinstance(positions, (slice, torch.Tensor)):
        return positions
    return list(positions)  # type: ignore[arg-type]


def merge_positions(original: torch.Tensor, changed: torch.Tensor, positions: Positions) -> torch.Tensor:
    """``original`` with the token positions ``positions`` (dim 1) taken from ``changed``."""
    if positions is None:
        return changed
    out = original.clone()
    idx = position_index(positions)
    out[:, idx] = changed[:, idx].to(out.dtype)
    return out


def as_float(value: Any, what: str) -> torch.Tensor:
    """A metric's value as a detached CPU float64 tensor (any shape)."""
    try:
        tensor = torch.as_tensor(value.detach() if isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise LatentSurgeonError(
            f"{what} must return a number or a tensor, got {type(value).__name__}."
        ) from exc
    return tensor.to("cpu", torch.float64)


def broadcast_vector(vector: torch.Tensor, activation: torch.Tensor, what: str) -> torch.Tensor:
    """View ``vector`` so that it broadcasts against ``activation`` ``(N, ...)`` sample-wise.

    Accepted shapes: the full per-sample shape ``activation.shape[1:]``; ``(D,)`` for ``(N, D)``
    and ``(N, T, D)`` activations (features last, added at every token); ``(C,)`` for
    ``(N, C, H, W)`` (and other ``(N, C, ...)``) activations (channels first, added at every
    pixel).

    Raises:
        ShapeMismatchError: any other shape; the message says which shapes would fit.
    """
    per_sample = tuple(activation.shape[1:])
    shape = tuple(vector.shape)
    if shape == per_sample:
        return vector
    if activation.dim() in (2, 3) and shape == per_sample[-1:]:
        return vector
    if activation.dim() >= 4 and shape == per_sample[:1]:
        return vector.reshape(shape + (1,) * (activation.dim() - 2))
    if activation.dim() in (2, 3):
        expected = f"({per_sample[-1]},) or {per_sample}"
    elif activation.dim() >= 4:
        expected = f"({per_sample[0]},) (one value per channel) or {per_sample}"
    else:
        expected = f"{per_sample}"
    raise ShapeMismatchError(
        f"{what}: expected a vector of shape {expected} for activations of shape "
        f"{tuple(activation.shape)}, got shape {shape}."
    )
