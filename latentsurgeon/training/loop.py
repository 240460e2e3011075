"""The one training loop: :func:`train`.

It is the only place in latentsurgeon where an optimiser steps: the reference recipes
(:func:`~latentsurgeon.training.train_classifier`, :func:`~latentsurgeon.training.train_autoencoder`),
the corrections that fine-tune (A-ClArC, RR-ClArC, RRR), the concept-bottleneck models and the
explain experiments all call it with their own loss. It owns seeding, batching, which parameters train, BatchNorm handling, checkpoints,
progress bars, non-finite detection and restoring the model when something goes wrong.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from latentsurgeon._io import torch_save_atomic
from latentsurgeon._validation import Interval, Seed, draw_seed, validate_params
from latentsurgeon.activations.batching import (
    batch_size_of,
    count_samples,
    iter_batches,
    model_device,
    n_batches,
    to_device,
)
from latentsurgeon.errors import InvalidParameterError, NonFiniteError
from latentsurgeon.hooks import preserve_model_state

__all__ = [
    "OPTIMIZERS",
    "LossFn",
    "OptimizerSpec",
    "TrainingData",
    "TrainingHistory",
    "build_optimizer",
    "train",
]

logger = logging.getLogger(__name__)

# DataLoader, (images, labels) tuple, images alone, a Dataset, or anything with
# ``.images`` and ``.labels`` tensors (e.g. latentsurgeon.data.DecoySplit).
TrainingData = Any
LossFn = Callable[[nn.Module, Any], Any]
OptimizerSpec = str | Callable[[list[nn.Parameter]], torch.optim.Optimizer] | torch.optim.Optimizer
OPTIMIZERS = ("adam", "adamw", "sgd")

_CONSTRAINTS = {
    "epochs": Interval(int, 0, None),
    "lr": Interval(float, 0, None, closed="neither"),
    "batch_size": Interval(int, 1, None),
    "seed": Seed(),
    "weight_decay": Interval(float, 0, None),
}


@dataclass
class TrainingHistory:
    """What a training run did, one entry per epoch.

    Attributes:
        metrics: per-epoch means (weighted by batch size) of every scalar the loss function
            returned: ``"loss"`` always, ``"acc"`` for classifiers, penalty terms for
            corrections.
        checkpoints: paths of the checkpoints written, one per epoch, in order.
        lr: the learning rate of the (first parameter group of the) optimizer.
        seed: the seed that drove shuffling and any dropout (None: fresh randomness; the int
            drawn from a ``torch.Generator`` given as the seed).
    """

    metrics: dict[str, list[float]] = field(default_factory=lambda: {"loss": []})
    checkpoints: list[Path] = field(default_factory=list)
    lr: float = float("nan")
    seed: int | None = 0

    @property
    def loss(self) -> list[float]:
        """Mean training loss of each epoch."""
        return self.metrics["loss"]

    @property
    def acc(self) -> list[float]:
        """Training accuracy of each epoch, measured on the fly in train mode (classifiers
        only; empty otherwise)."""
        return self.metrics.get("acc", [])

    @property
    def epochs(self) -> int:
        """Number of completed epochs."""
        return len(self.loss)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (JSON-serialisable)."""
        return {
            **{k: list(v) for k, v in self.metrics.items()},
            "acc": list(self.acc),
            "checkpoints": [str(p) for p in self.checkpoints],
            "lr": self.lr,
            "seed": self.seed,
        }


def build_optimizer(spec: OptimizerSpec, params: list[nn.Parameter], lr: float,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """``"adam"``, ``"adamw"``, ``"sgd"`` (momentum 0.9) at ``lr``, ``spec(params)`` for a
    callable, or an optimizer instance as it is."""
    if isinstance(spec, torch.optim.Optimizer):
        return spec
    if callable(spec):
        return spec(params)
    if spec == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if spec == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if spec == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise InvalidParameterError(
        f"optimizer must be one of {OPTIMIZERS}, a callable params -> torch.optim.Optimizer or "
        f"an optimizer; got {spec!r}.")


@contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[torch.Generator]:
    """Seed torch's global RNG (dropout) for the block and restore the caller's RNG state after;
    yields the generator of the batch order. ``seed=None``: fresh randomness."""
    cuda = device.type == "cuda"
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if cuda else []
    with torch.random.fork_rng(devices=devices):
        generator = torch.Generator()
        if seed is None:
            generator.seed()
            torch.default_generator.seed()
        else:
            generator.manual_seed(int(seed))
            torch.default_generator.manual_seed(int(seed))
            if cuda:
                torch.cuda.manual_seed(int(seed))
        yield generator


@contextmanager
def _restore_weights_on_error(model: nn.Module) -> Iterator[None]:
    """Snapshot parameters and buffers (on the CPU); copy them back only if the block raises."""
    saved = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict(keep_vars=True).items()}
    try:
        yield
    except BaseException:
        with torch.no_grad():
            current = model.state_dict(keep_vars=True)
            for key, value in saved.items():
                current[key].copy_(value)
        logger.warning("training failed; the model's weights were restored")
        raise


def _freeze_batchnorm(model: nn.Module) -> int:
    # Batch statistics couple the samples of a batch: gradients of the batch sum would then not be
    # per-sample gradients. Running statistics keep every sample independent.
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            count += 1
    return count


def _as_named(params: Any, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    if params is None:
        chosen = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    else:
        names = {id(p): n for n, p in model.named_parameters()}
        chosen = []
        for item in params:
            name, param = item if isinstance(item, tuple) else (names.get(id(item), "?"), item)
            chosen.append((name, param))
    if not chosen:
        raise InvalidParameterError(
            "There is no parameter to train: the model has none with requires_grad=True (or "
            "params= is empty).")
    return chosen


def train(
    model: nn.Module,
    data: TrainingData,
    loss_fn: LossFn,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int | torch.Generator | None = 0,
    params: Sequence[nn.Parameter] | Sequence[tuple[str, nn.Parameter]] | None = None,
    optimizer: OptimizerSpec = "adam",
    weight_decay: float = 0.0,
    device: str | torch.device | None = None,
    freeze_batchnorm: bool = False,
    restore_mode: bool = False,
    progress: bool = True,
    desc: str = "train",
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_extra: Callable[[int], dict[str, Any]] | None = None,
) -> TrainingHistory:
    """Train ``model`` in place: the one loop every latentsurgeon method trains with.

    Args:
        model: the network.
        data: a tensor, a tuple of tensors ``(inputs, labels, ...)``, a split with
            ``.images``/``.labels``, a Dataset or a DataLoader (see
            :func:`latentsurgeon.activations.batching.iter_batches`). In-memory data are
            reshuffled every epoch from a generator seeded with ``seed``; a DataLoader keeps its
            own order and batch size.
        loss_fn: ``loss_fn(model, batch) -> loss`` or ``-> {"loss": loss, "name": scalar, ...}``
            with ``batch`` in the data's structure, already on the device. Extra scalars are
            averaged per epoch into the history (``"acc"``, penalty terms).
        epochs: passes over the data.
        lr: learning rate (ignored for a given optimizer instance).
        batch_size: samples per step (ignored for a DataLoader).
        seed: drives the batch order and torch's global RNG (dropout) inside the call only
            (the caller's RNG state is restored); None draws fresh randomness; a
            ``torch.Generator`` gives the int seed of the run (one draw: the same generator
            state gives the same run). It does not initialise the model.
        params: the parameters to train (others are frozen during the call and their
            ``requires_grad`` flags restored after); default: every parameter that requires grad.
        optimizer: ``"adam"`` (default), ``"adamw"``, ``"sgd"``, a callable
            ``params -> Optimizer`` or an optimizer instance.
        weight_decay: for the named optimizers.
        device: train there and move the model back afterwards; None = where the model is.
        freeze_batchnorm: run BatchNorm layers in eval mode (running statistics), so that
            samples of a batch do not interact (per-sample gradients stay per sample).
        restore_mode: restore every module's ``training`` flag after the call (corrections,
            whose only job is to change weights); False leaves the model in eval mode (the
            reference recipes, whose job is a trained model ready to evaluate). A call that
            fails always restores the flags (and the weights).
        progress: tqdm bar over epochs (hidden off a TTY).
        desc: the bar's label and the log's name.
        checkpoint_dir: if given, after every epoch ``k`` (from 1) write ``epoch_{k:03d}.pt``
            holding ``{"epoch", "state_dict" (CPU tensors), "lr", "loss", <metrics>}``
            atomically.
        checkpoint_extra: ``f(epoch) -> dict`` of further entries for each checkpoint.

    Returns:
        A :class:`TrainingHistory`.

    Raises:
        InvalidParameterError: a parameter out of range.
        NonFiniteError: a loss became NaN or Inf (the weights are restored to the state before
            the call, as on every error).
    """
    validate_params({"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
                     "weight_decay": weight_decay}, _CONSTRAINTS, owner=desc)
    if isinstance(optimizer, str) and optimizer not in OPTIMIZERS:
        build_optimizer(optimizer, [], lr)  # raises the message
    if count_samples(data) == 0:
        raise InvalidParameterError(f"{desc}: the data hold no samples.")
    home = model_device(model)
    dev = torch.device(device) if device is not None else home
    named = _as_named(params, model)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    opt_lr = float(optimizer.param_groups[0]["lr"]) if isinstance(
        optimizer, torch.optim.Optimizer) else float(lr)
    # a Generator gives the run's int seed here, after the checks (a refused call leaves its
    # state alone); the history records that int, which reproduces the run
    seed = draw_seed(seed)
    history = TrainingHistory(metrics={"loss": []}, lr=opt_lr, seed=seed)
    training_flags = [(m, m.training) for m in model.modules()]
    moved = dev != home
    if moved:
        model.to(dev)
    finished = False
    try:
        with preserve_model_state(model), _restore_weights_on_error(model), \
                _seeded(seed, dev) as generator:
            for param in model.parameters():
                param.requires_grad_(False)
            for _, param in named:
                param.requires_grad_(True)
            model.train()
            if freeze_batchnorm and _freeze_batchnorm(model):
                logger.info("%s: BatchNorm layers run in eval mode (frozen statistics)", desc)
            opt = build_optimizer(optimizer, [p for _, p in named], lr, weight_decay)
            total = n_batches(data, batch_size)
            bar = tqdm(range(1, epochs + 1), desc=desc, unit="epoch",
                       disable=None if progress else True, leave=False)
            for epoch in bar:
                sums: dict[str, torch.Tensor] = {}
                seen = 0
                inner = iter_batches(data, batch_size, shuffle=True, generator=generator)
                for step, batch in enumerate(inner):
                    batch = to_device(batch, dev)
                    out = loss_fn(model, batch)
                    if not isinstance(out, dict):
                        out = {"loss": out}
                    loss = out["loss"]
                    if not bool(torch.isfinite(loss.detach()).all()):
                        raise NonFiniteError(
                            f"{desc}: the loss became {float(loss.detach())} at epoch {epoch}, "
                            f"batch {step + 1}{f' of {total}' if total else ''}; training "
                            "stopped and the weights were restored (lower the learning rate, "
                            "check the data for NaN/Inf).")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    n = batch_size_of(batch)
                    for key, value in out.items():
                        value = value.detach() if isinstance(value, torch.Tensor) else \
                            torch.tensor(float(value))
                        sums[key] = sums.get(key, torch.zeros((), device=dev)) + \
                            value.to(dev, torch.float64) * n
                    seen += n
                if seen == 0:
                    raise InvalidParameterError(f"{desc}: the data hold no samples.")
                # one host sync per epoch: the sums stayed on the device
                for key, value in sums.items():
                    history.metrics.setdefault(key, []).append(float(value) / seen)
                shown = {k: f"{v[-1]:.4f}" for k, v in history.metrics.items()}
                bar.set_postfix(shown)
                logger.debug("%s epoch %d: %s", desc, epoch, shown)
                if ckpt_dir is not None:
                    path = ckpt_dir / f"epoch_{epoch:03d}.pt"
                    state = {k: v.detach().to("cpu", copy=True)
                             for k, v in model.state_dict().items()}
                    payload = {"epoch": epoch, "state_dict": state,
                               "lr": float(opt.param_groups[0]["lr"]),
                               **{k: v[-1] for k, v in history.metrics.items()}}
                    if checkpoint_extra is not None:
                        payload.update(checkpoint_extra(epoch))
                    torch_save_atomic(payload, path)
                    history.checkpoints.append(path)
            bar.close()
        finished = True
    finally:
        if moved:
            model.to(home)
        if restore_mode or not finished:  # a failed call leaves the model as it found it
            for module, flag in training_flags:
                module.training = flag
        else:
            model.eval()
    return history
