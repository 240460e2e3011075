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
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.hooks.resolve import LayerSelector, resolve_layers

ForwardHook = Callable[[str, nn.Module, tuple, Any], Any]
ForwardPreHook = Callable[[str, nn.Module, tuple], Any]
BackwardHook = Callable[[str, nn.Module, tuple, tuple], Any]

# What each kind of hook function receives (ours: the layer name first), and PyTorch's own form.
_SIGNATURES = {
    "forward": ("fn(name, module, inputs, output)", "fn(module, inputs, output)"),
    "forward_pre": ("fn(name, module, inputs)", "fn(module, inputs)"),
    "forward_pre_kwargs": ("fn(name, module, args, kwargs)", "fn(module, args, kwargs)"),
    "backward": ("fn(name, module, grad_input, grad_output)",
                 "fn(module, grad_input, grad_output)"),
}
_ARITY = {"forward": 4, "forward_pre": 3, "forward_pre_kwargs": 4, "backward": 4}


def check_hook_function(fn: Any, kind: str, argument: str = "fn") -> None:
    """Raise :class:`InvalidParameterError` unless ``fn`` can be called as a ``kind`` hook of ours
    (the layer name first). A PyTorch-style hook (one parameter fewer) gets a message saying so.

    Callables whose signature cannot be read (some builtins) or that take ``*args`` pass.
    """
    ours, torchs = _SIGNATURES[kind]
    if not callable(fn):
        raise InvalidParameterError(
            f"{argument} must be a hook function {ours}; got {fn!r} (a {type(fn).__name__}).")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = list(signature.parameters.values())
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return
    positional = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                   inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is inspect.Parameter.empty]
    needed = _ARITY[kind]
    if len(positional) >= needed and len(required) <= needed:
        return
    given = f"{getattr(fn, '__name__', type(fn).__name__)}{signature}"
    if len(positional) == needed - 1:
        raise InvalidParameterError(
            f"{argument} must be a hook function {ours}, with the layer's name first; got "
            f"{given}, which has PyTorch's hook signature {torchs}. Add a first parameter for "
            "the layer name (one function then serves every selected layer).")
    raise InvalidParameterError(
        f"{argument} must be a hook function {ours} ({needed} positional parameters); got "
        f"{given} ({len(positional)} positional parameters, {len(required)} required).")


class HookGroup:
    """A set of registered hooks removed together.

    ``remove()`` is idempotent, the group is a context manager, and iterating it yields its
    ``torch.utils.hooks.RemovableHandle`` objects (so a list of handles is ``list(group)``)::

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

    def __iter__(self) -> Iterator[RemovableHandle]:
        """The registered handles, in registration order (a snapshot: removing a handle while
        iterating is safe). detoxai-style code ``for h in hooks: h.remove()`` works on a group;
        a handle removed that way stays removed, and ``remove()`` afterwards does nothing more."""
        return iter(tuple(self._handles))

    def __enter__(self) -> HookGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def add(self, handle: RemovableHandle) -> RemovableHandle:
        """Adopt a handle so it is removed with the group."""
        self._handles.append(handle)
        return handle

    def _register(self, model: nn.Module, layers: LayerSelector, fn: Callable, kind: str,
                  prepend: bool = False, argument: str = "fn") -> HookGroup:
        check_hook_function(fn, kind, argument)
        resolved = resolve_layers(model, layers)
        try:
            for name, module in resolved.items():
                bound = functools.partial(fn, name)
                if kind == "forward":
                    handle = module.register_forward_hook(bound, prepend=prepend)
                elif kind == "forward_pre":
                    handle = module.register_forward_pre_hook(bound, prepend=prepend)
                elif kind == "forward_pre_kwargs":
                    handle = module.register_forward_pre_hook(bound, prepend=prepend,
                                                              with_kwargs=True)
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
                    prepend: bool = False, with_kwargs: bool = False) -> HookGroup:
        """Register ``fn(name, module, inputs)`` before the forward of each selected layer
        (``prepend=True``: before the layer's pre-hooks registered earlier).

        ``with_kwargs=True``: ``fn(name, module, args, kwargs)`` also sees keyword arguments
        (transformer blocks are often called with ``hidden_states=...``) and may return
        ``(new_args, new_kwargs)``.
        """
        kind = "forward_pre_kwargs" if with_kwargs else "forward_pre"
        return self._register(model, layers, fn, kind, prepend)

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
        InvalidParameterError: no hook function was given, or one does not take the layer's name
            first (a PyTorch-style ``fn(module, inputs, output)``); nothing is registered then.
    """
    if forward is None and forward_pre is None and backward is None:
        raise InvalidParameterError(
            "hooked() needs at least one of forward=, forward_pre=, backward=; got none.")
    # Every function is checked before anything is registered: a bad one changes nothing.
    for fn, kind, argument in ((forward_pre, "forward_pre", "forward_pre"),
                               (forward, "forward", "forward"),
                               (backward, "backward", "backward")):
        if fn is not None:
            check_hook_function(fn, kind, argument)
    group = HookGroup()
    try:
        if forward_pre is not None:
            group._register(model, layers, forward_pre, "forward_pre", argument="forward_pre")
        if forward is not None:
            group._register(model, layers, forward, "forward", argument="forward")
        if backward is not None:
            group._register(model, layers, backward, "backward", argument="backward")
        yield group
    finally:
        group.remove()
