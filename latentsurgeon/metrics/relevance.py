"""Artifact relevance: how much of an attribution lands on the artifact's pixels."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency
from torch import nn

from latentsurgeon._aliases import aliased, moved
from latentsurgeon._validation import Interval, Options, check_finite, validate_params
from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.activations.batching import analysis_device, index_batches, to_tensor
from latentsurgeon.activations.masks import prepare_masks
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, ShapeMismatchError
from latentsurgeon.hooks import preserve_model_state
from latentsurgeon.metrics.accuracy import predict

__all__ = ["RELEVANCE_METHODS", "RelevanceShares", "artifact_relevance",
           "artifact_relevance_change"]

RELEVANCE_METHODS = ("input_x_gradient", "saliency", "integrated_gradients")


def _attributor(method: str, forward: Any) -> Any:
    if method == "input_x_gradient":
        return InputXGradient(forward)
    if method == "saliency":
        return Saliency(forward)
    if method == "integrated_gradients":
        return IntegratedGradients(forward)
    raise LatentSurgeonError(f"Unknown method {method!r}; expected one of {RELEVANCE_METHODS}.")


class RelevanceShares(NamedTuple):
    """Per-sample artifact relevance (``artifact_relevance(..., per_sample=True)``).

    ``shares`` ``(N,)`` holds each sample's share in ``[0, 1]`` where ``defined`` ``(N,)`` is
    True; a sample with an empty mask or a zero attribution has no share (``defined`` False,
    ``shares`` 0 there, never NaN)."""

    shares: torch.Tensor
    defined: torch.Tensor


@moved(("model", "images", "masks", "targets", "method"))
@aliased(deprecated={"images": "data", "targets": "target"})
def artifact_relevance(
    model: nn.Module,
    data: Any,
    masks: Any = None,
    *,
    target: Any = None,
    method: str = "input_x_gradient",
    batch_size: int = 128,
    device: str | torch.device | None = None,
    head: str | int = "logits",
    per_sample: bool = False,
) -> float | RelevanceShares:
    """Share of absolute attribution mass inside the artifact mask, averaged over samples.

    For each sample ``n``: ``sum(|A_n| * M_n) / sum(|A_n|)`` with ``A_n`` the attribution of the
    target logit to the input (captum; ``"input_x_gradient"`` = ``x * d logit / dx``) and ``M_n``
    the mask (broadcast over channels for spatial image masks). Samples whose mask is empty, or
    whose attribution is zero everywhere, have no share and are left out of the mean.

    The earlier spellings ``images=``, ``targets=`` and the positional order
    ``(model, images, masks, targets, method)`` still work, with a ``FutureWarning``.

    Args:
        model: classifier ``(N, ...) -> (N, K)`` (see ``head`` for structured outputs).
        data: ``(N, ...)`` inputs of any rank (images ``(N, C, H, W)``, tabular rows
            ``(N, D)``), or a split with ``.images`` (and ``.masks``).
        masks: artifact masks (1 = artifact) of the inputs' shape or their per-sample shape; for
            images also ``(H, W)``, ``(1, H, W)`` or ``(N, H, W)``, resized (nearest) when
            needed (see :func:`latentsurgeon.activations.masks.prepare_masks`); None takes
            ``data.masks``.
        target: the logit attributed: None = the model's predicted class, an int for every
            sample, or ``(N,)`` class indices (e.g. the true labels).
        method: ``"input_x_gradient"`` (default), ``"saliency"`` (|gradient|) or
            ``"integrated_gradients"`` (zero baseline, captum's defaults).
        batch_size: samples per attribution batch.
        device: deprecated (analysis runs where the model is); None or the model's device.
        head: dict key or tuple index of the logits for structured outputs.
        per_sample: return every sample's share (a :class:`RelevanceShares`) instead of the mean.

    Returns:
        The mean share in ``[0, 1]`` over the samples that have one, or the per-sample shares.

    Raises:
        InvalidParameterError: no sample has a share (every mask empty, or every attribution
            zero): there is nothing to average, and a number would be made up.
    """
    validate_params({"method": method, "batch_size": batch_size, "per_sample": per_sample},
                    {"method": Options(RELEVANCE_METHODS), "batch_size": Interval(int, 1, None),
                     "per_sample": bool}, owner="artifact_relevance()")
    if masks is None:
        masks = getattr(data, "masks", None)
        if masks is None:
            raise LatentSurgeonError("artifact_relevance() needs masks (1 = artifact elements).")
    x_all = to_tensor(getattr(data, "images", data), "data").float()
    check_finite(x_all, "artifact_relevance(): data")
    m_all = prepare_masks(masks, x_all, name="masks", owner="artifact_relevance()")
    n = len(x_all)
    dev = analysis_device(model, device)
    if target is None:
        target_all = predict(model, x_all, batch_size=batch_size, head=head)
    elif isinstance(target, int):
        target_all = torch.full((n,), int(target), dtype=torch.long)
    else:
        target_all = to_tensor(target, "target").reshape(-1).long()
        if len(target_all) != n:
            raise ShapeMismatchError(
                f"artifact_relevance(): target has {len(target_all)} entries for {n} samples.")

    access = ModelAccess(model, head=head)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return access.logits(x)

    attributor = _attributor(method, forward)
    shares = torch.zeros(n)
    defined = torch.zeros(n, dtype=torch.bool)
    empty_masks = zero_attributions = 0
    with preserve_model_state(model):
        model.eval()
        if n:
            with torch.no_grad():
                k = int(forward(x_all[:1].to(dev)).shape[1])
            if bool(((target_all < 0) | (target_all >= k)).any()):
                raise InvalidParameterError(
                    f"artifact_relevance(): target must lie in [0, {k - 1}] for a model with "
                    f"{k} outputs; got values from {int(target_all.min())} to "
                    f"{int(target_all.max())}.")
        for idx in index_batches(n, batch_size):
            x = x_all[idx].to(dev).requires_grad_(True)  # captum warns on inputs without grad
            attr = attributor.attribute(x, target=target_all[idx].to(dev)).detach()
            attr = check_finite(attr, "artifact_relevance(): the attributions").abs()
            m = torch.broadcast_to(m_all[idx].to(dev), attr.shape)
            total = attr.flatten(1).sum(1)
            inside = (attr * m).flatten(1).sum(1)
            has_mask = m.flatten(1).sum(1) > 0
            valid = (total > 0) & has_mask
            empty_masks += int((~has_mask).sum())
            zero_attributions += int((has_mask & (total <= 0)).sum())
            shares[idx] = torch.where(valid, inside / total.clamp_min(1e-30), 0.0).cpu()
            defined[idx] = valid.cpu()
    if zero_attributions:
        warnings.warn(
            f"artifact_relevance(): the attribution ({method}) is zero everywhere for "
            f"{zero_attributions} of {n} samples with a non-empty mask; they have no share and "
            "are left out (a model whose output does not depend on its input there?).",
            UserWarning, stacklevel=2)
    if per_sample:
        return RelevanceShares(shares, defined)
    if not bool(defined.any()):
        raise InvalidParameterError(
            f"artifact_relevance(): no sample has a share to average: masks are empty for "
            f"{empty_masks} of {n} samples and the attribution is zero for the other "
            f"{n - empty_masks}; expected masks with at least one artifact element where the "
            "attribution is not zero.")
    return float(shares[defined].mean())


@moved(("before", "after", "images", "masks", "targets"))
@aliased(deprecated={"images": "data", "targets": "target"})
def artifact_relevance_change(before: nn.Module, after: nn.Module, data: Any, masks: Any = None,
                              *, target: Any = None, **kwargs: Any) -> dict[str, float | None]:
    """:func:`artifact_relevance` of two models on the same inputs and targets.

    With ``target=None`` both models are asked about the *uncorrected* model's predictions, so
    the comparison attributes the same logits.

    Returns:
        ``{"before", "after", "reduction"}`` with ``reduction = 1 - after / before`` (None when
        ``before`` is 0: no relevance to reduce).
    """
    if target is None:
        x = to_tensor(getattr(data, "images", data), "data").float()
        target = predict(before, x, batch_size=kwargs.get("batch_size", 128),
                         device=kwargs.get("device"), head=kwargs.get("head", "logits"))
    r0 = float(artifact_relevance(before, data, masks, target=target, **kwargs))
    r1 = float(artifact_relevance(after, data, masks, target=target, **kwargs))
    return {"before": r0, "after": r1, "reduction": 1.0 - r1 / r0 if r0 > 0 else None}
