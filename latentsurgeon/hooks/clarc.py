"""ClArC-style activation edits as removable hooks: project out a concept direction, or shift.

Two small public functions (the math shared with :mod:`latentsurgeon.correct`):

* :func:`add_clarc_hook` - ``a' = a - alpha * v v^T (a - z)`` at one layer, on the flattened
  activations (or per spatial position in channel space for channel-pooled directions).
* :func:`add_mass_mean_probe_hook` - ``a' = a - alpha * probe``, a constant shift of the flattened
  activations, at one or more layers.

Both return a :class:`~latentsurgeon.hooks.HookGroup` whose ``remove()`` is idempotent.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from latentsurgeon.errors import LatentSurgeonError, ShapeMismatchError
from latentsurgeon.hooks.handles import HookGroup
from latentsurgeon.hooks.outputs import primary_tensor, replace_primary
from latentsurgeon.hooks.resolve import LayerSelector, get_layer

__all__ = ["CHANNEL_POOLINGS", "add_clarc_hook", "add_mass_mean_probe_hook", "clarc_projection",
           "mass_mean_shift"]

#: Poolings whose directions live in channel space (``(C,)`` for ``(N, C, H, W)`` activations).
CHANNEL_POOLINGS = ("max", "mean")
_POOLINGS = ("flatten", "none", *CHANNEL_POOLINGS)


def _channel_space(activations: torch.Tensor, pooling: str) -> bool:
    return pooling in CHANNEL_POOLINGS and activations.dim() > 2


def _check_size(activations: torch.Tensor, vector: torch.Tensor, pooling: str, what: str) -> None:
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return  # shapes are fixed while tracing; Python checks would only add warnings
    if _channel_space(activations, pooling):
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
) -> torch.Tensor:
    """Move each sample's component along ``direction`` to the component of ``reference``.

    ``a' = a - alpha * v v^T (a - z)``, with the correction term computed from a *detached* copy
    of ``a``: the forward value is projected, gradients pass straight through (``da'/da = I``),
    as in the ClArC papers' code.

    Args:
        activations: ``(N, ...)`` layer output.
        direction: ``v``, a unit vector: ``(D,)`` with ``D = prod(activations.shape[1:])`` for
            ``pooling="flatten"``/``"none"``, or ``(C,)`` for ``"max"``/``"mean"`` (channel-pooled
            directions are applied in channel space at every spatial position of ``(N, C, ...)``).
        reference: ``z``, same size as ``direction`` (e.g. the mean clean activation), or a
            0-dim tensor ``s`` meaning ``z = s * v`` (the target projection length).
        alpha: strength; 1 sets the component exactly to the reference's, 0 does nothing.
        sample_weight: optional ``(N,)`` factor per sample (0 leaves a sample unchanged); used by
            A-ClArC to edit only part of a batch.

    Returns:
        Tensor shaped like ``activations``.
    """
    _check_size(activations, direction, pooling, "direction")
    v = direction.to(dtype=activations.dtype, device=activations.device)
    z = reference.to(dtype=activations.dtype, device=activations.device)
    if z.dim() == 0:
        z = z * v
    else:
        _check_size(activations, z, pooling, "reference (mean) vector")
    detached = activations.detach()
    n = activations.shape[0]
    if _channel_space(activations, pooling):
        shape = [1, -1] + [1] * (activations.dim() - 2)
        v_b, z_b = v.reshape(shape), z.reshape(shape)
        coef = ((detached - z_b) * v_b).sum(dim=1, keepdim=True)  # (N, 1, *spatial)
        delta = coef * v_b
    else:
        flat = detached.reshape(n, -1)
        coef = (flat - z.reshape(1, -1)) @ v.reshape(-1)  # (N,)
        delta = (coef[:, None] * v.reshape(1, -1)).reshape(activations.shape)
    if sample_weight is not None:
        delta = delta * sample_weight.to(delta).reshape([n] + [1] * (activations.dim() - 1))
    return activations - alpha * delta


def mass_mean_shift(activations: torch.Tensor, probe: torch.Tensor,
                    alpha: float | torch.Tensor = 1.0) -> torch.Tensor:
    """``a' = a - alpha * probe`` on the flattened activations: ``(N, ...) -> (N, ...)``.

    ``probe`` has ``prod(activations.shape[1:])`` entries (any shape with that many).
    """
    _check_size(activations, probe, "flatten", "probe")
    p = probe.to(dtype=activations.dtype, device=activations.device)
    return activations - alpha * p.reshape(activations.shape[1:])


def _as_vector(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, (int, float)):
        return torch.tensor(float(value))
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be a tensor (or array), got {type(value).__name__}.") from exc
    return tensor.detach().float().reshape(-1) if tensor.dim() else tensor.detach().float()


def add_clarc_hook(
    model: nn.Module,
    cav: Any,
    mean_length: Any,
    layer_name: str,
    alpha: float = 1.0,
    *,
    pooling: str | None = None,
) -> HookGroup:
    """Project the concept out of one layer's output for every forward pass until removed.

    ``a' = a - alpha * v v^T (a - z)`` (see :func:`clarc_projection`; gradients pass straight
    through). With ``z`` the mean activation of concept-free samples this is P-ClArC; with the
    concept samples' mean it *adds* the concept (A-ClArC's augmentation).

    Args:
        model: the network.
        cav: ``v``: a ``(D,)`` tensor (normalised here to unit length), or a fitted
            :class:`~latentsurgeon.concepts.CAV` (its ``direction_`` and ``pooling`` are used).
        mean_length: ``z``: a ``(D,)`` vector (e.g. ``cav.mean_clean_``) or a scalar, the target
            projection length ``v^T a'`` (then ``z = s * v``).
        layer_name: one exact layer name (``model.named_modules()``).
        alpha: strength (1 = full projection).
        pooling: ``"flatten"`` (default for tensors) or ``"max"``/``"mean"`` for a channel-space
            direction ``(C,)`` applied at every spatial position; taken from a CAV when omitted.

    Returns:
        A :class:`HookGroup`; ``group.remove()`` (idempotent) or ``with group:`` removes the hook.

    Example::

        group = add_clarc_hook(model, cav, cav.mean_clean_, "features")
        corrected_logits = model(x)
        group.remove()
    """
    if hasattr(cav, "direction_"):
        direction = _as_vector(cav.direction_, "cav.direction_")
        pooling = pooling or getattr(cav, "pooling", "flatten")
    else:
        direction = _as_vector(cav, "cav")
    pooling = pooling or "flatten"
    if pooling not in _POOLINGS:
        raise LatentSurgeonError(f"Unknown pooling {pooling!r}; expected one of {_POOLINGS}.")
    norm = direction.norm()
    if direction.dim() != 1 or not torch.isfinite(norm) or norm == 0:
        raise LatentSurgeonError("The concept direction must be a non-zero, finite 1-D vector; "
                                 f"got shape {tuple(direction.shape)} with norm {float(norm):.3g}.")
    direction = direction / norm
    reference = _as_vector(mean_length, "mean_length")
    get_layer(model, layer_name)  # one exact layer, with close matches in the error otherwise

    def project(name: str, module: nn.Module, inputs: tuple, output: Any) -> Any:
        tensor = primary_tensor(output)
        return replace_primary(output, clarc_projection(tensor, direction, reference, alpha, pooling))

    # prepend: observers registered earlier (captures) see the corrected output
    return HookGroup().forward(model, layer_name, project, prepend=True)


def add_mass_mean_probe_hook(
    model: nn.Module,
    probe: Any,
    layer_names: LayerSelector,
    alpha: float = 1.0,
) -> HookGroup:
    """Subtract ``alpha * probe`` from the flattened output of each selected layer until removed.

    Args:
        model: the network.
        probe: ``(D,)`` shift (e.g. ``mean(concept) - mean(clean)``), ``D`` the per-sample size of
            every selected layer's output; a fitted CAV is *not* accepted (its direction is unit
            length; pass ``cav.mean_concept_ - cav.mean_clean_`` for the mass-mean shift).
        layer_names: a layer selector (name, glob, ``re:`` regex, class, or a list).
        alpha: strength.

    Returns:
        A :class:`HookGroup` (idempotent ``remove()``, usable as a context manager).
    """
    vector = _as_vector(probe, "probe")
    if vector.dim() == 0:
        raise LatentSurgeonError("probe must be a vector with one entry per activation, "
                                 "not a scalar.")

    def shift(name: str, module: nn.Module, inputs: tuple, output: Any) -> Any:
        return replace_primary(output, mass_mean_shift(primary_tensor(output), vector, alpha))

    return HookGroup().forward(model, layer_names, shift, prepend=True)
