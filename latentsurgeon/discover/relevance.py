"""Relevance of every sample w.r.t. its own class's logit: at the input and at a layer.

For a sample ``x`` of class ``y`` with logit ``f_y(x)``:

* **input relevance** ``R(x)`` has the input's shape. The default ``"input_x_gradient"`` is
  ``x * d f_y / d x``; ``"saliency"`` is ``|d f_y / d x|``; ``"integrated_gradients"`` is
  captum's (zero baseline, its default number of steps).
* **concept relevance** at ``layer`` (CRP's channel relevance for the gradient x activation
  rule): ``r_c(x) = sum_positions a_c(x) * d f_y / d a_c(x)``, one number per channel
  ``(N, C)`` (a dense layer's ``(N, D)`` is its own per-unit relevance).

With ``"input_x_gradient"`` or ``"saliency"`` both come from **one forward and one backward
pass per batch**: the input requires grad, the model access adds its zero offset at the layer
(:meth:`~latentsurgeon.activations.access.ModelAccess.offsets`, so whatever the model does after
the layer acts on the offset output), and one ``autograd.grad`` of the summed own-class logits
gives both gradients (samples are independent in eval mode, so the gradient of the sum w.r.t.
one sample's tensors is that sample's own). Integrated gradients runs captum per batch, plus the
one pass for the layer.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from captum.attr import IntegratedGradients
from torch import nn
from tqdm.auto import tqdm

from latentsurgeon._validation import Interval, Options, check_finite, validate_params
from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.activations.batching import (
    DataLike,
    batch_inputs,
    iter_batches,
    n_batches,
    to_tensor,
)
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, ShapeMismatchError
from latentsurgeon.hooks import classification_logits, preserve_model_state

__all__ = ["RELEVANCE_METHODS", "Relevance", "relevance"]

#: The input attributions :func:`relevance` computes.
RELEVANCE_METHODS = ("input_x_gradient", "saliency", "integrated_gradients")


@dataclass(frozen=True)
class Relevance:
    """What :func:`relevance` returns (CPU float32 tensors).

    Attributes:
        input_relevance: ``(N, *input_shape)`` input relevance; None with ``at_input=False``.
        concepts: ``(N, C)`` concept relevance at ``layer``; None without a layer.
        target: ``(N,)`` int64: the logit each sample was explained for (its label, or its
            predicted class when no labels were given).
        logits: ``(N, K)`` the model's logits.
        layer: the canonical layer name, or None.
        method: the input attribution method.
    """

    input_relevance: torch.Tensor | None
    concepts: torch.Tensor | None
    target: torch.Tensor
    logits: torch.Tensor
    layer: str | None
    method: str

    def __len__(self) -> int:
        return int(self.target.numel())


def _labels_of(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, (tuple, list)) and len(batch) > 1 and isinstance(batch[1], torch.Tensor):
        return batch[1].reshape(-1).long()
    return None


def _concept_relevance(acts: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``(N, C, *spatial) -> (N, C)``: activation x gradient summed over positions."""
    prod = acts.detach() * grad
    return prod.flatten(2).sum(2) if prod.dim() > 2 else prod.reshape(len(prod), -1)


def relevance(
    model: nn.Module,
    data: DataLike,
    *,
    layer: str | None = None,
    labels: Any = None,
    method: str = "input_x_gradient",
    at_input: bool = True,
    head: str | int | None = "logits",
    batch_size: int = 64,
    progress: bool = True,
) -> Relevance:
    """Relevance of every sample of ``data`` for its own class's logit (see the module doc).

    Args:
        model: a classifier ``(N, ...) -> (N, K)`` (run in eval mode; its state is restored).
        data: anything the batcher reads; labels come from ``labels=``, else from the batches'
            second element (``(inputs, labels)``, a split's ``.labels``), else the predicted
            class is explained.
        layer: one layer for concept relevance (None: input relevance only).
        labels: ``(N,)`` class indices overriding the data's labels.
        method: ``"input_x_gradient"`` (default), ``"saliency"`` or ``"integrated_gradients"``.
        at_input: also return the input relevance (False: only the layer's).
        head: where the logits are in a structured output.
        batch_size: samples per pass.
        progress: a tqdm bar over batches.

    Returns:
        A :class:`Relevance`.

    Raises:
        InvalidParameterError: a bad option, labels outside ``[0, K)``, or neither a layer nor
            input relevance asked for.
        NonFiniteError: NaN or Inf in the inputs or the relevance.
        LatentSurgeonError: no samples; the output does not depend on the layer.
    """
    validate_params({"method": method, "batch_size": batch_size, "at_input": at_input,
                     "progress": progress},
                    {"method": Options(RELEVANCE_METHODS), "batch_size": Interval(int, 1, None),
                     "at_input": bool, "progress": bool}, owner="relevance()")
    if not at_input and layer is None:
        raise InvalidParameterError(
            "relevance(): at_input=False needs a layer (otherwise there is nothing to compute); "
            "got layer=None.")
    access = ModelAccess(model, None if layer is None else [layer], head=head)
    name = access.layers[0] if layer is not None else None
    given = None if labels is None else to_tensor(labels, "labels").reshape(-1).long()
    probe: Any = None

    def ig_forward(x: torch.Tensor) -> torch.Tensor:
        if probe is not None:  # the layer's offsets of this batch are read already
            probe.clear()
        return access.logits(x)

    ig = IntegratedGradients(ig_forward) if method == "integrated_gradients" else None
    out_in: list[torch.Tensor] = []
    out_c: list[torch.Tensor] = []
    out_t: list[torch.Tensor] = []
    out_l: list[torch.Tensor] = []
    seen = 0
    bar = tqdm(total=n_batches(data, batch_size), disable=None if progress else True,
               desc="relevance", leave=False)
    with preserve_model_state(model):
        model.eval()
        with ExitStack() as stack:
            probe = stack.enter_context(access.offsets([name])) if name is not None else None
            for batch in iter_batches(data, batch_size):
                x = check_finite(access.prepare(batch_inputs(batch)), "relevance(): data")
                if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                    raise InvalidParameterError(
                        "relevance(): data must hold floating-point input tensors; got "
                        f"{type(x).__name__}" + (f" of {x.dtype}" if isinstance(x, torch.Tensor)
                                                 else "") + ".")
                x = x.detach().requires_grad_(at_input and ig is None)
                output = probe.call(x) if probe is not None else access.call(x)
                logits = classification_logits(output, access.head)
                if logits.dim() != 2:
                    raise ShapeMismatchError(
                        f"relevance(): the model must give (N, K) logits; got {tuple(logits.shape)}.")
                n, k = logits.shape
                target = _batch_target(given, batch, logits, seen, n)
                if bool(((target < 0) | (target >= k)).any()):
                    raise InvalidParameterError(
                        f"relevance(): labels must lie in [0, {k - 1}] for a model with {k} "
                        f"outputs; got values from {int(target.min())} to {int(target.max())}.")
                chosen = logits.gather(1, target.to(logits.device)[:, None]).sum()
                wrt = ([x] if at_input and ig is None else []) + \
                    ([probe.offset(name)] if probe is not None else [])
                grads = torch.autograd.grad(chosen, wrt, allow_unused=True)
                if probe is not None:
                    g = grads[-1]
                    if g is None:
                        raise LatentSurgeonError(
                            f"relevance(): the model's output does not depend on layer {name!r}.")
                    out_c.append(check_finite(_concept_relevance(probe.output(name), g),
                                              "relevance(): the concept relevance")
                                 .float().cpu())
                if at_input:
                    if ig is not None:
                        attr = ig.attribute(x.detach(), target=target.to(x.device))
                    else:
                        gx = grads[0] if grads[0] is not None else torch.zeros_like(x)
                        attr = x.detach() * gx if method == "input_x_gradient" else gx.abs()
                    out_in.append(check_finite(attr.detach(), "relevance(): the input relevance")
                                  .float().cpu())
                out_t.append(target.cpu())
                out_l.append(logits.detach().float().cpu())
                seen += n
                bar.update(1)
    bar.close()
    if not seen:
        raise LatentSurgeonError("relevance(): data holds no samples.")
    if given is not None and len(given) != seen:
        raise ShapeMismatchError(
            f"relevance(): labels has {len(given)} entries for {seen} samples.")
    return Relevance(torch.cat(out_in) if at_input else None,
                     torch.cat(out_c) if name is not None else None,
                     torch.cat(out_t), torch.cat(out_l), name, method)


def _batch_target(given: torch.Tensor | None, batch: Any, logits: torch.Tensor, seen: int,
                  n: int) -> torch.Tensor:
    if given is not None:
        if len(given) < seen + n:
            raise ShapeMismatchError(
                f"relevance(): labels has {len(given)} entries, fewer than the samples of data.")
        return given[seen:seen + n]
    own = _labels_of(batch)
    if own is not None:
        if len(own) != n:
            raise ShapeMismatchError(
                f"relevance(): a batch holds {n} inputs but {len(own)} labels.")
        return own.cpu()
    return logits.detach().argmax(1).cpu()
