"""Shared by A-ClArC and RR-ClArC: fit the directions, choose the parameters, fine-tune with a
correction-specific loss on :func:`latentsurgeon.training.train` (the one loop)."""

from __future__ import annotations

import abc
import logging
from contextlib import AbstractContextManager
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from latentsurgeon.activations.batching import model_device
from latentsurgeon.correct._base import (
    TRAINABLE,
    TRAINING_CONSTRAINTS,
    ClarcCorrection,
    check_labels,
)
from latentsurgeon.correct._training import Trainable, select_parameters
from latentsurgeon.errors import LatentSurgeonError
from latentsurgeon.training import OptimizerSpec, train

logger = logging.getLogger(__name__)

_T = TypeVar("_T", bound="TrainedClarc")


class TrainedClarc(ClarcCorrection):
    """A ClArC correction that fine-tunes the model in ``fit``."""

    modifies_weights: ClassVar[bool] = True

    _parameter_constraints: ClassVar[dict[str, Any]] = {
        **TRAINING_CONSTRAINTS, "trainable": TRAINABLE}

    epochs: int
    lr: float
    optimizer: OptimizerSpec
    trainable: Trainable
    seed: int | torch.Generator | None
    head: str | int | None
    criterion: Any

    @abc.abstractmethod
    def _loss_step(self, model: nn.Module, device: torch.device
                   ) -> tuple[AbstractContextManager, Any]:
        """Each subclass returns ``(hooks, loss_fn)``: a context manager putting in place what
        its training needs (edit hooks, gradient offsets) for the duration of the training, and
        ``loss_fn(model, (inputs, labels)) -> {"loss": ..., ...}``."""

    def _check(self) -> None:
        """Checks beyond the declarative constraints (subclasses)."""

    def fit(self: _T, model: nn.Module, data: Any, artifact_labels: Any = None, *,
            labels: Any = None, activations: Any = None) -> _T:
        """Fit the artifact direction(s) (unless ``cav`` was given) and fine-tune ``model`` **in
        place**.

        Args:
            model: the network; its weights change (copy it first to keep the original).
            data: training inputs with class labels (and artifact flags unless ``cav`` or
                ``artifact_labels`` are given): a split (``decoy_digits(...).train``), an
                ``(inputs, labels[, artifact])`` tuple, a TensorDataset or a DataLoader.
            artifact_labels: ``(N,)`` 0/1, 1 = artifact present (default: ``data.artifact``).
            labels: ``(N,)`` class labels replacing those of ``data``.
            activations: precomputed ``(N, ...)`` outputs of the layer for the CAV (a dict
                ``{layer: ...}`` for several layers, or an ActivationStore).

        Returns:
            self. Afterwards the model has the mode, hooks and ``requires_grad`` flags it had,
            and sits on the device it was on; if fitting raised, its weights are as before.
        """
        self._validate_params()
        self._check()
        samples = self._samples(data, labels, artifact_labels, need_labels=True)
        assert samples is not None and samples.labels is not None
        self._fit_directions(model, samples, activations, labels=labels,
                             artifact_labels=artifact_labels)
        check_labels(model, samples, self.head)
        sample = samples.images[:1].to(model_device(model))
        # Parameters the user froze stay frozen, whatever ``trainable`` selects.
        params = [(n, p) for n, p in select_parameters(model, self.layers_, self.trainable,
                                                        sample) if p.requires_grad]
        if not params:
            raise LatentSurgeonError(
                f"{type(self).__name__}: every parameter trainable={self.trainable!r} selects "
                "has requires_grad=False; nothing to fine-tune.")
        self.trainable_params_ = [name for name, _ in params]
        device = model_device(model) if self.device is None else torch.device(self.device)
        hooks, loss_fn = self._loss_step(model, device)
        with hooks:
            history = train(
                model, (samples.images, samples.labels), loss_fn, params=params,
                epochs=self.epochs, lr=self.lr, optimizer=self.optimizer,
                batch_size=self.batch_size, seed=self.seed, device=self.device,
                freeze_batchnorm=True, restore_mode=True, progress=self.progress,
                desc=type(self).__name__)
        self.history_ = history.metrics
        self._record_weights(model)
        logger.info("%s: fine-tuned %d parameter tensors for %d epochs", type(self).__name__,
                    len(params), self.epochs)
        return self
