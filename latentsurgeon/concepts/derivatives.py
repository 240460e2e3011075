"""TCAV's gradient engine: derivatives of a class logit along concept directions at a layer.

For an input ``x`` of class ``k``, a layer with activation ``a(x)`` and a unit concept direction
``v`` in the layer's *pooled* space, the directional derivative is

    S_v(x) = d/de  h_k(a(x) + e * lift(v))  at e = 0,

where ``h_k`` is the class-``k`` logit computed from the layer on, and ``lift(v)`` is the smallest
change of the activation that moves its pooled vector by ``v``:

* ``"flatten"``: ``lift(v) = v`` reshaped, so ``S_v(x) = grad.flatten() @ v``;
* ``"mean"``: ``v_c`` added at every position of channel ``c``;
* ``"max"``: ``v_c`` added at the position of channel ``c``'s maximum (the only place where a
  small change moves the maximum);
* token activations ``(N, T, D)`` (see :mod:`~latentsurgeon.activations.pooling` for when they
  count as tokens): ``v`` at every unmasked token for the mean, at the pooled token for
  ``"cls"``/``"last"``/``"position:K"``. The batch's attention mask is the one pooling uses.

The lift is :func:`latentsurgeon.activations.pooling.lift`: pooling and its gradient follow one
rule.

It is computed by inserting a zero offset ``lift(delta)`` into the layer's output (the model
access's :meth:`~latentsurgeon.activations.access.ModelAccess.offsets`) and differentiating the
logit w.r.t. ``delta``: one backward pass per batch gives the pooled-space
gradient of every input, and the derivatives along all CAVs are then one matrix product. This
works for frozen models too (nothing upstream needs to require grad), and whatever the model does
after the layer (in-place ReLU, ``out += x``) acts on the offset output, not on the layer's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.activations.batching import (
    DataLike,
    attention_mask_of,
    batch_inputs,
    iter_batches,
)
from latentsurgeon.activations.pooling import check_pooling, lift, pooled_dim, same_pooled_space
from latentsurgeon.concepts._activations import finite
from latentsurgeon.concepts.cav import CAV
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, ShapeMismatchError
from latentsurgeon.hooks import preserve_model_state, select_logits

__all__ = ["check_target", "common_pooling", "directional_derivatives", "directions",
           "gradients_and_target", "n_outputs", "pooled_gradients"]


def n_outputs(output: Any, head: str | int | None) -> int:
    """Number of outputs (logits) of a model output: ``K`` of ``(N, K, ...)``, 1 of ``(N,)``."""
    logits = select_logits(output, head)
    return 1 if logits.dim() <= 1 else int(logits.shape[1])


def check_target(target: Any, n: int) -> int:
    """``target`` as an index in ``[0, n)``; negative indices count from the end, as in Python.

    Raises:
        InvalidParameterError: not an int, or outside ``[-n, n)``.
    """
    if isinstance(target, bool) or not isinstance(target, (int, np.integer)):
        raise InvalidParameterError(
            f"tcav(): target must be an int (an output index); got {target!r}.")
    if not -n <= int(target) < n:
        raise InvalidParameterError(
            f"tcav(): target={target} is out of range: the model has {n} output"
            f"{'s' if n != 1 else ''} (valid targets 0 .. {n - 1}, or -{n} .. -1 counting from "
            "the end).")
    return int(target) % n


def _target_output(output: Any, target: int, head: str | int | None) -> torch.Tensor:
    """``(N,)`` the class-``target`` output of every input (summed over trailing dims)."""
    out = select_logits(output, head)
    if out.dim() == 1:
        return out
    return out.reshape(len(out), out.shape[1], -1)[:, target].sum(-1)


def pooled_gradients(
    model: nn.Module,
    layer: str,
    inputs: DataLike,
    target: int,
    *,
    pooling: str = "flatten",
    head: str | int | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    bar: Any = None,
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Gradient of the class-``target`` logit w.r.t. the pooled activation of ``layer``.

    Args:
        model, layer: the network and one layer name (run in eval mode; restored after).
        inputs: the inputs ``(N, ...)`` (anything ``iter_batches`` reads).
        target: the output index (negative counts from the end); checked against the model's
            number of outputs on the first batch.
        pooling: a mode of :mod:`~latentsurgeon.activations.pooling` (``"none"`` for ``(N, D)``
            layers); a dict batch's ``attention_mask`` is handed to it, as when the CAVs'
            activations were read.
        head: where the logits are in a tuple/dict output (see
            :func:`~latentsurgeon.hooks.select_logits`); None refuses an output holding several
            tensors.
        batch_size, device: of the passes (device: the model's; another one is refused).
        bar: a tqdm bar advanced once per batch.

    Returns:
        ``(G, shape)``: ``G`` is ``(N, D)`` float64 on the CPU with ``S_v(x_i) = G[i] @ v``;
        ``shape`` is the per-input activation shape of ``layer``.

    Raises:
        NonFiniteError: NaN or Inf in the inputs or the gradients.
        InvalidParameterError: ``target`` outside the model's outputs.
    """
    grads, shape, _, _ = gradients_and_target(model, layer, inputs, target, pooling=pooling,
                                           head=head, batch_size=batch_size, device=device,
                                           bar=bar)
    return grads, shape


def gradients_and_target(
    model: nn.Module,
    layer: str,
    inputs: DataLike,
    target: int,
    *,
    pooling: str,
    head: str | int | None,
    batch_size: int,
    device: str | torch.device | None,
    bar: Any = None,
) -> tuple[torch.Tensor, tuple[int, ...], int, torch.dtype]:
    """:func:`pooled_gradients`, the target as a non-negative index and the layer's dtype."""
    check_pooling(pooling)
    access = ModelAccess(model, head=head, device=device)
    layer = access.layer(layer)
    shapes: list[tuple[int, ...]] = []
    dtypes: list[torch.dtype] = []
    masks: list[torch.Tensor | None] = [None]  # the attention mask of the batch in flight

    def lift_offset(acts: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if pooling == "none" and acts.dim() > 2:
            raise ShapeMismatchError(
                "TCAV needs one vector per input: use pooling='flatten', 'max' or 'mean' for "
                f"activations of shape {tuple(acts.shape)}.")
        delta = torch.zeros(len(acts), pooled_dim(acts, pooling, masks[0]), dtype=acts.dtype,
                            device=acts.device, requires_grad=True)
        shapes.append(tuple(acts.shape[1:]))
        dtypes.append(acts.dtype)
        return delta, lift(acts, delta, pooling, masks[0])

    grads: list[torch.Tensor] = []
    checked = False
    with preserve_model_state(model), access.offsets([layer], lift=lift_offset) as probe:
        model.eval()
        for batch in iter_batches(inputs, batch_size):
            batch = finite(batch_inputs(batch), "class inputs")
            masks[0] = attention_mask_of(batch)
            output = probe.call(batch)
            if not checked:
                target = check_target(target, n_outputs(output, head))
                checked = True
            (grad,) = torch.autograd.grad(_target_output(output, target, head).sum(),
                                          probe.offset(layer), allow_unused=True)
            if grad is None:
                raise LatentSurgeonError(
                    f"The model's output does not depend on layer {layer!r}'s output.")
            grads.append(finite(grad.detach().to("cpu", torch.float64),
                                f"gradients at layer {layer!r}"))
            if bar is not None:
                bar.update(1)
    if not grads or not sum(len(g) for g in grads):
        raise LatentSurgeonError("No class inputs: the class inputs are empty.")
    return torch.cat(grads), shapes[0], target, dtypes[0]


def directions(cavs: Sequence[CAV], dim: int, shape: tuple[int, ...]) -> torch.Tensor:
    """``(n_cavs, dim)`` float64 unit directions, checked to fit the layer's activations."""
    rows = []
    for cav in cavs:
        cav._check_fitted()
        if not same_pooled_space(cav.input_shape_, shape, cav.pooling) \
                or cav.direction_.numel() != dim:
            raise ShapeMismatchError(
                f"A CAV fitted on activations of per-sample shape {tuple(cav.input_shape_)} "
                f"(pooling {cav.pooling!r}, {cav.direction_.numel()} dims) does not fit this "
                f"layer's activations {shape} pooled to {dim} dims.")
        rows.append(cav.direction_.double())
    return torch.stack(rows)


def common_pooling(cavs: Sequence[CAV]) -> str:
    """The pooling all ``cavs`` share."""
    poolings = {cav.pooling for cav in cavs}
    if len(poolings) != 1:
        raise LatentSurgeonError(f"All CAVs must share one pooling; got {sorted(poolings)}.")
    return poolings.pop()


def directional_derivatives(
    model: nn.Module,
    layer: str,
    inputs: DataLike,
    target: int,
    cavs: CAV | Sequence[CAV],
    *,
    head: str | int | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """``S_v(x)`` for every CAV and input: ``(n_cavs, N)`` float64 (see the module doc).

    All CAVs must share a pooling; one forward and one backward pass per batch serve all of them.
    """
    cavs = [cavs] if isinstance(cavs, CAV) else list(cavs)
    pooling = common_pooling(cavs)
    grads, shape = pooled_gradients(model, layer, inputs, target, pooling=pooling, head=head,
                                    batch_size=batch_size, device=device)
    return directions(cavs, grads.shape[1], shape) @ grads.T
