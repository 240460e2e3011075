"""detoxai's ``detoxai.methods.clarcs.hooks`` on latentsurgeon's ClArC edits.

The edits are :func:`latentsurgeon.correct.projection.clarc_projection` and
:func:`~latentsurgeon.correct.projection.mass_mean_shift`; registration goes through
:func:`latentsurgeon.correct.add_clarc_hook` / :func:`~latentsurgeon.correct.add_mass_mean_probe_hook`
(one hook mechanism), whose :class:`~latentsurgeon.hooks.HookGroup` is handed back as the list of
``RemovableHandle`` objects detoxai returns (``for h in hooks: h.remove()``).

Differences from detoxai (``docs/compat.md`` lists them with the reasons): the direction is
normalised to unit length, so the edit is a projection whatever the CAV's scale; ``v`` and ``z``
are not shifted by ``stabilize``'s 1e-8; gradients are the edit's exact derivative unless
``gradient="straight_through"`` (detoxai's) is asked for; an unknown layer name raises
:class:`~latentsurgeon.errors.LayerNotFoundError` instead of registering nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from latentsurgeon._validation import check_finite
from latentsurgeon.correct import add_clarc_hook as _add_clarc_hook
from latentsurgeon.correct import add_mass_mean_probe_hook as _add_mass_mean_probe_hook
from latentsurgeon.correct.hooks import unit_direction
from latentsurgeon.correct.projection import check_gradient, clarc_projection, mass_mean_shift
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.hooks import primary_tensor, replace_primary

__all__ = ["add_clarc_hook", "add_mass_mean_probe_hook", "clarc_hook", "mass_mean_probe_hook",
           "stabilize"]

TorchForwardHook = Callable[[nn.Module, tuple, Any], Any]


def stabilize(x: torch.Tensor, epsilon: float = 1e-8) -> torch.Tensor:
    """``x + epsilon`` (detoxai's guard, kept for code that calls it; the hooks here do not
    apply it: they divide by nothing, and a zero direction is refused instead)."""
    if not isinstance(x, torch.Tensor):
        raise InvalidParameterError(f"stabilize(): x must be a torch.Tensor; got "
                                    f"{type(x).__name__}.")
    return x + epsilon


def _vector(value: Any, name: str, owner: str, *, keep_scalar: bool = False) -> torch.Tensor:
    """``value`` as a finite float ``(D,)`` vector (a 0-dim tensor stays one if
    ``keep_scalar``)."""
    if not isinstance(value, torch.Tensor):
        raise InvalidParameterError(f"{owner}: {name} must be a torch.Tensor; got "
                                    f"{type(value).__name__}.")
    tensor = value.detach().float()
    tensor = tensor if keep_scalar and tensor.dim() == 0 else tensor.reshape(-1)
    return check_finite(tensor, f"{owner}: {name}")


def _alpha(alpha: Any, owner: str) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise InvalidParameterError(f"{owner}: alpha must be a real number; got {alpha!r}.")
    return float(alpha)


def mass_mean_probe_hook(probe: torch.Tensor, alpha: float) -> TorchForwardHook:
    """A raw PyTorch forward hook ``hook(module, input, output)``: ``a' = a - alpha * probe`` on
    the flattened output ``(N, D)``, ``probe`` of ``D`` entries. Register it yourself
    (``module.register_forward_hook(hook)``), or use :func:`add_mass_mean_probe_hook`."""
    owner = "mass_mean_probe_hook()"
    shift, strength = _vector(probe, "probe", owner), _alpha(alpha, owner)

    def hook(module: nn.Module, inputs: tuple, output: Any) -> Any:
        return replace_primary(output, mass_mean_shift(primary_tensor(output), shift, strength))

    return hook


def add_mass_mean_probe_hook(model: nn.Module, probe: torch.Tensor, layer_names: list,
                             alpha: float = 1.0) -> list[RemovableHandle]:
    """Subtract ``alpha * probe`` from the flattened output of each layer in ``layer_names``.

    Returns:
        One ``RemovableHandle`` per layer, in model order.
    """
    return list(_add_mass_mean_probe_hook(model, probe, layer_names, alpha))


def clarc_hook(cav: torch.Tensor, mean_length: torch.Tensor, alpha: float, *,
               gradient: str = "exact") -> TorchForwardHook:
    """A raw PyTorch forward hook ``hook(module, input, output)`` applying
    ``a' = a - alpha * v v^T (a - z)`` to the flattened output ``(N, D)``.

    Args:
        cav: ``v``, ``(D,)`` or detoxai's ``(1, D)``; normalised to unit length here.
        mean_length: ``z``, ``(D,)`` (e.g. the clean samples' mean activation), or a 0-dim
            tensor ``s`` meaning ``z = s * v``.
        alpha: strength.
        gradient: ``"exact"`` (default) or ``"straight_through"`` (detoxai's: the correction
            term is computed from a detached copy).
    """
    owner = "clarc_hook()"
    direction = unit_direction(_vector(cav, "cav", owner), "cav")
    reference = _vector(mean_length, "mean_length", owner, keep_scalar=True)
    strength, how = _alpha(alpha, owner), check_gradient(gradient)

    def hook(module: nn.Module, inputs: tuple, output: Any) -> Any:
        tensor = primary_tensor(output)
        return replace_primary(output, clarc_projection(tensor, direction, reference, strength,
                                                        "flatten", gradient=how))

    return hook


def add_clarc_hook(model: nn.Module, cav: torch.Tensor, mean_length: torch.Tensor,
                   layer_name: str, alpha: float = 1.0, *,
                   gradient: str = "exact") -> list[RemovableHandle]:
    """Project ``cav`` out of ``layer_name``'s flattened output towards ``mean_length`` (see
    :func:`clarc_hook`) for every forward pass until the handles are removed.

    Returns:
        ``[handle]``: a list of one ``RemovableHandle``.
    """
    if isinstance(cav, torch.Tensor):
        cav = cav.reshape(-1)  # detoxai's CAVs are (1, D)
    return list(_add_clarc_hook(model, cav, mean_length, layer_name, alpha, pooling="flatten",
                                gradient=gradient))
