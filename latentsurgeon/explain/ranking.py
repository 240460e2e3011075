"""Reading score matrices: the top training examples per test example, and how often flagged
training examples (e.g. watermarked ones) appear among them. The methods that make score
matrices, with their sign conventions, are the table in :mod:`latentsurgeon.explain.methods`."""

from __future__ import annotations

from typing import Any

import torch

from latentsurgeon._validation import Interval, check_finite, validate_params
from latentsurgeon.activations.batching import to_tensor
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError

__all__ = ["flagged_share", "top_examples"]


def top_examples(scores: torch.Tensor, k: int, *, largest: bool = True) -> torch.Tensor:
    """Indices ``(n_test, k)`` of the ``k`` highest-scoring training examples of each test
    example, best first (``largest=False``: the lowest, e.g. the most helpful examples of
    :class:`~latentsurgeon.explain.InfluenceFunctions`, whose scores are negative for them).

    Ties are broken by the lower training index, so the ranking is deterministic.
    """
    validate_params({"k": k}, {"k": Interval(int, 1, None)}, owner="top_examples()")
    scores = to_tensor(scores, "scores")
    if scores.dim() != 2:
        raise ShapeMismatchError(
            f"scores must be (n_test, n_train); got shape {tuple(scores.shape)}.")
    if k > scores.shape[1]:
        raise InvalidParameterError(
            f"k must be at most the number of training examples ({scores.shape[1]}); got {k}.")
    check_finite(scores, "top_examples: scores")  # NaN would sort as the best score
    keyed = scores if largest else -scores
    # stable descending sort: equal scores keep the order of their training indices
    order = torch.sort(keyed, dim=1, descending=True, stable=True).indices
    return order[:, :k]


def flagged_share(top: torch.Tensor, flags: Any) -> float:
    """Share of the entries of ``top`` (training indices, any shape) whose training example is
    flagged, ``flags`` being ``(n_train,)`` booleans (e.g. ``data.train.artifact``)."""
    flags = to_tensor(flags, "flags").reshape(-1).bool()
    top = to_tensor(top, "top").long()
    if top.numel() == 0:
        raise InvalidParameterError("top holds no indices.")
    if int(top.max()) >= len(flags) or int(top.min()) < 0:
        raise ShapeMismatchError(
            f"top holds training indices up to {int(top.max())} but flags has {len(flags)} "
            "entries.")
    return float(flags[top].float().mean())
