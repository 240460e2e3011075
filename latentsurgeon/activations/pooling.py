"""Pooling of layer activations to one vector (or tensor) per sample.

Conv activations are ``(N, C, *spatial)``; pooling acts on the spatial dims:

* ``"max"``     -> ``(N, C)``: spatial maximum per channel
* ``"mean"``    -> ``(N, C)``: spatial mean per channel
* ``"flatten"`` -> ``(N, C * prod(spatial))``
* ``"none"``    -> unchanged

2-D activations ``(N, D)`` are returned unchanged by every mode.
"""

from __future__ import annotations

import torch

from latentsurgeon.errors import InvalidParameterError

POOLINGS = ("max", "mean", "flatten", "none")


class PoolingError(InvalidParameterError):
    """An unknown pooling mode."""


def check_pooling(mode: str) -> str:
    if mode not in POOLINGS:
        raise PoolingError(f"Unknown pooling {mode!r}; expected one of {', '.join(POOLINGS)}.")
    return mode


def pool(activations: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool ``activations`` of shape ``(N, C, *spatial)`` as ``mode`` says (see module doc)."""
    check_pooling(mode)
    if mode == "none" or activations.dim() <= 2:
        return activations
    if mode == "flatten":
        return activations.reshape(activations.shape[0], -1)
    dims = tuple(range(2, activations.dim()))
    if mode == "max":
        return activations.amax(dim=dims)
    return activations.mean(dim=dims)


def pooled_shape(shape: tuple[int, ...], mode: str) -> tuple[int, ...]:
    """Per-sample shape after pooling a per-sample activation of ``shape`` (no batch dim)."""
    check_pooling(mode)
    if mode == "none" or len(shape) <= 1:
        return tuple(shape)
    if mode == "flatten":
        size = 1
        for s in shape:
            size *= s
        return (size,)
    return (shape[0],)
