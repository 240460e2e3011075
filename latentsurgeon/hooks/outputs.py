"""Reading and replacing the tensor a layer produces, whatever container it comes in.

Plain layers return a tensor; transformer blocks return tuples (hidden state first) or
``ModelOutput`` dicts. Analysis code works on the *primary* tensor and puts a replacement back into
the same container so the rest of the network sees what it expects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from latentsurgeon.errors import LatentSurgeonError


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
    """``output`` with its primary tensor replaced by ``new`` (same container type)."""
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    if isinstance(output, Mapping):
        for key, value in output.items():
            if isinstance(value, torch.Tensor):
                copy = output.__class__(output) if not hasattr(output, "to_tuple") else output
                copy[key] = new
                return copy
    raise LatentSurgeonError(f"Cannot replace the tensor in an output of type {type(output).__name__}.")
