"""ClArC edits as removable hooks, without an estimator (detoxai's ``add_clarc_hook`` and
``add_mass_mean_probe_hook``, with the same argument names accepted).

Both return a :class:`~latentsurgeon.hooks.HookGroup` whose ``remove()`` is idempotent.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from latentsurgeon._aliases import aliased
from latentsurgeon._validation import Interval, Options, check_finite, validate_params
from latentsurgeon.correct.projection import (
    GRADIENTS,
    POOLINGS,
    clarc_projection,
    mass_mean_shift,
)
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.hooks import HookGroup, primary_tensor, replace_primary, resolve_layer
from latentsurgeon.hooks.resolve import LayerSelector

__all__ = ["add_clarc_hook", "add_mass_mean_probe_hook"]


def _as_vector(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value))
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise InvalidParameterError(
            f"{name} must be a tensor (or array); got {type(value).__name__}.") from exc
    tensor = tensor.detach().float()
    check_finite(tensor, name)
    return tensor.reshape(-1) if tensor.dim() else tensor


def unit_direction(value: Any, name: str = "cav") -> torch.Tensor:
    """``value`` as a finite, non-zero ``(D,)`` float vector of unit length."""
    direction = _as_vector(value, name)
    norm = direction.norm()
    if direction.dim() != 1 or norm == 0:
        raise InvalidParameterError(
            f"{name} must be a non-zero, finite 1-D vector; got shape {tuple(direction.shape)} "
            f"with norm {float(norm):.3g}.")
    return direction / norm


@aliased(supported={"layer_name": "layer"})
def add_clarc_hook(
    model: nn.Module,
    cav: Any,
    mean_length: Any,
    layer: str,
    alpha: float = 1.0,
    *,
    pooling: str | None = None,
    gradient: str = "exact",
) -> HookGroup:
    """Project the concept out of one layer's output for every forward pass until removed.

    ``a' = a - alpha * v v^T (a - z)`` (see :func:`~latentsurgeon.correct.projection.
    clarc_projection`). With ``z`` the mean activation of concept-free samples this is P-ClArC;
    with the concept samples' mean it *adds* the concept (A-ClArC's augmentation).

    Args:
        model: the network.
        cav: ``v``: a ``(D,)`` tensor (normalised here to unit length), or a fitted
            :class:`~latentsurgeon.concepts.CAV` (its ``direction_`` and ``pooling`` are used).
        mean_length: ``z``: a ``(D,)`` vector (e.g. ``cav.mean_clean_``) or a scalar, the target
            projection length ``v^T a'`` (then ``z = s * v``).
        layer: one exact layer name (``model.named_modules()``); detoxai's ``layer_name=`` is
            accepted.
        alpha: strength (1 = full projection).
        pooling: ``"flatten"`` (default for tensors) or ``"max"``/``"mean"`` for a channel-space
            direction ``(C,)`` applied at every spatial position; taken from a CAV when omitted.
        gradient: ``"exact"`` (default: the backward pass is the projection's derivative) or
            ``"straight_through"`` (detoxai: gradients pass as if there were no correction).

    Returns:
        A :class:`HookGroup`; ``group.remove()`` (idempotent) or ``with group:`` removes the hook.

    Example::

        group = add_clarc_hook(model, cav, cav.mean_clean_, "features")
        corrected_logits = model(x)
        group.remove()
    """
    if hasattr(cav, "direction_"):
        raw = cav.direction_
        pooling = pooling or getattr(cav, "pooling", "flatten")
    else:
        raw = cav
    pooling = pooling or "flatten"
    validate_params({"pooling": pooling, "gradient": gradient, "alpha": alpha, "layer": layer},
                    {"pooling": Options(POOLINGS), "gradient": Options(GRADIENTS),
                     "alpha": Interval(float, None, None), "layer": str},
                    owner="add_clarc_hook()")
    direction = unit_direction(raw, "cav")
    reference = _as_vector(mean_length, "mean_length")
    layer = resolve_layer(model, layer)  # one layer, canonical; close matches in the error

    def project(name: str, module: nn.Module, inputs: tuple, output: Any) -> Any:
        tensor = primary_tensor(output)
        return replace_primary(output, clarc_projection(tensor, direction, reference, alpha,
                                                        pooling, gradient=gradient))

    # prepend: observers registered earlier (captures) see the corrected output
    return HookGroup().forward(model, layer, project, prepend=True)


@aliased(supported={"layer_names": "layers"})
def add_mass_mean_probe_hook(
    model: nn.Module,
    probe: Any,
    layers: LayerSelector,
    alpha: float = 1.0,
) -> HookGroup:
    """Subtract ``alpha * probe`` from the flattened output of each selected layer until removed.

    Args:
        model: the network.
        probe: ``(D,)`` shift (e.g. ``mean(concept) - mean(clean)``), ``D`` the per-sample size of
            every selected layer's output; a fitted CAV is *not* accepted (its direction is unit
            length; pass ``cav.mean_concept_ - cav.mean_clean_`` for the mass-mean shift).
        layers: a layer selector (name, glob, ``re:`` regex, class, or a list); detoxai's
            ``layer_names=`` is accepted.
        alpha: strength.

    Returns:
        A :class:`HookGroup` (idempotent ``remove()``, usable as a context manager).
    """
    validate_params({"alpha": alpha}, {"alpha": Interval(float, None, None)},
                    owner="add_mass_mean_probe_hook()")
    if hasattr(probe, "direction_"):
        raise InvalidParameterError(
            "add_mass_mean_probe_hook(): probe must be a shift vector, not a CAV (its direction "
            "has unit length); pass cav.mean_concept_ - cav.mean_clean_.")
    vector = _as_vector(probe, "probe")
    if vector.dim() == 0:
        raise InvalidParameterError("add_mass_mean_probe_hook(): probe must be a vector with one "
                                    "entry per activation, not a scalar.")

    def shift(name: str, module: nn.Module, inputs: tuple, output: Any) -> Any:
        return replace_primary(output, mass_mean_shift(primary_tensor(output), vector, alpha))

    return HookGroup().forward(model, layers, shift, prepend=True)
