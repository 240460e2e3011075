"""Which parameters a trained correction fine-tunes (the loop itself is
:func:`latentsurgeon.models.training.train`, the one training loop)."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from latentsurgeon.errors import LatentSurgeonError
from latentsurgeon.hooks import HookGroup, get_layer, preserve_model_state

logger = logging.getLogger(__name__)

Trainable = str | Sequence[str]


def parameters_after(model: nn.Module, layer: str, sample: Any) -> list[tuple[str, nn.Parameter]]:
    """Parameters of the modules that run *after* ``layer`` in one forward pass of ``sample``.

    Execution order is recorded with pre-forward hooks on every submodule: a module counts as
    "after" when every call of it starts after ``layer``'s forward has returned, so containers
    holding the layer and modules shared with earlier parts of the network are excluded. Parameters
    held directly by the root module are never included (their use cannot be ordered).
    """
    get_layer(model, layer)
    events: list[tuple[str, str]] = []

    def started(name: str, module: nn.Module, inputs: tuple) -> None:
        events.append(("start", name))

    def ended(name: str, module: nn.Module, inputs: tuple, output: Any) -> None:
        events.append(("end", name))

    with preserve_model_state(model), torch.no_grad(), HookGroup() as group:
        model.eval()
        group.forward_pre(model, "re:.*", started)
        group.forward(model, layer, ended)
        model(sample)
    ends = [i for i, (kind, name) in enumerate(events) if kind == "end"]
    if not ends:
        raise LatentSurgeonError(f"Layer {layer!r} did not run during a forward pass of the "
                                 "model, so nothing can be ordered after it.")
    cut = ends[-1]
    before = {name for i, (kind, name) in enumerate(events) if kind == "start" and i <= cut}
    after: list[str] = []
    for i, (kind, name) in enumerate(events):
        if kind == "start" and i > cut and name not in before and name not in after:
            after.append(name)
    modules = dict(model.named_modules())
    early = {id(p) for name in before for p in modules[name].parameters(recurse=False)}
    chosen: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    for name in after:
        for pname, param in modules[name].named_parameters(recurse=False):
            if id(param) not in early and id(param) not in seen:
                seen.add(id(param))
                chosen.append((f"{name}.{pname}", param))
    return chosen


def select_parameters(model: nn.Module, layer: str, trainable: Trainable, sample: Any
                      ) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs to fine-tune.

    Args:
        trainable: ``"above"`` (parameters of modules executed after ``layer``, see
            :func:`parameters_after`), ``"all"``, or a list of glob patterns over
            ``model.named_parameters()`` names (``["classifier.*"]``).
    """
    if isinstance(trainable, str) and trainable == "above":
        chosen = parameters_after(model, layer, sample)
        if not chosen:
            raise LatentSurgeonError(
                f"No parameters run after layer {layer!r}; choose an earlier layer or pass "
                "trainable='all' or a list of parameter-name globs.")
        return chosen
    named = list(model.named_parameters())
    if isinstance(trainable, str) and trainable == "all":
        return named
    if isinstance(trainable, str):
        raise LatentSurgeonError(
            f"trainable must be 'above', 'all' or a list of parameter-name globs; got "
            f"{trainable!r} (wrap a single glob in a list).")
    patterns = list(trainable)
    chosen = [(n, p) for n, p in named if any(fnmatch.fnmatchcase(n, g) for g in patterns)]
    if not chosen:
        names = ", ".join(n for n, _ in named[:10])
        raise LatentSurgeonError(
            f"The globs {patterns} match no parameter; parameter names look like: {names} ...")
    return chosen
