"""Reading and replacing the tensor a layer (or a model) produces, whatever container it comes in.

Plain layers return a tensor; transformer blocks return tuples (hidden state first) or
``ModelOutput`` dicts. Analysis code works on the *primary* tensor and puts a replacement back into
the same container so the rest of the network sees what it expects. :func:`select_logits` picks
the logits out of a model's structured output (the ``head=`` argument of every method).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch

from latentsurgeon.errors import LatentSurgeonError, ShapeMismatchError


def primary_tensor(output: Any) -> torch.Tensor:
    """The main tensor of a layer output: the tensor itself, the first element of a tuple/list,
    or the first tensor value of a mapping (``last_hidden_state``/``logits`` for HF outputs)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if isinstance(output, Mapping):
        for value in output.values():
            if isinstance(value, torch.Tensor):
                return value
    raise LatentSurgeonError(
        f"Cannot find a tensor in a layer output of type {type(output).__name__}; "
        "hook a layer that returns a tensor, a tuple starting with one, or a dict of tensors."
    )


def replace_primary(output: Any, new: torch.Tensor) -> Any:
    """``output`` with its primary tensor replaced by ``new``, in a container of the same type.

    ``output`` itself is never modified: a tuple (a named tuple included) or list is rebuilt, a
    mapping (a dict, an ``OrderedDict``, a HuggingFace ``ModelOutput``) is shallow-copied with
    the one entry replaced; every other element passes unchanged (the same objects).
    """
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple) and hasattr(output, "_replace") and hasattr(output, "_fields"):
        return output._replace(**{output._fields[0]: new})  # a named tuple keeps its type
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    if isinstance(output, Mapping):
        for key, value in output.items():
            if isinstance(value, torch.Tensor):
                # copy.copy keeps the class (a ModelOutput's __setitem__ also sets the attribute)
                replaced = copy.copy(output)
                replaced[key] = new
                return replaced
    raise LatentSurgeonError(f"Cannot replace the tensor in an output of type {type(output).__name__}.")


def select_logits(output: Any, head: str | int | None = "logits") -> torch.Tensor:
    """The ``(N, K)`` logits of a model output.

    Args:
        output: what the model returned.
        head: where the logits are in a structured output: a dict key or an attribute name
            (``"logits"``, HuggingFace outputs included), or an index into a tuple/list. As in
            shortcut_detect, ``head="logits"`` on a plain tuple without a ``logits`` attribute
            takes element 0. ``None``: the output must be unambiguous (a tensor, or a container
            holding exactly one tensor); several tensors raise an error asking for ``head=``.

    Raises:
        LatentSurgeonError: ``head`` names no tensor of the output, or (``head=None``) the output
            holds several tensors.
    """
    if isinstance(output, torch.Tensor):
        return output
    if head is None:
        tensors = (list(output.values()) if isinstance(output, Mapping)
                   else list(output) if isinstance(output, (tuple, list)) else [])
        tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
        if len(tensors) == 1:
            return tensors[0]
        kind = type(output).__name__
        keys = (f" (keys {list(output.keys())})" if isinstance(output, Mapping)
                else f" of {len(output)} elements" if isinstance(output, (tuple, list)) else "")
        raise LatentSurgeonError(
            f"The model returned a {kind}{keys} holding {len(tensors)} tensors; which one holds "
            "the output to explain is ambiguous. Pass head=<key or index of the logits>.")
    if isinstance(output, Mapping):
        if head in output and isinstance(output[head], torch.Tensor):
            return output[head]
        raise LatentSurgeonError(
            f"The model returned a dict without a tensor under head={head!r}; its keys are "
            f"{list(output.keys())}. Pass head=<key of the logits>.")
    if isinstance(output, (tuple, list)):
        if isinstance(head, int) and not isinstance(head, bool):
            if -len(output) <= head < len(output) and isinstance(output[head], torch.Tensor):
                return output[head]
            raise LatentSurgeonError(
                f"head={head} does not index a tensor of the model's {len(output)}-element "
                "output.")
        if isinstance(getattr(output, str(head), None), torch.Tensor):
            return getattr(output, str(head))
        if head == "logits" and output and isinstance(output[0], torch.Tensor):
            return output[0]  # shortcut_detect's convention: the logits come first
        raise LatentSurgeonError(
            f"The model returned a {type(output).__name__} of {len(output)} elements; pass the "
            f"position of the logits as head=<int> (head={head!r} names no element).")
    raise LatentSurgeonError(
        f"Cannot find logits in a model output of type {type(output).__name__}; the model must "
        "return a tensor, a tuple or a dict of tensors.")


def classification_logits(output: Any, head: str | int | None = "logits") -> torch.Tensor:
    """:func:`select_logits`, checked to be ``(N, K)`` class logits.

    Raises:
        ShapeMismatchError: the selected tensor is not 2-D (the message names ``head``).
    """
    logits = select_logits(output, head)
    if logits.dim() != 2:
        raise ShapeMismatchError(
            f"A classifier's logits must be (N, n_classes); head={head!r} selected a tensor of "
            f"shape {tuple(logits.shape)}. Pass head=<key or index of the logits>.")
    return logits
