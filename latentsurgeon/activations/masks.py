"""Artifact masks over inputs of any rank: what RRR penalises and artifact relevance measures.

A mask marks the artifact's input elements (1 = artifact). It has the input's own shape
``(N, ...)`` (tabular rows ``(N, D)``, sequences, images, volumes), or its per-sample shape
(one mask for every sample). Images ``(N, C, *spatial)`` also take the spatial forms other tools
use: ``spatial`` (one mask), ``(1, *spatial)`` (shortcut_detect's single mask), ``(N, *spatial)``
and ``(N, 1, *spatial)`` (every channel alike); spatial masks of another size are resized to the
input's with nearest-neighbour interpolation.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from latentsurgeon.activations.batching import to_tensor
from latentsurgeon.errors import ShapeMismatchError

__all__ = ["prepare_masks"]

logger = logging.getLogger(__name__)


def _spatial_forms(x_shape: tuple[int, ...]) -> str:
    n, c, spatial = x_shape[0], x_shape[1], tuple(x_shape[2:])
    s = ", ".join(str(d) for d in spatial)
    return (f"; for images also ({s}), (1, {s}), ({n}, {s}), ({n}, 1, {s}) or (1, {c}, {s}), "
            "with spatial sizes resized (nearest)")


def _image_mask(m: torch.Tensor, x_shape: tuple[int, ...], name: str, owner: str
                ) -> torch.Tensor | None:
    """The spatial forms for images ``(N, C, *spatial)``; None if ``m`` is none of them. A 3-D
    mask ``(K, H, W)`` with ``K`` = 1 or N is read as one mask per image (shortcut_detect's
    convention), also when ``K`` happens to equal the number of channels."""
    n, channels, spatial = x_shape[0], x_shape[1], x_shape[2:]
    if m.dim() == len(spatial):  # one spatial mask
        m = m[None, None]
    elif m.dim() == len(spatial) + 1:
        if m.shape[0] not in (1, n):
            return None
        m = m[:, None]  # (1|N, 1, *spatial)
    if m.shape[0] not in (1, n) or m.shape[1] not in (1, channels):
        return None
    if tuple(m.shape[2:]) != spatial:
        if len(spatial) > 3:
            raise ShapeMismatchError(
                f"{owner}: {name} of spatial size {tuple(m.shape[2:])} cannot be resized to "
                f"{spatial} (resizing works for 1 to 3 spatial dimensions).")
        logger.info("%s: resizing %s from %s to %s (nearest)", owner, name, tuple(m.shape[2:]),
                    spatial)
        m = F.interpolate(m, size=spatial, mode="nearest")
    return m


def prepare_masks(masks: Any, inputs: torch.Tensor, *, name: str = "shortcut_masks",
                  owner: str = "RRR") -> torch.Tensor:
    """``masks`` as a float tensor that broadcasts against ``inputs`` ``(N, ...)``.

    Args:
        masks: 1 = artifact element; numpy or tensor, bool or float. Forms: the input's shape
            ``(N, ...)``; its per-sample shape ``(...)``; for images ``(N, C, *spatial)`` also
            ``spatial``, ``(1, *spatial)``, ``(N, *spatial)``, ``(N, 1, *spatial)`` and
            ``(1, 1|C, *spatial)``.
        inputs: ``(N, ...)`` model inputs.
        name, owner: the argument and the function named in error messages.

    Returns:
        ``(N, ...)`` with the input's rank (a view when one mask serves every sample); a channel
        dimension of 1 for images given spatial masks, broadcasting over the channels.

    Raises:
        ShapeMismatchError: any other shape (the message lists the accepted ones).
    """
    raw = to_tensor(masks, name).detach()
    m = raw.float()
    x_shape = tuple(inputs.shape)
    if len(x_shape) < 2:
        raise ShapeMismatchError(
            f"{owner}: inputs must be (N, ...) with at least one feature dimension; got shape "
            f"{x_shape}.")
    per_sample = x_shape[1:]
    image = len(x_shape) >= 3
    out: torch.Tensor | None = None
    if tuple(m.shape) == x_shape:
        out = m
    elif image and m.dim() in (len(x_shape) - 2, len(x_shape) - 1, len(x_shape)):
        out = _image_mask(m, x_shape, name, owner)
    if out is None and tuple(m.shape) == per_sample:
        out = m[None]
    if out is None:
        extra = _spatial_forms(x_shape) if image else ""
        raise ShapeMismatchError(
            f"{owner}: {name} must have the inputs' shape {x_shape} or their per-sample shape "
            f"{per_sample}{extra}; got shape {tuple(raw.shape)}.")
    return out.expand((x_shape[0], *out.shape[1:]))  # a view: one mask is not copied N times
