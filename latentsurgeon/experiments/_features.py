"""Label-free feature importance as the experiments use it, and masks built from it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError
from latentsurgeon.explain import FEATURE_METHODS, label_free_attribution

__all__ = ["STUDIED_METHODS", "feature_importance", "random_scores", "top_feature_masks"]

#: The attribution methods of lfxai's feature experiments: names of the one table
#: (:data:`latentsurgeon.explain.FEATURE_METHODS`), run with lfxai's settings below.
STUDIED_METHODS = ("saliency", "integrated_gradients", "gradient_shap")

LABELS = {**{name: FEATURE_METHODS[name].label for name in STUDIED_METHODS}, "random": "random"}


def feature_importance(model: nn.Module, inputs: torch.Tensor, method: str, *, layer: str,
                       seed: int, ig_steps: int = 32, shap_samples: int = 16,
                       batch_size: int = 128) -> torch.Tensor:
    """Label-free importance of every input feature for ``layer``'s representation.

    ``"saliency"``: the absolute gradient; ``"integrated_gradients"``: ``ig_steps`` steps from
    a black (all-zero) input; ``"gradient_shap"``: ``shap_samples`` draws against the same black
    baseline (lfxai's setting; with one baseline GradientShap is Integrated Gradients at random
    interpolation points, so the two agree closely). Returns a tensor shaped like ``inputs``.
    """
    black = torch.zeros_like(inputs[:1])
    if method not in STUDIED_METHODS:
        raise InvalidParameterError(
            f"method must be one of {STUDIED_METHODS}; got {method!r}.")
    spec: Any = FEATURE_METHODS[method].attribution
    kwargs = {"saliency": {},
              "integrated_gradients": {"baselines": black, "n_steps": ig_steps},
              "gradient_shap": {"baselines": black, "n_samples": shap_samples}}[method]
    return label_free_attribution(model, inputs, spec, layer=layer, seed=seed,
                                  batch_size=batch_size, progress=False, **kwargs)


def random_scores(shape: torch.Size | tuple[int, ...], seed: int) -> torch.Tensor:
    """Uniform random importance scores (the random ranking every method is compared with)."""
    return torch.rand(tuple(shape), generator=torch.Generator().manual_seed(int(seed)))


def top_feature_masks(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Multiplicative masks ``(N, 1, *spatial)`` that zero the ``k`` positions of each sample
    whose importance, ``|scores|`` summed over the channel axis (lfxai's convention), is
    highest; ties go to the lower position, so the masks are deterministic.

    Args:
        scores: ``(N, C, *spatial)`` importance scores.
        k: how many positions to zero, ``0 <= k <= prod(spatial)``.
    """
    if scores.dim() < 3:
        raise ShapeMismatchError(
            f"scores must be (N, C, *spatial); got shape {tuple(scores.shape)}.")
    per_position = scores.abs().sum(dim=1, keepdim=True)
    flat = per_position.reshape(len(scores), -1)
    if not 0 <= k <= flat.shape[1]:
        raise InvalidParameterError(
            f"k must lie in [0, {flat.shape[1]}] (positions per sample); got {k}.")
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :k]
    masks = torch.ones_like(flat)
    masks.scatter_(1, order, 0.0)
    return masks.reshape(per_position.shape)
