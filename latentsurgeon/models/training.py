"""Minimal, deterministic training loops for the reference models."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm.auto import tqdm

from latentsurgeon.activations.batching import model_device
from latentsurgeon.errors import DeviceMismatchError, ShapeMismatchError

__all__ = [
    "TrainingData",
    "TrainingHistory",
    "evaluate_accuracy",
    "train_autoencoder",
    "train_classifier",
]

logger = logging.getLogger(__name__)

# DataLoader, (images, labels) tuple, images alone, a Dataset, or anything with
# ``.images`` and ``.labels`` tensors (e.g. latentsurgeon.data.DecoySplit).
TrainingData = Any


@dataclass
class TrainingHistory:
    """What a training run did, one entry per epoch.

    Attributes:
        loss: mean training loss of each epoch (cross-entropy or reconstruction MSE).
        acc: training accuracy of each epoch, measured on the fly in train mode
            (classifiers only; empty for autoencoders).
        checkpoints: paths of the checkpoints written, one per epoch, in order.
        lr: the learning rate of the (first parameter group of the) optimizer.
        seed: the seed that drove shuffling and any dropout.
    """

    loss: list[float] = field(default_factory=list)
    acc: list[float] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    lr: float = float("nan")
    seed: int = 0

    @property
    def epochs(self) -> int:
        """Number of completed epochs."""
        return len(self.loss)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (JSON-serialisable)."""
        return {
            "loss": list(self.loss),
            "acc": list(self.acc),
            "checkpoints": [str(p) for p in self.checkpoints],
            "lr": self.lr,
            "seed": self.seed,
        }


# ---------------------------------------------------------------------------------------------
# Data normalisation
# ---------------------------------------------------------------------------------------------


class _TensorBatches:
    """Batches drawn by indexing whole tensors: much faster than a DataLoader's per-sample
    collation for data that already sits in memory. The permutation of each epoch comes
    from ``generator``, so a run is a function of the seed alone."""

    def __init__(
        self,
        tensors: tuple[torch.Tensor, ...],
        batch_size: int,
        shuffle: bool,
        generator: torch.Generator | None,
    ) -> None:
        self.tensors = tensors
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator

    def __len__(self) -> int:
        return math.ceil(self.tensors[0].shape[0] / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n = self.tensors[0].shape[0]
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator)
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                yield tuple(t[idx] for t in self.tensors)
        else:
            for start in range(0, n, self.batch_size):
                yield tuple(t[start : start + self.batch_size] for t in self.tensors)


def _as_tensors(data: Any) -> tuple[torch.Tensor, ...] | None:
    """The tensors behind ``data`` when it is held in memory, else None."""
    if isinstance(data, torch.Tensor):
        return (data,)
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        tensors = tuple(data)
    elif isinstance(data, TensorDataset):
        tensors = tuple(data.tensors)
    elif isinstance(getattr(data, "images", None), torch.Tensor) and isinstance(
        getattr(data, "labels", None), torch.Tensor
    ):
        tensors = (data.images, data.labels)
    else:
        return None
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ShapeMismatchError(
            f"tensors must share their first dimension, got {[tuple(t.shape) for t in tensors]}"
        )
    return tensors


def _batches(
    data: Any, batch_size: int, *, shuffle: bool, generator: torch.Generator | None
) -> Any:
    """An iterable of batches (tensor or tuple of tensors) over ``data``."""
    if isinstance(data, DataLoader):
        return data  # the caller's own batching, order and workers
    tensors = _as_tensors(data)
    if tensors is not None:
        if tensors[0].shape[0] == 0:
            raise ValueError("the data hold no samples")
        return _TensorBatches(tensors, batch_size, shuffle, generator)
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)
    raise TypeError(
        "data must be a DataLoader, a Dataset, an (images, labels) tuple of tensors, an "
        f"images tensor, or an object with .images and .labels; got {type(data).__name__}"
    )


def _split_batch(batch: Any, need_labels: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        x, y = batch, None
    elif isinstance(batch, (tuple, list)) and batch:
        x, y = batch[0], (batch[1] if len(batch) > 1 else None)
    elif isinstance(batch, dict) and "images" in batch:
        x, y = batch["images"], batch.get("labels")
    else:
        raise TypeError(f"cannot read a batch of type {type(batch).__name__}")
    if need_labels and y is None:
        raise ValueError("a classifier needs labels: pass (images, labels), not images alone")
    return x, y


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG (dropout, DataLoader shuffling without a generator) for the
    duration of the block, then restore the caller's RNG state: training is reproducible
    without changing global state."""
    cuda = device.type == "cuda"
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if cuda else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(devices[0]):
                torch.cuda.manual_seed(seed)
        yield


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: a reader
    (or a crash) never sees a half-written checkpoint."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _check_common(epochs: int, lr: float, batch_size: int, seed: int) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")


def _fit(
    model: nn.Module,
    data: Any,
    step_loss: Callable[
        [nn.Module, torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]
    ],
    *,
    need_labels: bool,
    name: str,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: str | torch.device | None,
    weight_decay: float,
    progress: bool,
    checkpoint_dir: str | os.PathLike | None,
    optimizer: torch.optim.Optimizer | None,
) -> TrainingHistory:
    _check_common(epochs, lr, batch_size, seed)
    dev = torch.device(device) if device is not None else model_device(model)
    model.to(dev)
    if optimizer is None:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no parameters with requires_grad=True to train")
        optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        lr = float(optimizer.param_groups[0]["lr"])  # the optimizer's own settings win
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)

    shuffle_gen = torch.Generator().manual_seed(seed)
    batches = _batches(data, batch_size, shuffle=True, generator=shuffle_gen)
    history = TrainingHistory(lr=lr, seed=seed)
    bar = tqdm(range(1, epochs + 1), desc=name, unit="epoch", disable=None if progress else True)
    try:
        with _seeded(seed, dev):
            model.train()
            for epoch in bar:
                # Sums stay on the device: one host sync per epoch instead of per batch.
                loss_sum = torch.zeros((), device=dev)
                correct = torch.zeros((), device=dev, dtype=torch.long)
                seen = 0
                for batch in batches:
                    x, y = _split_batch(batch, need_labels)
                    x = x.to(dev, non_blocking=True)
                    y = y.to(dev, non_blocking=True) if y is not None else None
                    loss, n_correct = step_loss(model, x, y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_sum += loss.detach() * x.shape[0]
                    if n_correct is not None:
                        correct += n_correct
                    seen += x.shape[0]
                if seen == 0:
                    raise ValueError("the data hold no samples")
                history.loss.append(float(loss_sum) / seen)
                postfix = {"loss": f"{history.loss[-1]:.4f}"}
                if need_labels:
                    history.acc.append(int(correct) / seen)
                    postfix["acc"] = f"{history.acc[-1]:.3f}"
                bar.set_postfix(postfix)
                logger.debug("%s epoch %d: %s", name, epoch, postfix)
                if ckpt_dir is not None:
                    path = ckpt_dir / f"epoch_{epoch:03d}.pt"
                    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                    payload = {
                        "epoch": epoch,
                        "state_dict": state,
                        "lr": lr,
                        "loss": history.loss[-1],
                    }
                    if need_labels:
                        payload["acc"] = history.acc[-1]
                    _atomic_save(payload, path)
                    history.checkpoints.append(path)
    finally:
        bar.close()
        model.eval()
    return history


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _classification_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    assert y is not None
    logits = model(x)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ShapeMismatchError(f"a classifier must return (N, n_classes) logits, got {shape}")
    y = y.long()
    loss = F.cross_entropy(logits, y)
    return loss, (logits.detach().argmax(dim=1) == y).sum()


def _reconstruction_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor | None
) -> tuple[torch.Tensor, None]:
    recon = model(x)
    if recon.shape != x.shape:
        raise ShapeMismatchError(
            f"an autoencoder must return its input's shape {tuple(x.shape)}, got {tuple(recon.shape)}"
        )
    return F.mse_loss(recon, x), None


def train_classifier(
    model: nn.Module,
    data: TrainingData,
    *,
    epochs: int = 15,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device | None = None,
    weight_decay: float = 0.0,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> TrainingHistory:
    """Train ``model`` in place with cross-entropy and Adam.

    ``seed`` drives what happens during training (the order of the batches, dropout);
    it does not initialise the model. For a reproducible run, call ``torch.manual_seed``
    before constructing the model. Torch's global RNG is seeded only inside the call and
    restored afterwards.

    Args:
        model: maps ``(N, ...)`` inputs to ``(N, n_classes)`` logits.
        data: a ``DataLoader`` (used as is, its own batch size and order), an
            ``(images, labels)`` tuple of tensors, a ``TensorDataset``, another
            ``Dataset``, or an object with ``.images`` and ``.labels`` tensors such as
            :class:`latentsurgeon.data.DecoySplit`. In-memory data are shuffled each epoch.
        epochs: number of passes over the data.
        lr: Adam's learning rate (ignored when ``optimizer`` is given).
        batch_size: samples per step (ignored for a ``DataLoader``).
        seed: seed of the shuffling and of torch's RNG during training.
        device: where to train; the model is moved there. None: where the model is.
        weight_decay: Adam's weight decay (ignored when ``optimizer`` is given).
        progress: show a tqdm bar over epochs (also hidden when stderr is not a TTY).
        checkpoint_dir: if given, after every epoch ``k`` (from 1) write
            ``epoch_{k:03d}.pt`` holding ``{"epoch", "state_dict" (CPU tensors), "lr",
            "loss", "acc"}`` atomically (temporary file in the same folder, then
            ``os.replace``).
        optimizer: an optimizer over the model's parameters to use instead of Adam.

    Returns:
        A :class:`TrainingHistory`. The model is left in eval mode.
    """
    return _fit(
        model, data, _classification_step, need_labels=True, name="train_classifier",
        epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device,
        weight_decay=weight_decay, progress=progress, checkpoint_dir=checkpoint_dir,
        optimizer=optimizer,
    )  # fmt: skip


def train_autoencoder(
    model: nn.Module,
    data: TrainingData,
    *,
    epochs: int = 15,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device | None = None,
    weight_decay: float = 0.0,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> TrainingHistory:
    """Train ``model`` in place to reconstruct its input (mean squared error, Adam).

    Same contract as :func:`train_classifier`, except that labels are optional: ``data``
    may be an images tensor ``(N, 1, 16, 16)``, and the first element of every batch is the
    input and the target. Checkpoints hold ``{"epoch", "state_dict", "lr", "loss"}`` and
    ``TrainingHistory.acc`` stays empty.
    """
    return _fit(
        model, data, _reconstruction_step, need_labels=False, name="train_autoencoder",
        epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device,
        weight_decay=weight_decay, progress=progress, checkpoint_dir=checkpoint_dir,
        optimizer=optimizer,
    )  # fmt: skip


def evaluate_accuracy(
    model: nn.Module,
    data: TrainingData,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> float:
    """Fraction of samples whose argmax logit equals the label.

    The model runs in eval mode without gradients; its training flag is restored
    afterwards and it is not moved.

    Args:
        model: maps ``(N, ...)`` inputs to ``(N, n_classes)`` logits.
        data: as for :func:`train_classifier` (labels required), in its own order.
        batch_size: samples per forward pass (ignored for a ``DataLoader``).
        device: where the inputs go; must be the model's device. None: the model's device.

    Returns:
        Accuracy in ``[0, 1]``.
    """
    model_dev = model_device(model)
    dev = torch.device(device) if device is not None else model_dev
    if dev.type != model_dev.type or (
        dev.index is not None and model_dev.index is not None and dev.index != model_dev.index
    ):
        raise DeviceMismatchError(
            f"the model lives on {model_dev} but device={dev}; move it with model.to({str(dev)!r})"
        )
    was_training = model.training
    correct, seen = 0, 0
    try:
        model.eval()
        with torch.no_grad():
            for batch in _batches(data, batch_size, shuffle=False, generator=None):
                x, y = _split_batch(batch, need_labels=True)
                logits = model(x.to(dev))
                correct += int((logits.argmax(dim=1) == y.to(dev).long()).sum())
                seen += x.shape[0]
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("the data hold no samples")
    return correct / seen
