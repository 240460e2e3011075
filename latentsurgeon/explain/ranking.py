"""Reading score matrices: the top training examples per test example, and how often flagged
training examples (e.g. watermarked ones) appear among them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from latentsurgeon._validation import Interval, validate_params
from latentsurgeon.activations.batching import to_tensor
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError

__all__ = ["METHODS", "flagged_share", "top_examples", "top_examples_by_method"]

#: The methods :func:`top_examples_by_method` runs.
METHODS = ("nearest_neighbours", "simplex", "tracin", "tracin_normalized")


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


def top_examples_by_method(
    model: nn.Module,
    layer: str,
    train: Any,
    test: Any,
    *,
    k: int = 10,
    methods: Sequence[str] = METHODS,
    checkpoints: Any = "current",
    loss: str = "cross_entropy",
    test_loss: str | None = "predicted",
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """The top-``k`` training examples of every test example by each method, at one layer.

    * ``"nearest_neighbours"``: cosine similarity of ``layer``'s outputs.
    * ``"simplex"``: SimplEx weights over ``layer``'s outputs.
    * ``"tracin"``: TracIn with the gradients of ``loss`` (training) and ``test_loss`` (test;
      default: cross-entropy with the predicted class) with respect to ``layer``'s parameters,
      at ``checkpoints`` (default: the present weights).
    * ``"tracin_normalized"``: the same with unit-normalised gradients (cosine similarity).

    Args:
        model: a classifier (for the TracIn methods) or any network (the others).
        layer: one exact layer name; its output represents a sample and, for TracIn, its
            parameters are differentiated.
        train, test: data :func:`~latentsurgeon.activations.batching.iter_batches` reads;
            ``train`` carries labels for ``loss="cross_entropy"``.
        k: how many training examples per test example.
        methods: a subset of :data:`METHODS`.

    Returns:
        ``{method: (n_test, k) training indices, best first}``.
    """
    from latentsurgeon.explain.neighbours import NearestNeighbours
    from latentsurgeon.explain.simplex import SimplEx
    from latentsurgeon.explain.tracin import TracIn

    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InvalidParameterError(
            f"methods must be a non-empty subset of {METHODS}; got {list(methods)!r}.")
    out: dict[str, torch.Tensor] = {}
    for method in methods:
        if method == "nearest_neighbours":
            explainer: Any = NearestNeighbours("cosine", layer, batch_size=batch_size,
                                               progress=progress)
        elif method == "simplex":
            explainer = SimplEx(layer, batch_size=max(batch_size, 1024), progress=progress)
        else:
            explainer = TracIn(checkpoints, loss, test_loss=test_loss, params=layer,
                               normalize=method == "tracin_normalized", batch_size=batch_size,
                               progress=progress)
        out[method] = top_examples(explainer.scores(train, test, model=model), k)
    return out
