"""What every example explainer shares: ``fit(train)``, ``explain(test)``, ``scores(train, test)``,
and the split of the work over the ranks of a ``torch.distributed`` job.

Under a process group (``torchrun``; gloo on CPU, nccl on GPU) each rank takes a block of whole
batches of the single-process batch sequence (:func:`latentsurgeon.activations.sharding.batch_block`),
computes its block of the score matrix exactly as one process computes it (the same batches, the
same per-block products), and the blocks are gathered on every rank. The gathered matrix is
therefore equal, bit for bit, to the single-process one. Explainers whose scores separate over
training examples (nearest neighbours, TracIn, influence functions) split the training set;
SimplEx, whose weights couple all training examples, splits the test set.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from latentsurgeon._estimator import Estimator
from latentsurgeon._validation import check_finite
from latentsurgeon.activations.batching import count_samples
from latentsurgeon.activations.sharding import batch_block, current_shard, shard_loader
from latentsurgeon.activations.store import ActivationStore
from latentsurgeon.errors import LatentSurgeonError

__all__ = ["Block", "ExampleExplainer", "gather", "local_block"]

logger = logging.getLogger(__name__)


@dataclass
class Block:
    """A rank's part of a dataset: samples ``[start, end)`` of ``total``."""

    data: Any
    start: int
    end: int
    total: int


def _count(data: Any) -> int:
    if isinstance(data, ActivationStore):
        return data.n_samples
    if isinstance(data, np.ndarray):
        return len(data)
    n = count_samples(data)
    if n is None:
        raise LatentSurgeonError(
            f"Cannot tell how many samples the {type(data).__name__} holds; example importance "
            "needs sized data (a tensor, a tuple of tensors, a Dataset or a DataLoader over one).")
    return n


def local_block(data: Any, batch_size: int, rank: int, world: int) -> Block:
    """Rank ``rank``'s block of whole batches of ``data`` (all of it when ``world == 1``).

    An :class:`ActivationStore` stays whole (its rows are selected by ``start``/``end``); a
    tensor or array is sliced; other data become a DataLoader over the block (the
    single-process batches, see module doc).
    """
    total = _count(data)
    if world == 1:
        return Block(data, 0, total, total)
    if isinstance(data, (ActivationStore, torch.Tensor, np.ndarray)):
        start, end = batch_block(total, batch_size, rank, world)
        return Block(data if isinstance(data, ActivationStore) else data[start:end],
                     start, end, total)
    loader = shard_loader(data, batch_size, rank, world)
    step = loader.batch_size or batch_size
    start, end = batch_block(total, step, rank, world)
    return Block(loader, start, end, total)


def _collective_device(tensor: torch.Tensor) -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather(block: torch.Tensor, dim: int) -> torch.Tensor:
    """Concatenate every rank's ``block`` along ``dim``, in rank order, on every rank.

    Blocks may differ in size along ``dim`` (the last rank's is often shorter); they are padded
    for the collective and trimmed after, so values pass unchanged.
    """
    import torch.distributed as dist

    device = _collective_device(block)
    world = dist.get_world_size()
    size = torch.tensor([block.shape[dim]], device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(int(s) for s in sizes))
    moved = block.to(device).movedim(dim, 0).contiguous()
    padded = torch.zeros((longest, *moved.shape[1:]), dtype=moved.dtype, device=device)
    padded[:moved.shape[0]] = moved
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    joined = torch.cat([p[:int(s)] for p, s in zip(parts, sizes, strict=True)])
    return joined.movedim(0, dim).to(block.device)


class ExampleExplainer(Estimator, ABC):
    """Base of the example explainers.

    ``fit(train, model=None)`` prepares what the training side needs and returns self;
    ``explain(test)`` returns the ``(n_test, n_train)`` score matrix (row ``i``: how much each
    training example matters to test example ``i``); ``scores(train, test, model=None)`` is both.
    """

    #: ``"train"``: ranks split the training set; ``"test"``: they split the test set.
    _shard_over: ClassVar[str] = "train"
    #: the model given to ``fit`` (not learned state: it is not saved with the explainer)
    _model: nn.Module | None = None

    # -- subclass hooks ------------------------------------------------------------------------
    @abstractmethod
    def _fit(self, train: Any, local: Block, model: nn.Module | None) -> None:
        """Prepare the training side from this rank's ``local`` block of ``train``."""

    @abstractmethod
    def _explain(self, test: Any) -> torch.Tensor:
        """``(n_test, n_local_train)`` scores against the fitted training block."""

    # -- the interface -------------------------------------------------------------------------
    def fit(self, train: Any, model: nn.Module | None = None) -> ExampleExplainer:
        """Prepare the training side.

        Args:
            train: the training data (see the subclass for what it accepts).
            model: the network, for explainers that need one.

        Returns:
            self.
        """
        self._validate_params()
        rank, world = current_shard()
        batch_size = getattr(self, "batch_size", 64)
        if self._shard_over == "train":
            local = local_block(train, batch_size, rank, world)
        else:
            n = _count(train)
            local = Block(train, 0, n, n)
        self._model = model
        self._fit(train, local, model)
        self.n_train_ = local.total
        self.train_block_ = (local.start, local.end)
        return self

    def explain(self, test: Any) -> torch.Tensor:
        """``(n_test, n_train)`` scores of every training example for every test example."""
        self._check_fitted()
        rank, world = current_shard()
        if world == 1:
            scores = self._explain(test)
        elif self._shard_over == "train":
            scores = gather(self._explain(test), dim=1)
        else:
            scores = gather(self._explain(local_block(test, self.batch_size, rank, world).data),
                            dim=0)
        return check_finite(scores, f"the {type(self).__name__} scores")

    def scores(self, train: Any, test: Any, model: nn.Module | None = None) -> torch.Tensor:
        """``fit(train, model).explain(test)``."""
        return self.fit(train, model).explain(test)
