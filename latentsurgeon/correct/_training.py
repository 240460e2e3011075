"""Which parameters a trained correction fine-tunes (the loop itself is
:func:`latentsurgeon.training.train`, the one training loop).

``trainable="above"`` is defined by data flow: the parameters that receive gradient *through the
corrected layer's output*. One forward pass builds the autograd graph with a zero offset added to
the layer's output (:meth:`~latentsurgeon.activations.access.ModelAccess.offsets`); a parameter is above the layer when an operation that depends on
that perturbation consumes it (directly or through parameter-only operations such as a
transpose). So in a residual block, correcting ``block.bn2`` trains what consumes ``bn2``'s
output, not the skip branch that merely runs later, and a module that also runs before the layer
(weight sharing) is left alone: training it would change the layer's own input.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.errors import LatentSurgeonError
from latentsurgeon.hooks import preserve_model_state

logger = logging.getLogger(__name__)

Trainable = str | Sequence[str]

__all__ = ["Trainable", "parameters_above", "select_parameters"]


def _tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor of a (nested) model output."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    if hasattr(value, "to_tuple"):  # HuggingFace ModelOutput
        return _tensors(value.to_tuple())
    return []


def _marked_input(sample: Any) -> Any:
    # Float inputs get requires_grad so that data-carrying branches (a skip connection from the
    # input) are told apart from parameter-only operations in the graph.
    if isinstance(sample, torch.Tensor):
        sample = sample.detach()
        return sample.requires_grad_(True) if sample.is_floating_point() else sample
    if isinstance(sample, Mapping):
        return {k: _marked_input(v) for k, v in sample.items()}
    if isinstance(sample, (tuple, list)):
        return type(sample)(_marked_input(v) for v in sample)
    return sample


class _Graph:
    """The autograd graph below some roots, walked without recursion."""

    def __init__(self, roots: list[Any]) -> None:
        self.children: dict[int, list[Any]] = {}
        self.nodes: dict[int, Any] = {}
        stack = [r for r in roots if r is not None]
        while stack:
            node = stack.pop()
            if id(node) in self.nodes:
                continue
            self.nodes[id(node)] = node
            kids = [fn for fn, _ in node.next_functions if fn is not None]
            self.children[id(node)] = kids
            stack.extend(kids)

    def postorder(self, roots: list[Any]) -> list[Any]:
        order: list[Any] = []
        done: set[int] = set()
        stack: list[tuple[Any, bool]] = [(r, False) for r in roots if r is not None]
        while stack:
            node, expanded = stack.pop()
            if id(node) in done:
                continue
            if expanded:
                done.add(id(node))
                order.append(node)
                continue
            stack.append((node, True))
            stack.extend((c, False) for c in self.children[id(node)] if id(c) not in done)
        return order


def _leaf(node: Any) -> Any:
    return getattr(node, "variable", None)


def parameters_above(model: nn.Module, layers: str | Sequence[str], sample: Any
                     ) -> list[tuple[str, nn.Parameter]]:
    """Parameters that receive gradient through the output of ``layers`` (see module doc).

    Args:
        model: the network.
        layers: one exact layer name or a list of them (then: through any of their outputs,
            excluding parameters that any of them depends on).
        sample: one batch of model input (a single sample suffices); the model runs once on it
            in eval mode, with its state restored afterwards.

    Returns:
        ``(name, parameter)`` pairs in ``model.named_parameters()`` order.
    """
    access = ModelAccess(model, [layers] if isinstance(layers, str) else list(layers))
    names = list(access.layers)

    with preserve_model_state(model), access.offsets(max_calls=None) as probe:
        model.eval()
        for param in model.parameters():
            param.requires_grad_(True)
        output = probe.call(_marked_input(sample))
        probes = [o for n in names for o in probe.offsets[n]]
        raw_nodes = [t.grad_fn for n in names for t in probe.outputs[n]]
        if not probes:
            raise LatentSurgeonError(
                f"Layer(s) {names} did not run during a forward pass of the model, so nothing "
                "can be found above them.")
        roots = [t.grad_fn for t in _tensors(output) if t.grad_fn is not None]
        param_ids = {id(p) for p in model.parameters()}
        probe_ids = {id(p) for p in probes}
        graph = _Graph(roots)
        reaches: dict[int, bool] = {}
        param_only: dict[int, bool] = {}
        for node in graph.postorder(roots):
            kids = graph.children[id(node)]
            leaf = _leaf(node)
            if leaf is not None:
                reaches[id(node)] = id(leaf) in probe_ids
                param_only[id(node)] = id(leaf) in param_ids
                continue
            reaches[id(node)] = any(reaches[id(k)] for k in kids)
            param_only[id(node)] = all(param_only[id(k)] for k in kids)
        down: set[int] = set()
        for key in graph.nodes:
            if not reaches[key]:
                continue
            for kid in graph.children[key]:
                if param_only[id(kid)]:
                    down.update(id(_leaf(n)) for n in _Graph([kid]).nodes.values()
                                if _leaf(n) is not None)
        upstream = {id(_leaf(n)) for n in _Graph(raw_nodes).nodes.values()
                    if _leaf(n) is not None}
    chosen = [(n, p) for n, p in model.named_parameters() if id(p) in down
              and id(p) not in upstream]
    logger.debug("parameters above %s: %s", names, [n for n, _ in chosen])
    return chosen


def select_parameters(model: nn.Module, layers: str | Sequence[str], trainable: Trainable,
                      sample: Any) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs to fine-tune.

    Args:
        trainable: ``"above"`` (parameters that receive gradient through the layers' output, see
            :func:`parameters_above`), ``"all"``, or a list of glob patterns over
            ``model.named_parameters()`` names (``["classifier.*"]``).
    """
    if isinstance(trainable, str) and trainable == "above":
        chosen = parameters_above(model, layers, sample)
        if not chosen:
            raise LatentSurgeonError(
                f"No parameter receives gradient through the output of {layers!r}; choose an "
                "earlier layer or pass trainable='all' or a list of parameter-name globs.")
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
