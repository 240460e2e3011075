"""Model surgery: a hook-free copy of a model in which chosen layers are followed by a module.

Corrections export this way (a ClArC projection becomes a real submodule after the corrected
layer), so the edit survives ``torch.save``, ``state_dict`` round-trips, ``torch.jit.trace`` and
``torch.export``. :func:`edited_copy` is the one way the library changes a model's structure.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import nn

from latentsurgeon.errors import InvalidParameterError, LayerNotFoundError
from latentsurgeon.hooks.state import _LAZY_HOOK_FLAGS, HOOK_TABLES

__all__ = ["Followed", "edited_copy"]


class Followed(nn.Sequential):
    """``layer`` then ``after``: ``after(layer(*args, **kwargs))``.

    A :class:`~torch.nn.Sequential` with children ``"0"`` (the original layer) and ``"1"``, so
    parameter names gain a ``.0`` exactly as for ``nn.Sequential(layer, after)``
    (``features.3.weight`` -> ``features.0.3.weight`` when ``features`` is followed). Unlike a
    plain ``Sequential`` it passes every positional and keyword argument to the layer
    (transformer blocks take ``attention_mask=...``, ``nn.MultiheadAttention`` three tensors), and
    ``after`` receives the layer's output in whatever structure it has (a tuple, a dict).
    """

    def __init__(self, layer: nn.Module, after: nn.Module) -> None:
        super().__init__(layer, after)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self[1](self[0](*args, **kwargs))


def _without_hooks(model: nn.Module) -> nn.Module:
    for module in model.modules():
        for table in HOOK_TABLES:
            hooks = getattr(module, table, None)
            if hooks:
                hooks.clear()
        # a library that installs hooks lazily and remembers it (HuggingFace's
        # output_hidden_states capture) must install them again on the copy when asked
        for flag in _LAZY_HOOK_FLAGS:
            module.__dict__.pop(flag, None)
    return model


def edited_copy(model: nn.Module, after: Mapping[str, nn.Module] | None = None) -> nn.Module:
    """A deep copy of ``model`` in eval mode, without module hooks, in which each layer named in
    ``after`` is followed by its module (see :class:`Followed`).

    Hooks are dropped because an attached correction's hook would otherwise be copied along and
    act twice (and hooks do not survive ``torch.save`` anyway). Hooks a library installs lazily
    and remembers (HuggingFace's ``output_hidden_states`` capture) are forgotten with them, so
    the library installs them again on the copy when asked. The model itself is unchanged.

    Args:
        model: the network.
        after: ``{canonical layer name: module}`` (exact ``named_modules()`` names; nested names
            are edited deepest first, so an outer edit does not rename an inner one).

    Returns:
        The edited copy (the copy alone when ``after`` is empty).

    Raises:
        LayerNotFoundError: a name is not one exact layer of ``model``.
        InvalidParameterError: the model itself (``""``) or a value that is not a module.
    """
    edits = dict(after or {})
    names = dict(model.named_modules())
    for name, module in edits.items():
        if name == "":
            raise InvalidParameterError(
                "after: the model itself cannot be followed by an edit; name one of its layers.")
        if name not in names:
            raise LayerNotFoundError(
                f"after: {name!r} is not an exact layer name of {type(model).__name__} (edits "
                "take the canonical names that resolve_layers returns).")
        if not isinstance(module, nn.Module):
            raise InvalidParameterError(
                f"after: the edit of {name!r} must be an nn.Module; got {type(module).__name__}.")
    target = _without_hooks(copy.deepcopy(model))
    copied = dict(target.named_modules())
    for name in sorted(edits, key=lambda n: -n.count(".")):
        parent_name, _, child = name.rpartition(".")
        parent = copied[parent_name]
        parent.add_module(child, Followed(copied[name], edits[name]))
    return target.eval()
