"""Model-state guard: what an analysis call finds, it leaves."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

# Every per-module hook table PyTorch keeps; extras found here after a call were added by it.
HOOK_TABLES = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)

# Flags with which libraries remember hooks they install lazily and keep (HuggingFace
# transformers' ``output_hidden_states`` capture hooks). Removing those hooks without restoring
# the flag would leave the library believing its hooks are still there.
_LAZY_HOOK_FLAGS = ("_output_capturing_hooks_installed",)
_MISSING = object()


class _Structure:
    """What a module holds, by identity: its class, parameters, buffers and children."""

    __slots__ = ("module", "cls", "parameters", "buffers", "children", "non_persistent")

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.cls = module.__class__
        self.parameters = dict(module._parameters)
        self.buffers = dict(module._buffers)
        self.children = dict(module._modules)
        self.non_persistent = set(module._non_persistent_buffers_set)

    def restore(self) -> None:
        module = self.module
        if module.__class__ is not self.cls:  # e.g. torch.nn.utils.parametrize swaps the class
            module.__class__ = self.cls
        for table, saved in ((module._parameters, self.parameters), (module._buffers, self.buffers),
                             (module._modules, self.children)):
            if list(table) != list(saved) or any(table[k] is not v for k, v in saved.items()):
                table.clear()  # the same dict object: code holding it sees the restored one
                table.update(saved)
        if module._non_persistent_buffers_set != self.non_persistent:
            module._non_persistent_buffers_set.clear()
            module._non_persistent_buffers_set.update(self.non_persistent)
        # A plain attribute set in place of a deleted parameter/buffer/child would shadow it.
        for name in (*self.parameters, *self.buffers, *self.children):
            module.__dict__.pop(name, None)


def _snapshot_values(structures: list[_Structure]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(tensor object, copy of its values)`` for every parameter and buffer, each once."""
    seen: set[int] = set()
    saved = []
    for structure in structures:
        for tensor in (*structure.parameters.values(), *structure.buffers.values()):
            if tensor is None or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            saved.append((tensor, tensor.detach().clone()))
    return saved


def _restore_values(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for tensor, value in saved:
            if (tensor.shape == value.shape and tensor.dtype == value.dtype
                    and tensor.device == value.device):
                tensor.copy_(value)
            else:  # resized or cast in place (``p.data = ...``): give it back its own values
                tensor.data = value


@contextmanager
def preserve_model_state(model: nn.Module, *, restore_weights: bool = False,
                         only_on_error: bool = False) -> Iterator[nn.Module]:
    """Restore hooks, ``training`` flags and ``requires_grad`` flags on exit, also after an exception.

    Args:
        model: the network to guard.
        restore_weights: also restore the model's weights exactly (costs one copy of them): every
            module gets back, by identity, its class, the parameter, buffer and child-module
            objects it held (a rebound ``module.weight = ...``, a swapped or added child, a
            parametrization are undone), and those objects get back their values (an optimizer
            step, ``p.data = ...``). An optimizer built before the block still points at the
            model's parameters afterwards. Use it around code that may train and must not keep
            the change if it fails.
        only_on_error: restore only when the block raises, and leave a block that succeeds as
            it left the model (a ``fit`` as one transaction: it keeps what it trained, or
            nothing).

    Hooks that existed before stay; hooks added inside the block are removed.
    """
    modules = list(model.modules())
    training = [m.training for m in modules]
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    hook_keys = [
        {table: set(getattr(m, table, {}).keys()) for table in HOOK_TABLES} for m in modules
    ]
    lazy_flags = [{flag: m.__dict__.get(flag, _MISSING) for flag in _LAZY_HOOK_FLAGS}
                  for m in modules]
    structures = [_Structure(m) for m in modules] if restore_weights else None
    saved = _snapshot_values(structures) if structures is not None else None
    failed = True
    try:
        yield model
        failed = False
    finally:
        if failed or not only_on_error:
            _restore(modules, training, grad_flags, hook_keys, lazy_flags, structures, saved)


def _restore(modules: list[nn.Module], training: list[bool], grad_flags: list[Any],
             hook_keys: list[dict[str, set]], lazy_flags: list[dict[str, Any]],
             structures: list[_Structure] | None, saved: Any) -> None:
    """Put back what :func:`preserve_model_state` recorded."""
    if structures is not None:
        for structure in structures:
            structure.restore()
    for module, flag in zip(modules, training, strict=True):
        module.training = flag
    for param, flag in grad_flags:
        param.requires_grad_(flag)
    for module, before in zip(modules, hook_keys, strict=True):
        for table, keys in before.items():
            hooks = getattr(module, table, None)
            if hooks is None:
                continue
            for key in [k for k in hooks if k not in keys]:
                del hooks[key]
    for module, flags in zip(modules, lazy_flags, strict=True):
        for flag, value in flags.items():
            if value is _MISSING:
                module.__dict__.pop(flag, None)
            else:
                module.__dict__[flag] = value
    if saved is not None:
        _restore_values(saved)


def hook_count(model: nn.Module) -> int:
    """Number of module hooks registered anywhere in ``model`` (for checks and tests)."""
    return sum(len(getattr(m, t, {})) for m in model.modules() for t in HOOK_TABLES
               if t not in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                            "_forward_pre_hooks_with_kwargs"))
