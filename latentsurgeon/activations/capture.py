"""In-memory capture of layer activations (and of gradients w.r.t. them)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from latentsurgeon.errors import LatentSurgeonError
from latentsurgeon.hooks import HookGroup, preserve_model_state, primary_tensor, resolve_layers
from latentsurgeon.hooks.resolve import LayerSelector


class Captured:
    """What :func:`capture` recorded: ``activations[name]`` and ``gradients[name]``.

    With ``accumulate=True`` every forward pass inside the block is kept and the tensors are
    concatenated along the batch dimension; otherwise only the latest pass is kept.
    """

    def __init__(self, names: list[str], accumulate: bool) -> None:
        self.layers = names
        self._accumulate = accumulate
        self._acts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        # Version counters of uncopied activations at capture time: a later in-place op on the
        # layer's output bumps the counter, and reading the stale tensor is then refused.
        self._versions: dict[int, int] = {}
        self._grads: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def _put(self, table: dict[str, list[torch.Tensor]], name: str, value: torch.Tensor) -> None:
        if self._accumulate:
            table[name].append(value)
        else:
            table[name] = [value]

    @staticmethod
    def _join(parts: list[torch.Tensor]) -> torch.Tensor:
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    def _check_unchanged(self, name: str, parts: list[torch.Tensor]) -> None:
        for part in parts:
            version = self._versions.get(id(part))
            if version is not None and part._version != version:
                raise LatentSurgeonError(
                    f"The output of layer {name!r} was modified in place after it was captured "
                    "(e.g. by a later ReLU(inplace=True) or `x += ...`), so the stored tensor no "
                    "longer holds the layer's output. Capture with copy=True."
                )

    @property
    def activations(self) -> dict[str, torch.Tensor]:
        for name, parts in self._acts.items():
            self._check_unchanged(name, parts)
        return {n: self._join(v) for n, v in self._acts.items() if v}

    @property
    def gradients(self) -> dict[str, torch.Tensor]:
        # Backward visits layers in reverse, and several backward calls may interleave: the
        # gradients of one call arrive last-layer first, so the list order is per call.
        return {n: self._join(v) for n, v in self._grads.items() if v}

    def __getitem__(self, name: str) -> torch.Tensor:
        acts = self.activations
        if name not in acts:
            raise KeyError(
                f"No activation captured for {name!r}; captured layers: {self.layers}. "
                "Was a forward pass run inside the `with capture(...)` block?"
            )
        return acts[name]

    def __contains__(self, name: object) -> bool:
        return name in self._acts and bool(self._acts[name])

    def clear(self) -> None:
        for table in (self._acts, self._grads):
            for name in table:
                table[name] = []


@contextmanager
def capture(
    model: nn.Module,
    layers: LayerSelector,
    *,
    gradients: bool = False,
    detach: bool = True,
    accumulate: bool = False,
    copy: bool | None = None,
) -> Iterator[Captured]:
    """Record the outputs of the selected layers during forward passes inside the block.

    Args:
        model: the network.
        layers: layer selector (name, glob, ``re:`` regex, class, or a list; see
            :func:`latentsurgeon.hooks.resolve_layers`).
        gradients: also record ``d(loss)/d(layer output)`` when ``backward()`` is called inside
            the block (the output must require grad).
        detach: store detached tensors (default). With ``detach=False`` the stored activations
            stay in the autograd graph, so ``torch.autograd.grad(y, cap["layer"])`` works.
        accumulate: keep every pass, concatenated along dim 0 (else only the latest).
        copy: store a copy of each output. ``None`` (default) copies only when the model has a
            module with ``inplace=True`` (a later in-place op would overwrite the stored tensor);
            otherwise the output itself is kept (no copy: capture costs ~nothing). An in-place
            change that slips through (a functional ``x += ...``) is detected when the
            activation is read, and refused with an error that says to pass ``copy=True``.

    Yields:
        :class:`Captured`; ``cap["features.3"]`` is an ``(N, ...)`` tensor, the layer's output.

    The model's hooks, mode and ``requires_grad`` flags are as before when the block ends,
    whether or not it raised.
    """
    names = list(resolve_layers(model, layers))
    result = Captured(names, accumulate)
    if copy is None:
        copy = any(getattr(m, "inplace", False) is True for m in model.modules())

    def record(name: str, module: nn.Module, inputs: tuple, output: object) -> None:
        tensor = primary_tensor(output)
        if detach and copy:
            stored = tensor.detach().clone()
        else:
            stored = tensor.detach() if detach else tensor
            result._versions[id(stored)] = stored._version
        result._put(result._acts, name, stored)
        if gradients and tensor.requires_grad:
            tensor.register_hook(lambda g, _n=name: result._put(result._grads, _n, g.detach()))

    with preserve_model_state(model), HookGroup() as group:
        group.forward(model, names, record)
        yield result
