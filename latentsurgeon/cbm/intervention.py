"""Concept interventions on a layer: a module wrapper, and a context manager on a live model.

:class:`InterventionModule` wraps the layer that predicts concepts (pytorch_concepts' signature
and semantics): its output becomes ``pred * mask + new * (1 - mask)``, where the policy's scores
decide the mask (the lowest scores are replaced) and the strategy gives ``new``.
:func:`intervention` does the same to a layer of an existing network through the one hook
mechanism, and takes everything away on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from latentsurgeon._aliases import moved
from latentsurgeon._validation import Interval, check_finite, validate_params
from latentsurgeon.cbm.masks import Concepts, build_mask
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError
from latentsurgeon.hooks import (
    HookGroup,
    get_layer,
    preserve_model_state,
    primary_tensor,
    replace_primary,
    resolve_layer,
)
from latentsurgeon.hooks.resolve import LayerSelector

__all__ = ["InterventionModule", "intervention"]

BuildContext = Callable[..., Mapping[str, Any]]

_CONSTRAINTS = {
    "quantile": Interval(float, 0, 1),
    "k": [None, Interval(int, 0, None)],
    "fraction": [None, Interval(float, 0, 1)],
}


class InterventionModule(nn.Module):
    """Wrap a concept layer so that its output is intervened on.

    Args:
        module: the layer that outputs the concepts ``(N, K)`` (a tensor, or a tuple/dict whose
            first tensor holds them; the rest passes through). Any other shape is a
            :class:`~latentsurgeon.errors.ShapeMismatchError` at the forward pass.
        strategy: gives the replacement values (:class:`GroundTruthIntervention`,
            :class:`DoIntervention`, :class:`DistributionIntervention`), called as
            ``strategy(pred, **context)``.
        policy: scores the concepts, lowest replaced first (:class:`UniformPolicy`,
            :class:`RandomPolicy`, :class:`UncertaintyPolicy`, :class:`GradientPolicy`), called
            as ``policy(pred, **context)``.
        concepts: the concepts that may be replaced (indices, or a ``(K,)`` bool mask); None: all.
        quantile: how many of the selected concepts to replace, pytorch_concepts' rule:
            ``k = max(1, min(K, 1 + floor(quantile * (K - 1))))`` and ties at the threshold too.
        build_context: ``build_context(self, pred, *inputs, **kwargs) -> dict`` of extra inputs
            for the policy and the strategy (e.g. :func:`task_gradients` gives
            ``concept_grads``); ``self`` is this module, so ``self.task_head`` reaches an extra
            module.
        extra_modules: ``{name: module}`` registered as submodules (moved, saved and listed with
            this one), e.g. ``{"task_head": head}`` for ``build_context``.
        k: replace exactly ``k`` of the selected concepts per sample (ties by concept order);
            overrides ``quantile``.
        fraction: replace ``floor(fraction * K + 1/2)`` of the selected concepts; overrides
            ``quantile``.

    After each forward pass, ``last_mask`` holds the mask it used (``(N, K)``, 1 kept, 0
    replaced).

    Raises:
        InvalidParameterError: a parameter out of range, ``k`` with ``fraction``, an extra
            module whose name is taken.
    """

    def __init__(self, module: nn.Module, strategy: Callable[..., torch.Tensor],
                 policy: Callable[..., torch.Tensor], concepts: Concepts = None,
                 quantile: float = 1.0, build_context: BuildContext | None = None,
                 extra_modules: Mapping[str, nn.Module] | None = None, *, k: int | None = None,
                 fraction: float | None = None) -> None:
        super().__init__()
        validate_params({"quantile": quantile, "k": k, "fraction": fraction}, _CONSTRAINTS,
                        owner="InterventionModule")
        if k is not None and fraction is not None:
            raise InvalidParameterError("InterventionModule: pass k= or fraction=, not both.")
        for name, value in (("strategy", strategy), ("policy", policy)):
            if not callable(value):
                raise InvalidParameterError(
                    f"InterventionModule: {name} must be callable; got {type(value).__name__}.")
        if build_context is not None and not callable(build_context):
            raise InvalidParameterError(
                "InterventionModule: build_context must be a callable "
                "(module, predictions, *args, **kwargs) -> dict or None.")
        self.module = module
        self.strategy = strategy
        self.policy = policy
        self.concepts = concepts
        self.quantile = quantile
        self.build_context = build_context
        self.k = k
        self.fraction = fraction
        self.last_mask: torch.Tensor | None = None
        for name, extra in (extra_modules or {}).items():
            if not isinstance(extra, nn.Module):
                raise InvalidParameterError(
                    f"InterventionModule: extra_modules[{name!r}] must be an nn.Module; got "
                    f"{type(extra).__name__}.")
            if hasattr(self, name):
                raise InvalidParameterError(
                    f"InterventionModule: the extra module name {name!r} is taken; choose another.")
            self.add_module(name, extra)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        output = self.module(*args, **kwargs)
        return replace_primary(output, self.intervene(primary_tensor(output), *args, **kwargs))

    def intervene(self, predictions: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The intervened version of the layer's ``predictions`` ``(N, K)``; ``args``/``kwargs``
        are what the layer received (passed on to ``build_context``)."""
        self._check_output(predictions)
        check_finite(predictions, "the concept layer's output")
        context = self._context(predictions, args, kwargs)
        scores = self.policy(predictions, **context)
        if tuple(scores.shape) != tuple(predictions.shape):
            raise ShapeMismatchError(
                f"The policy returned scores of shape {tuple(scores.shape)} for predictions of "
                f"shape {tuple(predictions.shape)}; one score per sample and concept is needed.")
        mask = self._mask(scores).to(device=predictions.device, dtype=predictions.dtype)
        new = self.strategy(predictions, **context)
        if tuple(new.shape) != tuple(predictions.shape):
            raise ShapeMismatchError(
                f"The strategy returned values of shape {tuple(new.shape)} for predictions of "
                f"shape {tuple(predictions.shape)}.")
        self.last_mask = mask.detach()
        return predictions * mask + new.to(predictions.dtype) * (1 - mask)

    # The three steps below are where another calling convention plugs in (latentsurgeon.compat.
    # torch_concepts overrides them for pytorch_concepts 1.0's code); the rest of the
    # intervention, and the mask rule itself, stay here.
    def _check_output(self, predictions: torch.Tensor, layer: str | None = None) -> None:
        """Refuse a layer output that is not ``(N, K)`` (``layer``: its name, for the message)."""
        _check_concept_output(predictions, layer)

    def _context(self, predictions: torch.Tensor, args: tuple, kwargs: dict) -> dict:
        """The policy's and strategy's extra inputs: ``build_context(self, predictions, *args,
        **kwargs)`` (the seed document's convention), or ``{}`` without one."""
        if self.build_context is None:
            return {}
        return dict(self.build_context(self, predictions, *args, **kwargs) or {})

    def _mask(self, scores: torch.Tensor) -> torch.Tensor:
        """The ``(N, K)`` mask of the ``(N, K)`` scores (1 kept, 0 replaced)."""
        return build_mask(scores.reshape(len(scores), -1), self.concepts, self.quantile,
                          k=self.k, fraction=self.fraction).reshape(scores.shape)

    def extra_repr(self) -> str:
        how = (f"k={self.k}" if self.k is not None else f"fraction={self.fraction}"
               if self.fraction is not None else f"quantile={self.quantile}")
        return f"strategy={self.strategy!r}, policy={self.policy!r}, concepts={self.concepts}, {how}"


def _check_concept_output(predictions: torch.Tensor, layer: str | None = None) -> None:
    """A concept layer outputs ``(N, K)``, one column per concept. Anything else (a conv
    layer's ``(N, C, H, W)`` map) would be intervened on as ``C * H * W`` "concepts"."""
    if predictions.dim() != 2:
        which = f"layer {layer!r}" if layer is not None else "the intervened layer"
        raise ShapeMismatchError(
            f"An intervention needs a concept layer whose output is (N, K), one column per "
            f"concept; {which} outputs shape {tuple(predictions.shape)}. Intervene on the layer "
            "that predicts the concepts (e.g. a Linear layer), not on a feature map.")


@contextmanager
@moved(("model", "layer", "strategy", "policy", "concepts", "quantile", "build_context",
        "extra_modules"))
def intervention(model: nn.Module, layer: str, strategy: Callable[..., torch.Tensor],
                 policy: Callable[..., torch.Tensor], *, concepts: Concepts = None,
                 quantile: float = 1.0, build_context: BuildContext | None = None,
                 extra_modules: Mapping[str, nn.Module] | None = None, k: int | None = None,
                 fraction: float | None = None) -> Iterator[nn.Module]:
    """Intervene on ``model``'s concept layer ``layer`` for the duration of a ``with`` block.

    Positional: model, layer, strategy, policy; the options are keyword-only (passing
    ``concepts``, ``quantile``, ``build_context``, ``extra_modules`` positionally, the earlier
    form, still works with a ``FutureWarning``).

    Every forward pass inside the block replaces the layer's output as an
    :class:`InterventionModule` with the same arguments would (``build_context`` receives that
    module, whose ``.module`` is the layer, and the layer's positional inputs). The model itself
    is not rebuilt: a forward hook does the work and is removed on exit, also after an
    exception; hooks, modes and ``requires_grad`` flags are restored.

    Example::

        with intervention(model, "concepts", GroundTruthIntervention(c, space="probs"),
                          UncertaintyPolicy(), k=1):
            logits = model(x).logits

    Yields:
        ``model``.

    Raises:
        LayerNotFoundError: ``layer`` names no single layer.
    """
    layer = resolve_layer(model, layer)
    with _attached(model, layer, InterventionModule(
            get_layer(model, layer), strategy, policy, concepts, quantile, build_context,
            extra_modules, k=k, fraction=fraction)):
        yield model


@contextmanager
def _attached(model: nn.Module, layer: LayerSelector,
              wrapper: InterventionModule) -> Iterator[InterventionModule]:
    """Run ``wrapper``'s intervention on ``layer``'s output inside the block; yields it."""

    def hook(name: str, module: nn.Module, inputs: tuple, output: Any) -> Any:
        predictions = primary_tensor(output)
        wrapper._check_output(predictions, name)
        return replace_primary(output, wrapper.intervene(predictions, *inputs))

    with preserve_model_state(model), HookGroup() as group:
        group.forward(model, layer, hook)
        yield wrapper
