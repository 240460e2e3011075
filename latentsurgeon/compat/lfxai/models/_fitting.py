"""lfxai's ``fit`` (Adam at 1e-3 with weight decay 1e-5, a test loss after every epoch, the best
model saved, early stopping, checkpoints every ``checkpoint_interval`` epochs) on latentsurgeon's
one training loop: each epoch is one :func:`latentsurgeon.training.train` call sharing one
optimizer, so Adam's moments carry over from epoch to epoch as in a single loop."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentsurgeon._io import torch_save_atomic, write_json_atomic
from latentsurgeon._validation import Interval, validate_params
from latentsurgeon.errors import InvalidParameterError

__all__ = ["FitMixin", "adam"]

logger = logging.getLogger(__name__)

_FIT = {"n_epoch": Interval(int, 0, None), "patience": Interval(int, 1, None),
        "checkpoint_interval": Interval(int, None, None)}


def adam(model: nn.Module) -> torch.optim.Optimizer:
    """lfxai's optimizer: Adam, learning rate 1e-3, weight decay 1e-5."""
    return torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)


def epoch_seed() -> int:
    """A seed for one epoch, drawn from torch's global RNG: ``torch.manual_seed`` before ``fit``
    reproduces the fit, as with lfxai (whose loop draws from the global RNG)."""
    return int(torch.randint(0, 2**31, ()))


def _directory(save_dir: Any, owner: str) -> Path:
    if not isinstance(save_dir, (str, Path)):
        raise InvalidParameterError(
            f"{owner}: save_dir must be a directory path (str or pathlib.Path); got "
            f"{type(save_dir).__name__}.")
    path = Path(save_dir)
    if path.exists() and not path.is_dir():
        raise InvalidParameterError(f"{owner}: save_dir must be a directory; {path} is a file.")
    return path


class FitMixin:
    """``fit``, ``save``, ``save_metadata`` and ``load_metadata`` of lfxai's image models.

    The class provides ``train_epoch(device, dataloader, optimizer) -> float`` and
    ``test_epoch(device, dataloader)`` (a float, or ``(loss, accuracy)``), ``name`` and
    ``latent_dim``.
    """

    name: str
    latent_dim: int
    checkpoints_files: list[Path]
    train_epoch: Callable[..., float]
    test_epoch: Callable[..., Any]

    def _fit(self, device: Any, train_loader: Any, test_loader: Any, save_dir: Any,
             n_epoch: int, patience: int, checkpoint_interval: int) -> None:
        owner = f"{type(self).__name__}.fit"
        validate_params({"n_epoch": n_epoch, "patience": patience,
                         "checkpoint_interval": checkpoint_interval}, _FIT, owner=owner)
        directory = None if save_dir is None else _directory(save_dir, owner)
        model: nn.Module = self  # type: ignore[assignment]
        model.to(device)  # lfxai's fit moves the model to the device, where it stays
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        optimizer = adam(model)
        best, waiting = math.inf, 0
        for epoch in range(n_epoch):
            train_loss = self.train_epoch(device, train_loader, optimizer)
            tested = self.test_epoch(device, test_loader)
            test_loss = float(tested[0] if isinstance(tested, tuple) else tested)
            logger.info("%s: epoch %d/%d, train loss %.3g, test loss %.3g", owner, epoch + 1,
                        n_epoch, train_loss, test_loss)
            if test_loss >= best:
                waiting += 1
                logger.info("no improvement over the best epoch (patience %d/%d)", waiting,
                            patience)
            else:
                best, waiting = test_loss, 0
                if directory is not None:
                    self.save(directory)
            if directory is not None and checkpoint_interval > 0 \
                    and epoch % checkpoint_interval == 0:
                # lfxai's files: plain state dicts named <name>_checkpoint<k>.pt, k from 1
                path = directory / f"{self.name}_checkpoint{1 + epoch // checkpoint_interval}.pt"
                torch_save_atomic(_cpu_state(model), path)
                self.checkpoints_files.append(path)
            if waiting == patience:
                logger.info("%s: early stopping after epoch %d", owner, epoch + 1)
                break

    def save(self, directory: Path) -> None:
        """Write ``<directory>/<name>.pt`` (the state dict, CPU tensors) and the metadata
        ``<directory>/<name>.json``, atomically."""
        path = _directory(directory, f"{type(self).__name__}.save")
        path.mkdir(parents=True, exist_ok=True)
        self.save_metadata(path)
        torch_save_atomic(_cpu_state(self), path / f"{self.name}.pt")  # type: ignore[arg-type]

    def save_metadata(self, directory: Path, **kwargs: Any) -> None:
        """Write ``{"latent_dim", "name"}`` to ``<directory>/<name>.json``. (lfxai forwards
        ``kwargs`` to ``json.dump``; the atomic writer takes ``sort_keys`` only.)"""
        path = _directory(directory, f"{type(self).__name__}.save_metadata")
        unknown = sorted(set(kwargs) - {"sort_keys"})
        if unknown:
            raise InvalidParameterError(
                f"{type(self).__name__}.save_metadata: the only json option taken is sort_keys; "
                f"got {unknown}.")
        write_json_atomic(path / f"{self.name}.json",
                          {"latent_dim": self.latent_dim, "name": self.name}, **kwargs)

    def load_metadata(self, directory: Path) -> dict:
        """The metadata :meth:`save` wrote to ``<directory>/<name>.json``."""
        import json

        path = _directory(directory, f"{type(self).__name__}.load_metadata") / \
            f"{self.name}.json"
        if not path.is_file():
            raise InvalidParameterError(
                f"{type(self).__name__}.load_metadata: directory holds no {path.name} (save() "
                f"writes it); looked for {path}.")
        return json.loads(path.read_text())


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
