"""In-memory capture of what layers see and produce: outputs, inputs, and gradients w.r.t. both.

``capture`` is a context manager in which the user runs the model. Besides the layers' outputs it
records, on request, their inputs (forward pre-hooks) and the gradients w.r.t. outputs and inputs;
a ``callback`` receives each value instead of it being stored. With ``stop_early=True``,
:meth:`Captured.run` ends the forward pass once every selected layer has produced its output (see
:mod:`latentsurgeon.hooks.stop`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, LayerNotFoundError
from latentsurgeon.hooks import HookGroup, preserve_model_state, primary_tensor, resolve_layers
from latentsurgeon.hooks.resolve import LayerSelector
from latentsurgeon.hooks.stop import ForwardStopper

KINDS = ("output", "input", "gradient", "input_gradient")


def first_tensor(args: tuple, kwargs: dict | None = None) -> torch.Tensor | None:
    """The primary input of a layer call: the first tensor argument, else the first tensor keyword
    argument (transformer blocks are often called with ``hidden_states=...``)."""
    for value in args:
        if isinstance(value, torch.Tensor):
            return value
    for value in (kwargs or {}).values():
        if isinstance(value, torch.Tensor):
            return value
    return None


def _version(tensor: torch.Tensor) -> int | None:
    """The version counter of ``tensor``; None for inference tensors, which have none."""
    return None if tensor.is_inference() else tensor._version


class Captured:
    """What :func:`capture` recorded.

    ``activations[name]`` (also ``cap[name]``) holds the layer's output; ``inputs[name]`` its
    primary input; ``gradients[name]`` the gradient w.r.t. its output; ``input_gradients[name]``
    the gradient w.r.t. its input (through the layer only). With ``accumulate=True`` every pass
    inside the block is kept and the tensors are concatenated along the batch dimension (a layer
    that runs twice per pass contributes twice); otherwise only the latest call is kept.
    """

    def __init__(self, names: list[str], accumulate: bool) -> None:
        self.layers = names
        self._accumulate = accumulate
        self._tables: dict[str, dict[str, list[torch.Tensor]]] = {
            kind: {n: [] for n in names} for kind in KINDS}
        # Version counters of uncopied values at capture time: a later in-place op on the tensor
        # bumps the counter, and reading the stale tensor is then refused.
        self._versions: dict[int, int] = {}
        self._stopper: ForwardStopper | None = None
        self._open = False
        self._passes = 0  # calls of any selected layer (to tell "no pass" from "not this layer")

    # -- recording (from hooks) ---------------------------------------------------------------
    def _put(self, kind: str, name: str, value: torch.Tensor, track: bool) -> None:
        table = self._tables[kind]
        if self._accumulate:
            table[name].append(value)
        else:
            table[name] = [value]
        if track:
            version = _version(value)
            if version is not None:
                self._versions[id(value)] = version

    @staticmethod
    def _join(parts: list[torch.Tensor]) -> torch.Tensor:
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

    def _check_unchanged(self, name: str, kind: str, parts: list[torch.Tensor]) -> None:
        for part in parts:
            version = self._versions.get(id(part))
            if version is not None and part._version != version:
                what = "output" if kind == "output" else "input"
                raise LatentSurgeonError(
                    f"The {what} of layer {name!r} was modified in place after it was captured "
                    "(e.g. by a later ReLU(inplace=True) or `x += ...`), so the stored tensor no "
                    "longer holds it. Capture with copy=True."
                )

    def _read(self, kind: str) -> dict[str, torch.Tensor]:
        table = self._tables[kind]
        if kind in ("output", "input"):
            for name, parts in table.items():
                self._check_unchanged(name, kind, parts)
        return {n: self._join(v) for n, v in table.items() if v}

    # -- reading ------------------------------------------------------------------------------
    @property
    def activations(self) -> dict[str, torch.Tensor]:
        """``{name: output}`` of the layers that ran."""
        return self._read("output")

    @property
    def inputs(self) -> dict[str, torch.Tensor]:
        """``{name: primary input}`` (recorded with ``inputs=True``)."""
        return self._read("input")

    @property
    def gradients(self) -> dict[str, torch.Tensor]:
        """``{name: d loss / d output}`` (recorded with ``gradients=True``)."""
        # Backward visits layers in reverse, and several backward calls may interleave: the
        # gradients of one call arrive last-layer first, so the list order is per call.
        return self._read("gradient")

    @property
    def input_gradients(self) -> dict[str, torch.Tensor]:
        """``{name: d loss / d input}`` through the layer (recorded with ``input_gradients=True``)."""
        return self._read("input_gradient")

    @property
    def stopped(self) -> bool:
        """Whether the last :meth:`run` ended the forward pass early."""
        return self._stopper is not None and self._stopper.stopped

    def __getitem__(self, name: str) -> torch.Tensor:
        acts = self.activations
        if name not in acts:
            if name not in self.layers:
                raise LayerNotFoundError(
                    f"{name!r} is not one of the captured layers {self.layers}.")
            ran = [n for n in self.layers if self._tables["output"][n]]
            if not ran and self._passes == 0:
                raise LayerNotFoundError(
                    f"No activation captured for {name!r}: none of the captured layers "
                    f"{self.layers} ran. Run the model inside the `with capture(...)` block "
                    "(model(x) or cap.run(model, x)).")
            if not ran:
                raise LayerNotFoundError(
                    f"No activation was stored for {name!r}: the values went to the callback.")
            raise LayerNotFoundError(
                f"Layer {name!r} did not run in the model's forward passes inside the block (the "
                f"model's forward does not call it, or not for these inputs); the captured "
                f"layers that ran: {ran}.")
        return acts[name]

    def __contains__(self, name: object) -> bool:
        return name in self._tables["output"] and bool(self._tables["output"][name])

    def clear(self) -> None:
        """Forget everything recorded so far."""
        for table in self._tables.values():
            for name in table:
                table[name] = []
        self._versions.clear()

    # -- running the model ------------------------------------------------------------------------
    def run(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``target(*args, **kwargs)`` (the model, or any function that runs it).

        With ``capture(..., stop_early=True)`` the forward pass ends right after the last selected
        layer has produced its output, and None is returned (:attr:`stopped` is True); otherwise
        the output of ``target``. The stop never escapes this call.
        """
        if self._stopper is None or not self._open:
            raise LatentSurgeonError("Captured.run() works inside the `with capture(...)` block "
                                     "only; the hooks are gone after it.")
        return self._stopper.run(target, *args, **kwargs)


def _callback_takes_kind(callback: Callable) -> bool:
    try:
        params = inspect.signature(callback).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "kind" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _check_options(callback: Callable | None, stop_early: bool, gradients: bool,
                   input_gradients: bool, inputs: bool) -> bool:
    if stop_early and (gradients or input_gradients):
        raise InvalidParameterError(
            "capture(): stop_early=True ends the forward pass after the selected layers, so "
            "nothing downstream is computed; gradients=True and input_gradients=True need the "
            f"rest of the pass. Got stop_early=True with gradients={gradients}, "
            f"input_gradients={input_gradients}.")
    if callback is None:
        return False
    if not callable(callback):
        raise InvalidParameterError(
            f"capture(): callback must be a function fn(name, tensor); got {callback!r}.")
    takes_kind = _callback_takes_kind(callback)
    if (inputs or gradients or input_gradients) and not takes_kind:
        raise InvalidParameterError(
            "capture(): with inputs=, gradients= or input_gradients= the callback receives "
            "several kinds of values and must take a `kind` keyword: "
            "fn(name, tensor, kind) with kind in 'output', 'input', 'gradient', "
            f"'input_gradient'; got {getattr(callback, '__name__', callback)!r} without one.")
    return takes_kind


@contextmanager
def capture(
    model: nn.Module,
    layers: LayerSelector,
    *,
    gradients: bool = False,
    inputs: bool = False,
    input_gradients: bool = False,
    detach: bool = True,
    accumulate: bool = False,
    copy: bool | None = None,
    callback: Callable[..., Any] | None = None,
    stop_early: bool = False,
) -> Iterator[Captured]:
    """Record the outputs (and optionally inputs and gradients) of the selected layers during
    forward passes inside the block.

    Args:
        model: the network.
        layers: layer selector (name, glob, ``path:`` glob, ``re:`` regex, class, ``Select``, or
            a list; see :func:`latentsurgeon.hooks.resolve_layers`).
        gradients: also record ``d(loss)/d(layer output)`` when ``backward()`` is called inside
            the block (the output must require grad).
        inputs: also record each layer's primary input (its first tensor argument, or first tensor
            keyword argument), ``cap.inputs[name]``.
        input_gradients: also record ``d(loss)/d(layer input)`` through the layer (a full backward
            hook: PyTorch then refuses in-place changes of the layer's output), in
            ``cap.input_gradients[name]``; the input must require grad.
        detach: store detached tensors (default). With ``detach=False`` the stored activations
            stay in the autograd graph, so ``torch.autograd.grad(y, cap["layer"])`` works.
        accumulate: keep every pass, concatenated along dim 0 (else only the latest).
        copy: store a copy of each output (and input). ``None`` (default) copies only when the
            model has a module with ``inplace=True`` (a later in-place op would overwrite the
            stored tensor) or under ``torch.inference_mode`` (where in-place changes cannot be
            detected); otherwise the output itself is kept (no copy: capture costs ~nothing). An
            in-place change that slips through (a functional ``x += ...``) is detected when the
            activation is read, and refused with an error that says to pass ``copy=True``.
        callback: ``fn(name, tensor)`` called with each output instead of storing it (the
            tensor itself, not a copy: use it or copy it before the model goes on). With
            ``inputs``/``gradients``/``input_gradients`` it must take a ``kind`` keyword
            (``"output"``, ``"input"``, ``"gradient"``, ``"input_gradient"``).
        stop_early: make :meth:`Captured.run` end each forward pass once every selected layer has
            produced its output (nothing after them runs; ``run`` returns None). Direct calls
            ``model(x)`` inside the block always run whole. Not with ``gradients`` or
            ``input_gradients``, which need the rest of the pass.

    Yields:
        :class:`Captured`; ``cap["features.3"]`` is an ``(N, ...)`` tensor, the layer's output.

    Raises:
        InvalidParameterError: ``stop_early`` with gradients; a callback that cannot take the
            values it would receive.

    The model's hooks, mode and ``requires_grad`` flags are as before when the block ends,
    whether or not it raised (or a pass was stopped).
    """
    takes_kind = _check_options(callback, stop_early, gradients, input_gradients, inputs)
    names = list(resolve_layers(model, layers))
    result = Captured(names, accumulate)
    stopper = ForwardStopper(model, names, enabled=stop_early)
    result._stopper = stopper
    auto_copy = copy is None
    if copy is None:
        copy = any(getattr(m, "inplace", False) is True for m in model.modules())

    def deliver(kind: str, name: str, tensor: torch.Tensor, last: bool = False) -> None:
        value = tensor.detach() if detach else tensor
        if callback is not None:
            if takes_kind:
                callback(name, value, kind=kind)
            else:
                callback(name, value)
            return
        if kind in ("gradient", "input_gradient"):
            result._put(kind, name, value, track=False)
            return
        # Nothing runs after the call that ends a stopped pass: its output needs no copy.
        must_copy = copy or (auto_copy and tensor.is_inference())
        if detach and must_copy and not last:
            result._put(kind, name, value.clone(), track=False)
        else:
            result._put(kind, name, value, track=True)

    def record(name: str, module: nn.Module, args: tuple, output: Any) -> None:
        tensor = primary_tensor(output)
        result._passes += 1
        completes = stopper.count(name)
        deliver("output", name, tensor, last=completes)
        if gradients and tensor.requires_grad:
            tensor.register_hook(lambda g, _n=name: deliver("gradient", _n, g))
        if completes:
            stopper.stop()

    def record_input(name: str, module: nn.Module, args: tuple, kwargs: dict) -> None:
        tensor = first_tensor(args, kwargs)
        if tensor is not None:
            deliver("input", name, tensor)

    def record_input_gradient(name: str, module: nn.Module, grad_input: tuple,
                              grad_output: tuple) -> None:
        grad = first_tensor(grad_input)
        if grad is not None:
            deliver("input_gradient", name, grad)

    with preserve_model_state(model), HookGroup() as group:
        if inputs:
            group.forward_pre(model, names, record_input, with_kwargs=True)
        group.forward(model, names, record)
        if input_gradients:
            group.backward(model, names, record_input_gradient)
        result._open = True
        try:
            yield result
        finally:
            result._open = False
