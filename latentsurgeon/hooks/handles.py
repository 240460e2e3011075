"""Hook registration: handle groups and context managers that always clean up.

Hook functions receive the layer's name first so one function can serve many layers:

* forward:      ``fn(name, module, inputs, output) -> new_output | None``
* forward_pre:  ``fn(name, module, inputs) -> new_inputs | None``
* backward:     ``fn(name, module, grad_input, grad_output) -> new_grad_input | None``
  (a *full* backward hook, ``register_full_backward_hook``)

Returning ``None`` keeps the value; returning a value replaces it (corrections, patching and steering
are built this way). Nothing else in latentsurgeon registers raw PyTorch hooks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from latentsurgeon.hooks.resolve import LayerSelector, resolve_layers

ForwardHook = Callable[[str, nn.Module, tuple, Any], Any]
ForwardPreHook = Callable[[str, nn.Module, tuple], Any]
BackwardHook = Callable[[str, nn.Module, tuple, tuple], Any]


class HookGroup:
    """A set of registered hooks removed together.

    ``remove()`` is idempotent and the group is a context manager::

        with HookGroup() as group:
            group.forward(model, "features.*", fn)
            model(x)
        # hooks are gone here, also when model(x) raised
    """

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []
        self.layers: dict[str, nn.Module] = {}

    def __len__(self) -> int:
        return len(self._handles)

    def __enter__(self) -> HookGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def add(self, handle: RemovableHandle) -> RemovableHandle:
        """Adopt a handle so it is removed with the group."""
        self._handles.append(handle)
        return handle

    def _register(self, model: nn.Module, layers: LayerSelector, fn: Callable, kind: str,
                  prepend: bool = False) -> HookGroup:
        resolved = resolve_layers(model, layers)
        try:
            for name, module in resolved.items():
                bound = functools.partial(fn, name)
                if kind == "forward":
                    handle = module.register_forward_hook(bound, prepend=prepend)
                elif kind == "forward_pre":
                    handle = module.register_forward_pre_hook(bound, prepend=prepend)
                else:
                    handle = module.register_full_backward_hook(bound)
                self._handles.append(handle)
                self.layers[name] = module
        except BaseException:
            self.remove()
            raise
        return self

    def forward(self, model: nn.Module, layers: LayerSelector, fn: ForwardHook, *,
                prepend: bool = False) -> HookGroup:
        """Register ``fn(name, module, inputs, output)`` after the forward of each selected layer.

        ``prepend=True`` runs ``fn`` before the layer's hooks registered earlier, so hooks that
        *replace* the output (patching, steering) are seen by every observer, including ones
        installed before them (e.g. HuggingFace's ``output_hidden_states`` capture hooks).
        """
        return self._register(model, layers, fn, "forward", prepend)

    def forward_pre(self, model: nn.Module, layers: LayerSelector, fn: ForwardPreHook, *,
                    prepend: bool = False) -> HookGroup:
        """Register ``fn(name, module, inputs)`` before the forward of each selected layer
        (``prepend=True``: before the layer's pre-hooks registered earlier)."""
        return self._register(model, layers, fn, "forward_pre", prepend)

    def backward(self, model: nn.Module, layers: LayerSelector, fn: BackwardHook) -> HookGroup:
        """Register a full backward hook ``fn(name, module, grad_input, grad_output)``."""
        return self._register(model, layers, fn, "backward")

    def remove(self) -> None:
        """Remove every hook of the group; calling it again does nothing."""
        while self._handles:
            self._handles.pop().remove()
        self.layers = {}


@contextmanager
def hooked(
    model: nn.Module,
    layers: LayerSelector,
    *,
    forward: ForwardHook | None = None,
    forward_pre: ForwardPreHook | None = None,
    backward: BackwardHook | None = None,
) -> Iterator[HookGroup]:
    """Register hooks on the selected layers for the duration of a ``with`` block.

    Example::

        def double(name, module, inputs, output):
            return 2 * output

        with hooked(model, "features.3", forward=double):
            y = model(x)

    Raises:
        LayerNotFoundError: a selector matched no layer (nothing is registered then).
        ValueError: no hook function was given.
    """
    if forward is None and forward_pre is None and backward is None:
        raise ValueError("hooked() needs at least one of forward=, forward_pre=, backward=.")
    group = HookGroup()
    try:
        if forward_pre is not None:
            group.forward_pre(model, layers, forward_pre)
        if forward is not None:
            group.forward(model, layers, forward)
        if backward is not None:
            group.backward(model, layers, backward)
        yield group
    finally:
        group.remove()
