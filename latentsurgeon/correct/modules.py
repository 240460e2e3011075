"""Corrections as real submodules, for exported models: no hooks, so they survive ``torch.save``,
``state_dict`` round-trips and ``torch.jit.trace``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from latentsurgeon.correct.projection import check_gradient, clarc_projection, mass_mean_shift
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.hooks import primary_tensor, replace_primary

__all__ = ["ClarcProjection", "MassMeanShift"]


class ClarcProjection(nn.Module):
    """``a' = a - alpha * v v^T (a - z)`` as a module (see
    :func:`latentsurgeon.correct.projection.clarc_projection`).

    ``v``, ``z`` and ``alpha`` are buffers, so they are saved in ``state_dict`` and moved by
    ``.to(device)``. Tuple or dict outputs of the wrapped layer are handled: the primary tensor is
    projected, the rest passes unchanged.

    Args:
        direction: ``v``, ``(D,)`` flattened or ``(C,)`` channel-space unit vector.
        reference: ``z``, same shape as ``direction``.
        alpha: strength.
        pooling: ``"flatten"`` or ``"max"``/``"mean"`` (channel space, every spatial position).
        gradient: ``"exact"`` (the backward pass is the projection's derivative) or
            ``"straight_through"`` (detoxai's: gradients pass as if there were no correction).
        gate: ``pooling="token"`` only: project only the tokens whose component along ``v``
            lies beyond it (a buffer; see :func:`~latentsurgeon.correct.projection.
            clarc_projection`); None: every token.
    """

    def __init__(self, direction: torch.Tensor, reference: torch.Tensor, alpha: float = 1.0,
                 pooling: str = "flatten", gradient: str = "exact",
                 gate: float | None = None) -> None:
        super().__init__()
        self.gradient = check_gradient(gradient)
        self.register_buffer("direction", direction.detach().clone().float().reshape(-1))
        self.register_buffer("reference", reference.detach().clone().float().reshape(-1))
        self.register_buffer("alpha", torch.tensor(float(alpha)))
        self.pooling = pooling
        if gate is not None and pooling != "token":
            raise InvalidParameterError(
                f"gate= applies to pooling='token' (per-token directions); got "
                f"pooling={pooling!r}.")
        # None is a buffer that state_dict leaves out: ungated projections keep their keys
        self.register_buffer("gate", None if gate is None else torch.tensor(float(gate)))

    def forward(self, output: Any) -> Any:
        """``(N, ...)`` activations (or a container holding them) -> same shape."""
        tensor = primary_tensor(output)
        projected = clarc_projection(tensor, self.direction, self.reference, self.alpha,
                                     self.pooling, gradient=self.gradient, gate=self.gate)
        return replace_primary(output, projected)

    def extra_repr(self) -> str:
        return (f"dim={self.direction.numel()}, alpha={float(self.alpha):g}, "
                f"pooling={self.pooling!r}, gradient={self.gradient!r}"
                + ("" if self.gate is None else f", gate={float(self.gate):.4g}"))


class MassMeanShift(nn.Module):
    """``a' = a - alpha * probe`` on the flattened activations, as a module (buffers as above)."""

    def __init__(self, probe: torch.Tensor, alpha: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("probe", probe.detach().clone().float().reshape(-1))
        self.register_buffer("alpha", torch.tensor(float(alpha)))

    def forward(self, output: Any) -> Any:
        tensor = primary_tensor(output)
        return replace_primary(output, mass_mean_shift(tensor, self.probe, self.alpha))
