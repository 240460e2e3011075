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

from latentsurgeon._aliases import aliased, moved
from latentsurgeon._estimator import Estimator
from latentsurgeon._validation import check_finite
from latentsurgeon.activations.batching import count_samples
from latentsurgeon.activations.fingerprint import model_fingerprint
from latentsurgeon.activations.sharding import batch_block, current_shard, shard_loader
from latentsurgeon.activations.store import ActivationStore
from latentsurgeon.errors import (
    InvalidParameterError,
    LatentSurgeonError,
    ModelMismatchError,
    ShapeMismatchError,
)
from latentsurgeon.explain._checks import (
    check_samples,
    sample_shape,
    shape_problem,
    warn_all_zero,
)

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


def _data_first(args: tuple[Any, ...]) -> bool:
    """The earlier order (training data first): the first argument is neither a model nor None."""
    return bool(args) and args[0] is not None and not isinstance(args[0], nn.Module)


class ExampleExplainer(Estimator, ABC):
    """Base of the example explainers.

    ``fit(model, data)`` prepares what the training side needs and returns self (``model`` may
    be None for the explainers that work on representations: ``fit(None, reps)``);
    ``explain(data)`` returns the ``(n_test, n_train)`` score matrix (row ``i``: how much each
    training example matters to test example ``i``); ``scores(model, train, test)`` is both.
    The earlier ``fit(train, model)``, ``explain(test=...)`` and ``scores(train, test, model)``
    still work, with a ``FutureWarning``.

    Saving. The model is code and is not saved; ``fit`` records ``fingerprint_``, the
    fingerprint of its weights (None when fitted without a model). ``load(path, model=model)``
    re-attaches it (refusing other weights with a
    :class:`~latentsurgeon.errors.ModelMismatchError`) and the loaded explainer gives the
    scores the saved one gave; loaded without ``model=``, its learned attributes are there but
    ``explain`` raises, saying how to load it. ``ExampleExplainer.load`` loads any of them.
    """

    #: ``"train"``: ranks split the training set; ``"test"``: they split the test set.
    _shard_over: ClassVar[str] = "train"
    #: the model given to ``fit`` (not learned state: it is not saved with the explainer)
    _model: nn.Module | None = None
    _load_arguments: ClassVar[tuple[str, ...]] = ("model",)
    #: why every score of this method would be zero (the warning :meth:`explain` gives then)
    _all_zero_cause: ClassVar[str] = (
        "every representation compared is zero (a dead layer, or layer= names the wrong one).")
    _loads_subclasses: ClassVar[bool] = True

    # -- subclass hooks ------------------------------------------------------------------------
    @abstractmethod
    def _fit(self, train: Any, local: Block, model: nn.Module | None) -> None:
        """Prepare the training side from this rank's ``local`` block of ``train``."""

    @abstractmethod
    def _explain(self, test: Any) -> torch.Tensor:
        """``(n_test, n_local_train)`` scores against the fitted training block."""

    def _explainer_state(self) -> dict[str, Any]:
        """What ``explain`` needs beyond the learned attributes and the model (tensors and
        plain data); raise a :class:`LatentSurgeonError` when that cannot be saved."""
        return {}

    def _reattach(self, state: dict[str, Any], model: nn.Module) -> None:
        """Rebuild what ``explain`` needs from :meth:`_explainer_state`'s ``state`` and the
        model (already checked to have the fitted weights)."""

    # -- saving ----------------------------------------------------------------------------------
    def _extra_state(self) -> dict[str, Any]:
        if self._model is None and self.__dict__.get("fingerprint_") is not None:
            return self.__dict__.get("_loaded_state", {})  # loaded without its model
        return self._explainer_state()

    def _restore_extra_state(self, state: dict[str, Any], **arguments: Any) -> None:
        name = type(self).__name__
        model = arguments.get("model")
        expected = self.__dict__.get("fingerprint_")
        if model is None:
            self._loaded_state = state
            return
        if not isinstance(model, nn.Module):
            raise InvalidParameterError(
                f"{name}.load: model must be a torch.nn.Module; got {type(model).__name__}.")
        if expected is None:
            raise InvalidParameterError(
                f"{name}.load: this {name} was fitted without a model (on representations); "
                "load it without model=.")
        found = model_fingerprint(model)
        if found != expected:
            raise ModelMismatchError(
                f"{name}.load: model has other weights than the ones it was fitted on "
                f"(expected fingerprint {expected[:16]}, got {found[:16]}); its scores explain "
                "that model only. Pass the model it was fitted on, or fit it on this one.")
        self._model = model
        self._reattach(state, model)

    # -- the interface -------------------------------------------------------------------------
    @moved(("train", "model"), is_old=_data_first)
    @aliased(deprecated={"train": "data"})
    def fit(self, model: nn.Module | None = None, data: Any = None) -> ExampleExplainer:
        """Prepare the training side.

        Args:
            model: the network, for explainers that need one (None for those that work on
                representations given as ``data``).
            data: the training data (see the subclass for what it accepts).

        Returns:
            self.
        """
        if data is None:
            raise InvalidParameterError(
                f"{type(self).__name__}.fit: data (the training data) is needed; got None. "
                "Call fit(model, data), or fit(None, representations).")
        train = data
        self._validate_params()
        check_samples(train, "data", f"{type(self).__name__}.fit")
        rank, world = current_shard()
        batch_size = getattr(self, "batch_size", 64)
        if self._shard_over == "train":
            local = local_block(train, batch_size, rank, world)
        else:
            n = _count(train)
            local = Block(train, 0, n, n)
        # a failed fit leaves the explainer as it was (its earlier fit included)
        before = dict(vars(self))
        try:
            self._model = model
            self._fit(train, local, model)
            # not learned state (not saved): what explain names when test data do not fit
            self._sample_shape = sample_shape(train)
            self.fingerprint_ = None if model is None else model_fingerprint(model)
            self.n_train_ = local.total
            self.train_block_ = (local.start, local.end)
        except BaseException:
            vars(self).clear()
            vars(self).update(before)
            raise
        return self

    @aliased(deprecated={"test": "data"})
    def explain(self, data: Any) -> torch.Tensor:
        """``(n_test, n_train)`` scores of every training example for every test example of
        ``data``."""
        test = data
        self._check_fitted()
        if self._model is None and self.__dict__.get("fingerprint_") is not None:
            name = type(self).__name__
            raise LatentSurgeonError(
                f"This {name} was loaded without the model it was fitted on, which it needs to "
                f"explain; load it with {name}.load(path, model=model) (or fit it again).")
        name = type(self).__name__
        check_samples(test, "data", f"{name}.explain")
        rank, world = current_shard()
        try:
            if world == 1:
                scores = self._explain(test)
            elif self._shard_over == "train":
                scores = gather(self._explain(test), dim=1)
            else:
                scores = gather(
                    self._explain(local_block(test, self.batch_size, rank, world).data), dim=0)
        except (RuntimeError, ShapeMismatchError) as exc:
            # torch's words for a shape mismatch name neither argument; name both shapes
            problem = shape_problem(self.__dict__.get("_sample_shape"), test, "data",
                                    f"{name}.explain")
            if problem is None:
                raise
            raise ShapeMismatchError(f"{problem} ({exc})") from exc
        check_finite(scores, f"the {name} scores")
        warn_all_zero(scores, f"the {name} scores", self._all_zero_cause, stacklevel=4)
        return scores

    @moved(("train", "test", "model"), is_old=_data_first, defaults={"model": None})
    def scores(self, model: nn.Module | None, train: Any, test: Any) -> torch.Tensor:
        """``fit(model, train).explain(test)``."""
        name = type(self).__name__
        check_samples(train, "train", f"{name}.scores")  # before any work, by their names here
        check_samples(test, "test", f"{name}.scores")
        return self.fit(model, train).explain(test)
