"""Nearest neighbours in representation space: the simplest label-free example importance."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from latentsurgeon._validation import Interval, Options
from latentsurgeon.errors import ShapeMismatchError
from latentsurgeon.explain._base import Block, ExampleExplainer
from latentsurgeon.explain.representations import block_representations, representations

__all__ = ["METRICS", "NearestNeighbours"]

logger = logging.getLogger(__name__)

METRICS = ("inverse_distance", "cosine")


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


class NearestNeighbours(ExampleExplainer):
    """Score training examples by the closeness of their representation to a test example's.

    ``metric="inverse_distance"`` is lfxai's ``1 / ||f(x) - f(x_n)||^2`` (a training example
    whose representation equals the test example's gets ``1 / tiny``, the largest finite score,
    where lfxai returns Inf); ``"cosine"`` is ``cos(f(x), f(x_n))`` (a zero representation has
    cosine 0 with everything).

    Args:
        metric: ``"inverse_distance"`` or ``"cosine"``.
        layer: the layer whose output represents a sample (the model's output when None), or
            the layer of an :class:`~latentsurgeon.activations.ActivationStore` to read.
        batch_size: samples per forward pass and per block of the score matrix.
        device: None or the model's device.
        progress: tqdm bars while computing representations.

    ``fit(train, model=None)``: ``train`` holds inputs when ``model`` is given, else
    representations (a tensor ``(N, ...)`` or an ActivationStore). ``explain(test)`` takes the
    same kind of data.

    Learned attributes:
        train_representations_: ``(n_train, D)`` (this rank's block under a process group).
        n_train_: number of training examples.

    Equal across batch sizes: each score depends on one pair of representations, computed
    pair by pair (``cdist`` without the matrix-product shortcut; cosine as a product of unit
    rows), so blocks of any size agree to the last few ulps (``1e-12`` relative in float64).
    """

    _parameter_constraints = {
        "metric": Options(METRICS),
        "layer": [str, None],
        "batch_size": Interval(int, 1, None),
        "progress": bool,
    }

    def __init__(self, metric: str = "inverse_distance", layer: str | None = None, *,
                 batch_size: int = 256, device: str | torch.device | None = None,
                 progress: bool = True) -> None:
        self.metric = metric
        self.layer = layer
        self.batch_size = batch_size
        self.device = device
        self.progress = progress

    def _fit(self, train: Any, local: Block, model: nn.Module | None) -> None:
        self.train_representations_ = block_representations(
            local, model, self.layer, batch_size=self.batch_size, device=self.device,
            progress=self.progress)

    def block_scores(self, test_reps: torch.Tensor, train_reps: torch.Tensor) -> torch.Tensor:
        """Scores ``(b, c)`` of ``b`` test against ``c`` training representations."""
        if test_reps.shape[1] != train_reps.shape[1]:
            raise ShapeMismatchError(
                f"Test representations have {test_reps.shape[1]} features, training ones "
                f"{train_reps.shape[1]}; they must come from the same layer.")
        dtype = torch.promote_types(test_reps.dtype, train_reps.dtype)
        a, b = test_reps.to(dtype), train_reps.to(dtype)
        if self.metric == "cosine":
            return _unit_rows(a) @ _unit_rows(b).T
        if dtype.itemsize < 4:  # cdist has no half or bfloat16 kernel: measure in float32
            a, b = a.float(), b.float()
        dist = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")
        return 1.0 / (dist * dist).clamp_min(torch.finfo(dist.dtype).tiny)

    def _explain(self, test: Any) -> torch.Tensor:
        test_reps = representations(self._model, self.layer, test, batch_size=self.batch_size,
                                    device=self.device, progress=self.progress)
        train_reps = self.train_representations_
        step = self.batch_size
        if len(train_reps) == 0:  # a rank without training batches
            return test_reps.new_zeros(len(test_reps), 0)
        rows = []
        for i in range(0, len(test_reps), step):
            a = test_reps[i:i + step]
            rows.append(torch.cat([self.block_scores(a, train_reps[j:j + step])
                                   for j in range(0, len(train_reps), step)], dim=1))
        return torch.cat(rows)
