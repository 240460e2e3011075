"""Artifact relevance: how much of an attribution lands on the artifact's pixels."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency
from torch import nn

from latentsurgeon._validation import Interval, Options, check_finite, validate_params
from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.activations.batching import analysis_device, index_batches, to_tensor
from latentsurgeon.activations.masks import prepare_masks
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, ShapeMismatchError
from latentsurgeon.hooks import preserve_model_state
from latentsurgeon.metrics.accuracy import predict

__all__ = ["RELEVANCE_METHODS", "artifact_relevance", "artifact_relevance_change"]

logger = logging.getLogger(__name__)

RELEVANCE_METHODS = ("input_x_gradient", "saliency", "integrated_gradients")


def _attributor(method: str, forward: Any) -> Any:
    if method == "input_x_gradient":
        return InputXGradient(forward)
    if method == "saliency":
        return Saliency(forward)
    if method == "integrated_gradients":
        return IntegratedGradients(forward)
    raise LatentSurgeonError(f"Unknown method {method!r}; expected one of {RELEVANCE_METHODS}.")


def artifact_relevance(
    model: nn.Module,
    images: Any,
    masks: Any = None,
    targets: Any = None,
    method: str = "input_x_gradient",
    *,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    head: str | int = "logits",
    per_sample: bool = False,
) -> float | torch.Tensor:
    """Share of absolute attribution mass inside the artifact mask, averaged over samples.

    For each sample ``n``: ``sum(|A_n| * M_n) / sum(|A_n|)`` with ``A_n`` the attribution of the
    target logit to the input (captum; ``"input_x_gradient"`` = ``x * d logit / dx``) and ``M_n``
    the mask (broadcast over channels for spatial image masks). Samples whose mask is empty, or
    whose attribution is zero everywhere, have no share and are left out of the mean.

    Args:
        model: classifier ``(N, ...) -> (N, K)`` (see ``head`` for structured outputs).
        images: ``(N, ...)`` inputs of any rank (images ``(N, C, H, W)``, tabular rows
            ``(N, D)``), or a split with ``.images`` (and ``.masks``).
        masks: artifact masks (1 = artifact) of the inputs' shape or their per-sample shape; for
            images also ``(H, W)``, ``(1, H, W)`` or ``(N, H, W)``, resized (nearest) when
            needed (see :func:`latentsurgeon.activations.masks.prepare_masks`); None takes
            ``images.masks``.
        targets: the logit attributed: None = the model's predicted class, an int for every
            sample, or ``(N,)`` class indices (e.g. the true labels).
        method: ``"input_x_gradient"`` (default), ``"saliency"`` (|gradient|) or
            ``"integrated_gradients"`` (zero baseline, captum's defaults).
        batch_size: samples per attribution batch.
        device: None or the model's device (an analysis never moves the model).
        head: dict key or tuple index of the logits for structured outputs.
        per_sample: return the ``(N,)`` shares (NaN where undefined) instead of their mean.

    Returns:
        The mean share in ``[0, 1]`` (NaN if no sample has a share), or the per-sample tensor.
    """
    validate_params({"method": method, "batch_size": batch_size, "per_sample": per_sample},
                    {"method": Options(RELEVANCE_METHODS), "batch_size": Interval(int, 1, None),
                     "per_sample": bool}, owner="artifact_relevance()")
    if masks is None:
        masks = getattr(images, "masks", None)
        if masks is None:
            raise LatentSurgeonError("artifact_relevance() needs masks (1 = artifact elements).")
    x_all = to_tensor(getattr(images, "images", images), "images").float()
    check_finite(x_all, "artifact_relevance(): images")
    m_all = prepare_masks(masks, x_all, name="masks", owner="artifact_relevance()")
    n = len(x_all)
    dev = analysis_device(model, device)
    if targets is None:
        target_all = predict(model, x_all, batch_size=batch_size, device=dev, head=head)
    elif isinstance(targets, int):
        target_all = torch.full((n,), int(targets), dtype=torch.long)
    else:
        target_all = to_tensor(targets, "targets").reshape(-1).long()
        if len(target_all) != n:
            raise ShapeMismatchError(f"targets has {len(target_all)} entries for {n} images.")

    access = ModelAccess(model, head=head, device=device)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return access.logits(x)

    attributor = _attributor(method, forward)
    shares = torch.full((n,), math.nan)
    with preserve_model_state(model):
        model.eval()
        if n:
            with torch.no_grad():
                k = int(forward(x_all[:1].to(dev)).shape[1])
            if bool(((target_all < 0) | (target_all >= k)).any()):
                raise InvalidParameterError(
                    f"artifact_relevance(): targets must lie in [0, {k - 1}] for a model with "
                    f"{k} outputs; got values from {int(target_all.min())} to "
                    f"{int(target_all.max())}.")
        for idx in index_batches(n, batch_size):
            x = x_all[idx].to(dev).requires_grad_(True)  # captum warns on inputs without grad
            attr = attributor.attribute(x, target=target_all[idx].to(dev)).detach()
            attr = check_finite(attr, "artifact_relevance(): the attributions").abs()
            m = torch.broadcast_to(m_all[idx].to(dev), attr.shape)
            total = attr.flatten(1).sum(1)
            inside = (attr * m).flatten(1).sum(1)
            valid = (total > 0) & (m.flatten(1).sum(1) > 0)
            share = torch.where(valid, inside / total.clamp_min(1e-30), torch.nan)
            shares[idx] = share.cpu()
    if per_sample:
        return shares
    valid = ~torch.isnan(shares)
    if not bool(valid.any()):
        logger.warning("artifact_relevance: no sample has a non-empty mask and a non-zero "
                       "attribution; returning NaN")
        return math.nan
    return float(shares[valid].mean())


def artifact_relevance_change(before: nn.Module, after: nn.Module, images: Any, masks: Any = None,
                              targets: Any = None, **kwargs: Any) -> dict[str, float]:
    """:func:`artifact_relevance` of two models on the same inputs and targets.

    With ``targets=None`` both models are asked about the *uncorrected* model's predictions, so
    the comparison attributes the same logits.

    Returns:
        ``{"before", "after", "reduction"}`` with ``reduction = 1 - after / before``.
    """
    if targets is None:
        x = to_tensor(getattr(images, "images", images), "images").float()
        targets = predict(before, x, batch_size=kwargs.get("batch_size", 128),
                          device=kwargs.get("device"), head=kwargs.get("head", "logits"))
    r0 = float(artifact_relevance(before, images, masks, targets, **kwargs))
    r1 = float(artifact_relevance(after, images, masks, targets, **kwargs))
    return {"before": r0, "after": r1, "reduction": 1.0 - r1 / r0 if r0 > 0 else math.nan}
