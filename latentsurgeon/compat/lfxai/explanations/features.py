"""lfxai's label-free feature importance (``lfxai.explanations.features``) on
:func:`latentsurgeon.explain.label_free_attribution` and
:func:`~latentsurgeon.explain.label_free_attribution_per_unit`.

Each sample is paired with its own representation whatever the attribution method does to the
batch (lfxai tiles ``f(x)`` and pairs rows wrongly for GradientShap and NoiseTunnel batches of
more than one sample). Randomness (GradientShap's draws) comes from torch's global RNG, as in
lfxai: ``torch.manual_seed`` before the call reproduces it.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from captum.attr import Attribution
from torch import nn

from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.explain import label_free_attribution, label_free_attribution_per_unit

__all__ = ["attribute_auxiliary", "attribute_individual_dim"]


def _check_method(attr_method: Any, owner: str) -> Attribution:
    if not isinstance(attr_method, Attribution):
        raise InvalidParameterError(
            f"{owner}: attr_method must be a captum attribution instance "
            f"(IntegratedGradients(model)); got {type(attr_method).__name__}.")
    return attr_method


def _baselines(baseline: Any, attr_method: Attribution, owner: str) -> Any:
    """lfxai's baseline: a tensor, a module computing one from the inputs, or None. A method
    without baselines gets none (lfxai drops it for Saliency only and passes it on as the
    ``target`` of the others, InputXGradient's for one)."""
    if "baselines" not in inspect.signature(attr_method.attribute).parameters:
        return None
    if baseline is None or isinstance(baseline, torch.Tensor):
        return baseline
    if isinstance(baseline, nn.Module):
        return baseline  # called on each batch: baselines(inputs)
    raise InvalidParameterError(
        f"{owner}: baseline must be a tensor shaped like the samples (torch.zeros(1, 1, 28, "
        f"28)), an nn.Module mapping inputs to baselines, or None; got "
        f"{type(baseline).__name__}.")


def attribute_auxiliary(encoder: nn.Module, data_loader: Any, device: torch.device,
                        attr_method: Attribution, baseline: Any = None) -> np.ndarray:
    """Label-free feature importance of every sample of ``data_loader``: ``attr_method``'s
    attributions of ``<encoder(x~), encoder(x)>`` at ``x~ = x`` (``encoder(x)`` held fixed).

    Args:
        encoder: the representation ``(N, ...) -> (N, D)``.
        data_loader: batches ``(inputs, labels)`` (or inputs), every batch explained.
        device: accepted; the attribution runs where the encoder is.
        attr_method: a captum attribution; its forward function is replaced (a copy is used:
            the caller's object is left as it is).
        baseline: a tensor, a module ``inputs -> baselines`` or None.

    Returns:
        ``(N, *input_shape)`` float32 array.
    """
    owner = "attribute_auxiliary"
    method = _check_method(attr_method, owner)
    return label_free_attribution(
        encoder, data_loader, method, baselines=_baselines(baseline, method, owner),
        seed=None, progress=False).numpy()


def attribute_individual_dim(encoder: nn.Module, dim_latent: int, data_loader: Any,
                             device: torch.device, attr_method: Attribution,
                             baseline: torch.Tensor) -> np.ndarray:
    """``|z_j(x) * a_j(x)|`` for every latent unit ``j < dim_latent``: the attribution of unit
    ``j`` weighted by its activation.

    Returns:
        ``(N, dim_latent * C, H, W)`` float32 array (lfxai's layout: the units along the channel
        axis; for one channel, ``[:, j]`` is unit ``j``).
    """
    owner = "attribute_individual_dim"
    method = _check_method(attr_method, owner)
    if isinstance(dim_latent, bool) or not isinstance(dim_latent, int) or dim_latent < 1:
        raise InvalidParameterError(
            f"{owner}: dim_latent must be an int >= 1 (the number of latent units); got "
            f"{dim_latent!r}.")
    per_unit = label_free_attribution_per_unit(
        encoder, data_loader, method, baselines=_baselines(baseline, method, owner),
        units=list(range(dim_latent)), seed=None, progress=False)
    n, units, channels = per_unit.shape[:3]
    return per_unit.reshape(n, units * channels, *per_unit.shape[3:]).numpy()
