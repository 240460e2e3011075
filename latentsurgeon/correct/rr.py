"""RR-ClArC's pieces: which output is differentiated (masking), and how its latent gradient is
penalised against the artifact direction (loss)."""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch

from latentsurgeon.correct.projection import CHANNEL_POOLINGS, TOKEN_POOLING
from latentsurgeon.errors import InvalidParameterError

__all__ = ["RRLossType", "RRMaskingPattern", "as_enum", "latent_gradient", "masked_output",
           "rr_gradient_penalty", "rr_penalty"]

_LOGPROB_EPS = 1e-5


class RRMaskingPattern(str, Enum):
    """Which output RR-ClArC differentiates w.r.t. the layer's activations (one scalar per sample).

    ``MAX_LOGIT``: the largest logit. ``TARGET_LOGIT``: the logit of class ``target``.
    ``ALL_LOGITS``: the sum of logits. ``ALL_LOGITS_RANDOM``: the sum of logits times random
    signs (drawn per batch and sample from the correction's ``seed``). ``LOGPROBS``: the mean
    over classes of ``log(softmax + 1e-5)``.
    """

    MAX_LOGIT = "max_logit"
    TARGET_LOGIT = "target_logit"
    ALL_LOGITS = "all_logits"
    ALL_LOGITS_RANDOM = "all_logits_random"
    LOGPROBS = "logprobs"


class RRLossType(str, Enum):
    """How RR-ClArC penalises the gradient ``g`` against the direction ``v``:
    ``L2`` = mean((g.v)^2), ``L1`` = mean(|g.v|), ``COSINE`` = mean(|cos(g, v)|)."""

    L2 = "l2"
    L1 = "l1"
    COSINE = "cosine"


def as_enum(enum: type[Enum], value: Any, name: str) -> Any:
    """``value`` (a member or its string) as a member of ``enum``."""
    try:
        return enum(value.value if isinstance(value, Enum) else value)
    except ValueError:
        valid = ", ".join(repr(e.value) for e in enum)  # type: ignore[attr-defined]
        raise InvalidParameterError(
            f"{name} must be one of {valid}; got {value!r}.") from None


def masked_output(logits: torch.Tensor, masking: RRMaskingPattern | str,
                  target: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The scalar per sample RR-ClArC differentiates: ``(N, K)`` logits -> ``(N,)``.

    See :class:`RRMaskingPattern`. ``target`` is the class of ``"target_logit"``;
    ``generator`` draws the signs of ``"all_logits_random"``.
    """
    pattern = as_enum(RRMaskingPattern, masking, "masking")
    if pattern is RRMaskingPattern.MAX_LOGIT:
        return logits.max(dim=1).values
    if pattern is RRMaskingPattern.TARGET_LOGIT:
        if target is None:
            raise InvalidParameterError(
                "masking='target_logit' needs target=<class index> (the logit to "
                "differentiate); none was given.")
        if not 0 <= int(target) < logits.shape[1]:
            raise InvalidParameterError(
                f"target must lie in [0, {logits.shape[1] - 1}] for {logits.shape[1]} logits; "
                f"got {target} (out of range).")
        return logits[:, int(target)]
    if pattern is RRMaskingPattern.ALL_LOGITS:
        return logits.sum(dim=1)
    if pattern is RRMaskingPattern.ALL_LOGITS_RANDOM:
        signs = torch.randint(0, 2, tuple(logits.shape), generator=generator) * 2 - 1
        return (logits * signs.to(logits)).sum(dim=1)
    return torch.log(torch.softmax(logits, dim=1) + _LOGPROB_EPS).mean(dim=1)


def latent_gradient(gradient: torch.Tensor, pooling: str = "flatten") -> torch.Tensor:
    """Gradient w.r.t. the layer's output ``(N, ...)`` -> ``(N, D)`` in the direction's space.

    ``"flatten"``: the flattened gradient. ``"max"``/``"mean"`` (channel space): summed over the
    spatial positions, i.e. the gradient w.r.t. a shift of each channel applied at every
    position, which is how a channel-space direction acts (:func:`clarc_projection
    <latentsurgeon.correct.projection.clarc_projection>`). ``"token"`` (a ``(D,)`` direction
    at every token of ``(N, T, D)``): summed over the tokens, likewise.
    """
    if pooling == TOKEN_POOLING and gradient.dim() > 2:
        return gradient.reshape(gradient.shape[0], -1, gradient.shape[-1]).sum(dim=1)
    if pooling in CHANNEL_POOLINGS and gradient.dim() > 2:
        return gradient.sum(dim=tuple(range(2, gradient.dim())))
    return gradient.reshape(gradient.shape[0], -1)


def rr_penalty(gradient: torch.Tensor, direction: torch.Tensor,
               loss: RRLossType | str = RRLossType.L2) -> torch.Tensor:
    """RR-ClArC's penalty from ``(N, D)`` latent gradients and a ``(D,)`` direction (scalar)."""
    kind = as_enum(RRLossType, loss, "loss")
    v = direction.to(gradient)
    dot = gradient @ v
    if kind is RRLossType.L2:
        return (dot ** 2).mean()
    if kind is RRLossType.L1:
        return dot.abs().mean()
    cos = dot / (gradient.norm(dim=1) * v.norm() + 1e-12)
    return cos.abs().mean()


def rr_gradient_penalty(logits: torch.Tensor, offset: torch.Tensor, direction: torch.Tensor, *,
                        pooling: str = "flatten",
                        masking: RRMaskingPattern | str = RRMaskingPattern.MAX_LOGIT,
                        loss: RRLossType | str = RRLossType.L2, target: int | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """RR-ClArC's penalty of one batch (scalar, differentiable w.r.t. the parameters).

    ``g = d sum(m(logits)) / d offset`` (``create_graph=True``), with ``offset`` the zero offset
    added to the layer's output in the pass that produced ``logits``
    (:meth:`~latentsurgeon.activations.access.ModelAccess.offsets`); then
    :func:`rr_penalty` of :func:`latent_gradient` ``(g)`` against ``direction``. The one
    implementation: :class:`~latentsurgeon.correct.RRClarc`'s ``fit`` and the loss term
    :class:`~latentsurgeon.correct.RRClarcLoss` both call it.
    """
    m = masked_output(logits, masking, target, generator)
    (grad,) = torch.autograd.grad(m.sum(), offset, create_graph=True)
    return rr_penalty(latent_gradient(grad, pooling), direction, loss)
