"""Running a model up to one layer: the representation an explanation is about.

A forward hook on the layer (registered through :class:`~latentsurgeon.hooks.HookGroup`) records
the layer's output and stops the forward pass there with a private exception, caught here and
nowhere else. So nothing after the layer runs: its cost is saved, and an in-place operation
downstream (``ReLU(inplace=True)``, ``out += x``) cannot change what is read or differentiated.

``state`` runs the model with other weights through :func:`torch.func.functional_call` (a
checkpoint's, or the parameters a gradient is taken with respect to) without touching the
model's own parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from latentsurgeon.errors import LatentSurgeonError
from latentsurgeon.hooks import HookGroup, get_layer, primary_tensor, select_logits


class _StopForward(BaseException):
    """Raised by the recording hook once the layer has produced its output.

    A ``BaseException`` so that a model's own ``except Exception:`` cannot swallow it.
    """


def call_model(model: nn.Module, inputs: Any, state: Mapping[str, torch.Tensor] | None = None
               ) -> Any:
    """``model(inputs)`` (``model(**inputs)`` for a dict), with ``state`` swapped in if given."""
    args, kwargs = ((), dict(inputs)) if isinstance(inputs, Mapping) else ((inputs,), {})
    if state is None:
        return model(*args, **kwargs)
    return torch.func.functional_call(model, dict(state), args, kwargs, strict=False)


def check_layer(model: nn.Module, layer: str | None) -> None:
    """Raise :class:`~latentsurgeon.errors.LayerNotFoundError` unless ``layer`` is None or one
    exact layer of ``model``."""
    if layer is not None:
        get_layer(model, layer)


def forward_to(model: nn.Module, inputs: Any, layer: str | None,
               state: Mapping[str, torch.Tensor] | None = None,
               head: str | int | None = None) -> torch.Tensor:
    """The output of ``layer`` (the model's output when ``layer`` is None) for ``inputs``.

    The forward pass stops right after ``layer`` (see module doc). A layer that runs several
    times in one pass gives its first output. ``head`` picks the logits out of a structured
    model output (see :func:`~latentsurgeon.hooks.select_logits`); it is ignored with ``layer``.

    Returns:
        The layer's primary tensor (first element of a tuple output, first tensor of a dict), in
        the autograd graph.

    Raises:
        LayerNotFoundError: ``layer`` is not one exact layer name of ``model``.
        LatentSurgeonError: the forward pass did not run ``layer``.
    """
    if layer is None:
        output = call_model(model, inputs, state)
        return primary_tensor(output) if head is None else select_logits(output, head)
    found: list[torch.Tensor] = []

    def record(name: str, module: nn.Module, args: tuple, output: Any) -> None:
        found.append(primary_tensor(output))
        raise _StopForward

    with HookGroup() as group:
        group.forward(model, layer, record)
        try:
            call_model(model, inputs, state)
        except _StopForward:
            pass
    if not found:
        raise LatentSurgeonError(
            f"The forward pass of {type(model).__name__} did not run layer {layer!r}; choose a "
            "layer the model's forward uses.")
    return found[0]


class Representation(nn.Module):
    """``x -> f(x)`` flattened to ``(N, D)``: the output of ``layer`` of ``model`` (or of the
    whole model), as a module, so attribution methods that hook modules (DeepLift) see the
    model's layers as its submodules."""

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.layer = layer

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        out = forward_to(self.model, inputs, self.layer)
        return out.reshape(out.shape[0], -1)
