"""Model-state guard: what an analysis call finds, it leaves."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

# Every per-module hook table PyTorch keeps; extras found here after a call were added by it.
_HOOK_TABLES = (
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


@contextmanager
def preserve_model_state(model: nn.Module, *, restore_weights: bool = False) -> Iterator[nn.Module]:
    """Restore hooks, ``training`` flags and ``requires_grad`` flags on exit, also after an exception.

    Args:
        model: the network to guard.
        restore_weights: also snapshot parameters and buffers and copy them back on exit (costs one
            copy of the weights). Use it around code that may train and must not keep the change
            if it fails.

    Hooks that existed before stay; hooks added inside the block are removed.
    """
    modules = list(model.modules())
    training = [m.training for m in modules]
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    hook_keys = [
        {table: set(getattr(m, table, {}).keys()) for table in _HOOK_TABLES} for m in modules
    ]
    lazy_flags = [{flag: m.__dict__.get(flag, _MISSING) for flag in _LAZY_HOOK_FLAGS}
                  for m in modules]
    saved = (
        {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
        if restore_weights
        else None
    )
    try:
        yield model
    finally:
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
            with torch.no_grad():
                current = model.state_dict(keep_vars=True)
                for key, value in saved.items():
                    current[key].copy_(value)


def hook_count(model: nn.Module) -> int:
    """Number of module hooks registered anywhere in ``model`` (for checks and tests)."""
    return sum(len(getattr(m, t, {})) for m in model.modules() for t in _HOOK_TABLES
               if t not in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                            "_forward_pre_hooks_with_kwargs"))
