"""The reference training recipes on the one loop: a classifier (cross-entropy) and an
autoencoder (mean squared reconstruction error), and the accuracy they are judged by."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentsurgeon._aliases import moved
from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError
from latentsurgeon.metrics.accuracy import accuracy
from latentsurgeon.training.loop import LossFn, OptimizerSpec, TrainingData, TrainingHistory, train

__all__ = ["evaluate_accuracy", "train_autoencoder", "train_classifier"]


def _classification_loss(head: str | int | None) -> LossFn:
    def loss_fn(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise InvalidParameterError(
                "a classifier needs labels: pass (inputs, labels), a split with .images and "
                ".labels, or a loader yielding (inputs, labels) batches; not inputs alone")
        x, y = batch[0], batch[1]
        logits = ModelAccess(model, head=head).logits(x, classification=False)
        if logits.dim() != 2:
            raise ShapeMismatchError(
                f"a classifier must return (N, n_classes) logits, got {tuple(logits.shape)}")
        y = y.long()
        if bool(((y < 0) | (y >= logits.shape[1])).any()):
            raise InvalidParameterError(
                f"labels must lie in [0, {logits.shape[1] - 1}] for a model with "
                f"{logits.shape[1]} outputs; got {int(y.min())}..{int(y.max())}.")
        loss = F.cross_entropy(logits, y)
        return {"loss": loss, "acc": (logits.detach().argmax(dim=1) == y).float().mean()}

    return loss_fn


def _reconstruction_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    recon = ModelAccess(model, head=None).output(x)
    if recon.shape != x.shape:
        raise ShapeMismatchError(
            f"an autoencoder must return its input's shape {tuple(x.shape)}, got {tuple(recon.shape)}"
        )
    return F.mse_loss(recon, x)


def train_classifier(
    model: nn.Module,
    data: TrainingData,
    *,
    epochs: int = 15,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int | None = 0,
    device: str | torch.device | None = None,
    weight_decay: float = 0.0,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    optimizer: OptimizerSpec = "adam",
    head: str | int | None = "logits",
) -> TrainingHistory:
    """Train ``model`` in place with cross-entropy and Adam (through :func:`train`).

    ``seed`` drives what happens during training (the order of the batches, dropout);
    it does not initialise the model. For a reproducible run, call ``torch.manual_seed``
    before constructing the model. Torch's global RNG is seeded only inside the call and
    restored afterwards.

    Args:
        model: maps ``(N, ...)`` inputs to ``(N, n_classes)`` logits (or a tuple/dict holding
            them, see ``head``).
        data: a ``DataLoader`` (used as is, its own batch size and order), an
            ``(inputs, labels)`` tuple of tensors, a ``TensorDataset``, another
            ``Dataset``, or an object with ``.images`` and ``.labels`` tensors such as
            :class:`latentsurgeon.data.DecoySplit`. In-memory data are shuffled each epoch.
        epochs: number of passes over the data.
        lr: Adam's learning rate (ignored when ``optimizer`` is an instance).
        batch_size: samples per step (ignored for a ``DataLoader``).
        seed: seed of the shuffling and of torch's RNG during training (None: fresh).
        device: where to train; the model returns to its device afterwards. None: where it is.
        weight_decay: Adam's weight decay.
        progress: show a tqdm bar over epochs (also hidden when stderr is not a TTY).
        checkpoint_dir: if given, after every epoch ``k`` (from 1) write
            ``epoch_{k:03d}.pt`` holding ``{"epoch", "state_dict" (CPU tensors), "lr",
            "loss", "acc"}`` atomically.
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"``, a callable or an optimizer instance.
        head: where the logits are in a tuple/dict output.

    Returns:
        A :class:`TrainingHistory`. The model is left in eval mode.
    """
    return train(model, data, _classification_loss(head), epochs=epochs, lr=lr,
                 batch_size=batch_size, seed=seed, device=device, weight_decay=weight_decay,
                 progress=progress, checkpoint_dir=checkpoint_dir, optimizer=optimizer,
                 desc="train_classifier")


def train_autoencoder(
    model: nn.Module,
    data: TrainingData,
    *,
    epochs: int = 15,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int | None = 0,
    device: str | torch.device | None = None,
    weight_decay: float = 0.0,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    optimizer: OptimizerSpec = "adam",
) -> TrainingHistory:
    """Train ``model`` in place to reconstruct its input (mean squared error, Adam).

    Same contract as :func:`train_classifier`, except that labels are optional: ``data``
    may be an images tensor ``(N, 1, 16, 16)``, and the first element of every batch is the
    input and the target. Checkpoints hold ``{"epoch", "state_dict", "lr", "loss"}`` and
    ``TrainingHistory.acc`` stays empty.
    """
    return train(model, data, _reconstruction_loss, epochs=epochs, lr=lr, batch_size=batch_size,
                 seed=seed, device=device, weight_decay=weight_decay, progress=progress,
                 checkpoint_dir=checkpoint_dir, optimizer=optimizer, desc="train_autoencoder")


@moved(("model", "data", "batch_size", "device", "head"))
def evaluate_accuracy(model: nn.Module, data: TrainingData, *, batch_size: int = 256,
                      device: str | torch.device | None = None,
                      head: str | int | None = "logits") -> float:
    """Fraction of samples whose argmax logit equals the label: the same function as
    :func:`latentsurgeon.metrics.accuracy` (kept under this name for the models' API)."""
    return accuracy(model, data, batch_size=batch_size, device=device, head=head)
