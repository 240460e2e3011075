"""Which concepts an intervention replaces: masks from policy scores, for a whole batch at once.

A mask has the shape of the scores ``(N, K)``; 1 keeps the prediction, 0 replaces it (the
intervened output is ``pred * mask + new * (1 - mask)``). The lowest scores are replaced first.

Two ways to say how many concepts to replace per sample:

* ``quantile`` (pytorch_concepts' ``build_mask``): among the ``K`` selected concepts,
  ``k = max(1, min(K, 1 + floor(quantile * (K - 1))))``; every selected concept whose score is
  ``<=`` the k-th smallest score is replaced, so ties at the threshold are replaced too. Hence
  ``quantile=0`` still replaces one concept, and tied scores (:class:`UniformPolicy`) replace all
  selected concepts at any quantile. pytorch_concepts special-cases ``K = 1`` (it keeps the
  single concept when ``quantile < 1``); here the formula holds for every ``K``.
* ``k`` (or ``fraction``, ``k = floor(fraction * K + 1/2)``): exactly ``k`` concepts per sample,
  ties broken by concept order (lower index first); ``k = 0`` replaces nothing. This is what an
  intervention curve needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from latentsurgeon._validation import Interval, check_finite, validate_params
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError

__all__ = ["build_mask", "count_from_fraction", "intervention_count", "selection_mask"]

Concepts = Sequence[int] | torch.Tensor | None


def intervention_count(n_selected: int, quantile: float) -> int:
    """How many of ``n_selected`` concepts a ``quantile`` intervenes on (at least, with ties):
    ``max(1, min(K, 1 + floor(quantile * (K - 1))))``."""
    validate_params({"n_selected": n_selected, "quantile": quantile},
                    {"n_selected": Interval(int, 1, None), "quantile": Interval(float, 0, 1)},
                    owner="intervention_count()")
    k = n_selected
    return max(1, min(k, 1 + math.floor(quantile * (k - 1))))


def count_from_fraction(n_selected: int, fraction: float) -> int:
    """Concepts replaced for a ``fraction`` of ``n_selected``: ``floor(fraction * K + 1/2)``
    (halves round up, so 0.25 of 2 concepts is 1)."""
    validate_params({"n_selected": n_selected, "fraction": fraction},
                    {"n_selected": Interval(int, 0, None), "fraction": Interval(float, 0, 1)},
                    owner="count_from_fraction()")
    return min(n_selected, math.floor(fraction * n_selected + 0.5))


def selection_mask(concepts: Concepts, n_concepts: int, device: torch.device | None = None
                   ) -> torch.Tensor:
    """``(K,)`` bool: the concepts that may be intervened on (``None``: all of them).

    ``concepts`` is a sequence of indices (negative ones count from the end) or a ``(K,)`` bool
    tensor.

    Raises:
        InvalidParameterError: an index out of range, a repeated index, floating-point
            indices, an empty selection.
    """
    if concepts is None:
        return torch.ones(n_concepts, dtype=torch.bool, device=device)
    if isinstance(concepts, torch.Tensor) and concepts.dtype == torch.bool:
        if concepts.shape != (n_concepts,):
            raise ShapeMismatchError(
                f"concepts as a bool mask must have shape ({n_concepts},), got "
                f"{tuple(concepts.shape)}.")
        selected = concepts.to(device)
    else:
        given = torch.as_tensor(concepts)
        if given.is_floating_point() or given.is_complex():
            # a cast to long would truncate 1.7 to concept 1 without a word
            raise InvalidParameterError(
                "concepts must be integer indices or a (K,) bool mask; got "
                f"{given.dtype} values {given.reshape(-1).tolist()}.")
        index = given.to(torch.long).reshape(-1)
        if index.numel() and (int(index.min()) < -n_concepts or int(index.max()) >= n_concepts):
            raise InvalidParameterError(
                f"concepts must index the layer's {n_concepts} concepts (0..{n_concepts - 1}, "
                f"or negative from the end); got {index.tolist()}.")
        index = index % n_concepts
        if len(set(index.tolist())) != index.numel():
            raise InvalidParameterError(f"concepts repeats an index: {index.tolist()}.")
        selected = torch.zeros(n_concepts, dtype=torch.bool, device=device)
        selected[index.to(device)] = True
    if not bool(selected.any()):
        raise InvalidParameterError("concepts selects no concept; pass None to select all.")
    return selected


def build_mask(scores: torch.Tensor, concepts: Concepts = None, quantile: float = 1.0, *,
               k: int | None = None, fraction: float | None = None) -> torch.Tensor:
    """The intervention mask of a batch (see the module docstring for the two rules).

    Args:
        scores: ``(N, K)`` policy scores; the lowest are replaced first.
        concepts: the concepts that may be replaced (indices or a ``(K,)`` bool mask); None: all.
        quantile: in ``[0, 1]``, pytorch_concepts' rule (used when ``k`` and ``fraction`` are
            None).
        k: replace exactly ``k`` of the selected concepts per sample (``0..K``).
        fraction: replace ``floor(fraction * K + 1/2)`` of the ``K`` selected concepts.

    Returns:
        ``(N, K)`` mask in the scores' dtype (float) and device: 1 keep, 0 replace.

    Raises:
        InvalidParameterError: both ``k`` and ``fraction``, or a value out of range.
        ShapeMismatchError: scores that are not ``(N, K)``.
        NonFiniteError: NaN or Inf scores.
    """
    if scores.dim() != 2:
        raise ShapeMismatchError(
            f"build_mask needs (N, K) scores, got shape {tuple(scores.shape)}.")
    check_finite(scores, "the policy's scores")
    n_concepts = scores.shape[1]
    selected = selection_mask(concepts, n_concepts, scores.device)
    n_selected = int(selected.sum())
    count = _count(n_selected, quantile, k, fraction)
    dtype = scores.dtype if scores.is_floating_point() else torch.float32
    if count == 0:
        return torch.ones(scores.shape, dtype=dtype, device=scores.device)
    # Unselected concepts sort last and are never replaced.
    ranked = torch.where(selected, scores.to(torch.float64),
                         torch.tensor(math.inf, dtype=torch.float64, device=scores.device))
    if k is None and fraction is None:
        threshold = ranked.sort(dim=1).values[:, count - 1:count]
        replace = selected & (ranked <= threshold)
    else:
        order = ranked.argsort(dim=1, stable=True)  # stable: ties go to the lower index
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(n_concepts, device=scores.device).expand_as(order))
        replace = selected & (rank < count)
    return (~replace).to(dtype)


def _count(n_selected: int, quantile: Any, k: Any, fraction: Any) -> int:
    validate_params({"quantile": quantile, "k": k, "fraction": fraction},
                    {"quantile": Interval(float, 0, 1), "k": [None, Interval(int, 0, None)],
                     "fraction": [None, Interval(float, 0, 1)]}, owner="build_mask()")
    if k is not None and fraction is not None:
        raise InvalidParameterError("build_mask(): pass k= or fraction=, not both.")
    if k is not None:
        if k > n_selected:
            raise InvalidParameterError(
                f"build_mask(): k must lie in [0, {n_selected}] (the number of selected "
                f"concepts); got {k}.")
        return int(k)
    if fraction is not None:
        return count_from_fraction(n_selected, fraction)
    return intervention_count(n_selected, quantile)
