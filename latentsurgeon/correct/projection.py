"""The ClArC edits of a layer's activations: project out a concept direction, or shift.

* :func:`clarc_projection` - ``a' = a - alpha * v v^T (a - z)``: every sample's component along
  ``v`` moves to the reference ``z``'s (P-ClArC with the clean mean, A-ClArC's augmentation with
  the artifact mean). On flattened activations, or in channel space at every spatial position
  for a channel-pooled direction.
* :func:`mass_mean_shift` - ``a' = a - alpha * probe``, a constant shift.

Three spaces a direction can live in (the ``pooling`` argument): the flattened activations
(``"flatten"``/``"none"``: ``v`` has ``prod(shape[1:])`` entries), channel space
(``"max"``/``"mean"``: ``v`` is ``(C,)`` for ``(N, C, *spatial)`` and acts at every spatial
position), and token space (``"token"``: ``v`` is ``(D,)`` for sequence activations
``(N, T, D)``, features last as in transformers, and acts on every token's ``D``-vector).

The projection is linear in ``a``, so its exact derivative is the same projection:
``da'/da = I - alpha * v v^T``. That is the default (``gradient="exact"``): gradients of a
corrected model (its explanations, TCAV on it, further training) then describe the corrected
function. ``gradient="straight_through"`` computes the correction term from a detached copy of
``a`` as detoxai and the ClArC papers' code do: the forward value is projected but gradients pass
as if there were no correction (``da'/da = I``).
"""

from __future__ import annotations

import math

import torch

from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError

__all__ = ["CHANNEL_POOLINGS", "GRADIENTS", "POOLINGS", "TOKEN_POOLING", "check_gradient",
           "clarc_projection", "mass_mean_shift"]

#: Poolings whose directions live in channel space (``(C,)`` for ``(N, C, H, W)`` activations).
CHANNEL_POOLINGS = ("max", "mean")
#: A direction in the feature space ``D`` of sequence activations ``(N, T, D)``, applied at every
#: token (P-ClArC's ``tokens=`` options fit such directions).
TOKEN_POOLING = "token"
#: Every pooling a direction may come with.
POOLINGS = ("flatten", "none", *CHANNEL_POOLINGS, TOKEN_POOLING)
#: How gradients pass the projection: its exact derivative, or straight through (detoxai).
GRADIENTS = ("exact", "straight_through")


def check_gradient(gradient: str) -> str:
    """Raise :class:`InvalidParameterError` unless ``gradient`` is one of :data:`GRADIENTS`."""
    if gradient not in GRADIENTS:
        raise InvalidParameterError(
            f"gradient must be one of {', '.join(repr(g) for g in GRADIENTS)}; got {gradient!r}.")
    return gradient


def _channel_space(activations: torch.Tensor, pooling: str) -> bool:
    return pooling in CHANNEL_POOLINGS and activations.dim() > 2


def _check_size(activations: torch.Tensor, vector: torch.Tensor, pooling: str, what: str) -> None:
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return  # shapes are fixed while tracing; Python checks would only add warnings
    if pooling == TOKEN_POOLING:
        expected, space = activations.shape[-1], "token space (the last axis, at every token)"
    elif _channel_space(activations, pooling):
        expected, space = activations.shape[1], f"channel space ({pooling} pooling)"
    else:
        expected, space = math.prod(activations.shape[1:]), "the flattened activations"
    if vector.numel() != expected:
        raise ShapeMismatchError(
            f"The {what} has {vector.numel()} entries but activations of per-sample shape "
            f"{tuple(activations.shape[1:])} need {expected} in {space}; was it fitted at "
            "another layer or with another pooling?")


def clarc_projection(
    activations: torch.Tensor,
    direction: torch.Tensor,
    reference: torch.Tensor,
    alpha: float | torch.Tensor = 1.0,
    pooling: str = "flatten",
    sample_weight: torch.Tensor | None = None,
    gradient: str = "exact",
    gate: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Move each sample's component along ``direction`` to the component of ``reference``.

    ``a' = a - alpha * v v^T (a - z)``.

    Args:
        activations: ``(N, ...)`` layer output.
        direction: ``v``, a unit vector: ``(D,)`` with ``D = prod(activations.shape[1:])`` for
            ``pooling="flatten"``/``"none"``, or ``(C,)`` for ``"max"``/``"mean"`` (channel-pooled
            directions are applied in channel space at every spatial position of ``(N, C, ...)``),
            or ``(D,)`` for ``"token"`` (applied to the last axis at every token of
            ``(N, T, D)``).
        reference: ``z``, same size as ``direction`` (e.g. the mean clean activation), or a
            0-dim tensor ``s`` meaning ``z = s * v`` (the target projection length).
        alpha: strength; 1 sets the component exactly to the reference's, 0 does nothing.
        pooling: the space ``direction`` lives in (see above).
        sample_weight: optional ``(N,)`` factor per sample (0 leaves a sample unchanged); used by
            A-ClArC to edit only part of a batch.
        gradient: ``"exact"`` (default: the backward pass is the derivative of this function,
            ``I - alpha * v v^T``) or ``"straight_through"`` (the correction term is computed
            from a detached copy; gradients pass as if there were no correction, as in detoxai).
        gate: ``"token"`` only: project only the tokens that look like the artifact, those
            whose component ``c = (a - z) . v`` lies beyond ``gate`` (``c / gate > 1``; P-ClArC
            sets ``gate`` halfway between the clean and the artifact tokens' mean component);
            other tokens pass unchanged. None: every token.

    Returns:
        A new tensor shaped like ``activations`` (never a view of it, so a later in-place op on
        the result leaves ``activations`` alone).
    """
    _check_size(activations, direction, pooling, "direction")
    v = direction.to(dtype=activations.dtype, device=activations.device)
    z = reference.to(dtype=activations.dtype, device=activations.device)
    if z.dim() == 0:
        z = z * v
    else:
        _check_size(activations, z, pooling, "reference (mean) vector")
    source = activations if gradient == "exact" else activations.detach()
    n = activations.shape[0]
    if pooling == TOKEN_POOLING:
        coef = ((source - z) * v).sum(dim=-1, keepdim=True)  # (N, T, 1): one per token
        if gate is not None:
            # which tokens are edited is a step function of a: no gradient flows through it
            g = torch.as_tensor(gate, dtype=coef.dtype, device=coef.device)
            coef = coef * (coef.detach() / g > 1).to(coef.dtype)
        delta = coef * v
    elif _channel_space(activations, pooling):
        shape = [1, -1] + [1] * (activations.dim() - 2)
        v_b, z_b = v.reshape(shape), z.reshape(shape)
        coef = ((source - z_b) * v_b).sum(dim=1, keepdim=True)  # (N, 1, *spatial)
        delta = coef * v_b
    else:
        flat = source.reshape(n, -1)
        coef = (flat - z.reshape(1, -1)) @ v.reshape(-1)  # (N,)
        delta = (coef[:, None] * v.reshape(1, -1)).reshape(activations.shape)
    if sample_weight is not None:
        delta = delta * sample_weight.to(delta).reshape([n] + [1] * (activations.dim() - 1))
    return activations - alpha * delta


def mass_mean_shift(activations: torch.Tensor, probe: torch.Tensor,
                    alpha: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``a' = a - alpha * probe`` on the flattened activations: ``(N, ...) -> (N, ...)``.

    ``probe`` has ``prod(activations.shape[1:])`` entries (any shape with that many). A constant
    shift: the derivative is the identity, exactly.
    """
    _check_size(activations, probe, "flatten", "probe")
    p = probe.to(dtype=activations.dtype, device=activations.device)
    return activations - alpha * p.reshape(activations.shape[1:])
