"""lfxai's image models (``lfxai.models.images``) on latentsurgeon's reference models.

The architectures are latentsurgeon's digit designs at 28x28 (:func:`~latentsurgeon.models.
digit_encoder`, :func:`~latentsurgeon.models.digit_decoder`, :class:`~latentsurgeon.models.
PerturbedAutoencoder`, :class:`~latentsurgeon.models.EncoderClassifier`,
:class:`~latentsurgeon.models.VAE`), not lfxai's layer for layer: their state dicts differ, so
lfxai's saved weights do not load into them (docs/compat.md lists this). The constructors, ``fit``,
``save``, ``save_metadata``, ``load_metadata``, ``train_epoch`` and ``test_epoch`` take lfxai's
arguments; training runs through the one loop (:mod:`._fitting`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latentsurgeon._validation import Interval, validate_params
from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.activations.batching import (
    batch_inputs,
    count_samples,
    iter_batches,
    model_device,
    to_device,
)
from latentsurgeon.compat.lfxai.models._fitting import FitMixin, epoch_seed
from latentsurgeon.compat.lfxai.models.pretext import as_perturbation
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.hooks import preserve_model_state
from latentsurgeon.models import (
    VAE,
    BetaTCVAELoss,
    BetaVAELoss,
    EncoderClassifier,
    PerturbedAutoencoder,
    digit_decoder,
    digit_encoder,
    train_vae,
)
from latentsurgeon.models.vae_losses import VAEOutputs
from latentsurgeon.training import train, train_classifier

__all__ = ["AutoEncoderMnist", "BetaTcVaeMnist", "BetaVaeMnist", "ClassifierMnist",
           "DecoderMnist", "EncoderMnist"]

#: lfxai's images are MNIST's 28x28
IMAGE_SIZE = 28


def _check_dim(name: str, value: Any, owner: str) -> int:
    validate_params({name: value}, {name: Interval(int, 1, None)}, owner=owner)
    return int(value)


def _check_module(name: str, value: Any, owner: str, example: str) -> nn.Module:
    if not isinstance(value, nn.Module):
        raise InvalidParameterError(
            f"{owner}: {name} must be an nn.Module ({example}); got {type(value).__name__}.")
    return value


def _check_loss(loss_f: Any, owner: str) -> Callable:
    if not callable(loss_f):
        raise InvalidParameterError(
            f"{owner}: loss_f must be a callable loss_f(inputs, reconstructions) -> scalar "
            f"(torch.nn.MSELoss()); got {type(loss_f).__name__}.")
    return loss_f


def _batches(dataloader: Any, model: nn.Module) -> Any:
    device = model_device(model)
    for batch in iter_batches(dataloader, 64):  # a DataLoader keeps its own batches
        yield to_device(batch, device)


def _label_free(batch: Any) -> torch.Tensor:
    return batch_inputs(batch)


class EncoderMnist(nn.Sequential):
    """``(N, 1, 28, 28) -> (N, encoded_space_dim)``: :func:`~latentsurgeon.models.digit_encoder`
    at 28x28 (two stride-2 convolutions with 16 and 32 channels, a linear code)."""

    def __init__(self, encoded_space_dim: int) -> None:
        dim = _check_dim("encoded_space_dim", encoded_space_dim, "EncoderMnist")
        super().__init__(*digit_encoder(dim, IMAGE_SIZE))
        self.encoded_space_dim = dim


class DecoderMnist(nn.Sequential):
    """``(N, encoded_space_dim) -> (N, 1, 28, 28)`` in ``(0, 1)``:
    :func:`~latentsurgeon.models.digit_decoder` at 28x28."""

    def __init__(self, encoded_space_dim: int) -> None:
        dim = _check_dim("encoded_space_dim", encoded_space_dim, "DecoderMnist")
        super().__init__(*digit_decoder(dim, IMAGE_SIZE))
        self.encoded_space_dim = dim


class AutoEncoderMnist(FitMixin, PerturbedAutoencoder):
    """lfxai's ``AutoEncoderMnist``: ``decoder(encoder(input_pert(x)))``, the perturbation
    applied in training mode only (:class:`~latentsurgeon.models.PerturbedAutoencoder`).

    Args:
        encoder, decoder: the two halves (:class:`EncoderMnist`, :class:`DecoderMnist` or any
            modules that fit together).
        latent_dim: size of the code.
        input_pert: the pretext perturbation (:mod:`.pretext`'s ``Identity()``,
            ``RandomNoise()``, ``Mask()``, or any callable ``x -> x~``).
        name: file stem of :meth:`save` and of the checkpoints.
        loss_f: ``loss_f(inputs, reconstructions) -> scalar``, lfxai's argument order.

    ``checkpoints_files`` lists the checkpoints ``fit`` wrote (what :class:`TracIn` sums over).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int,
                 input_pert: Callable, name: str = "model",
                 loss_f: Callable = nn.MSELoss()) -> None:  # noqa: B008 (lfxai's default)
        owner = "AutoEncoderMnist"
        _check_module("encoder", encoder, owner, "EncoderMnist(encoded_space_dim)")
        _check_module("decoder", decoder, owner, "DecoderMnist(encoded_space_dim)")
        dim = _check_dim("latent_dim", latent_dim, owner)
        super().__init__(encoder=encoder, decoder=decoder, latent_dim=dim,
                         input_pert=as_perturbation(input_pert))
        self.name = str(name)
        self.loss_f = _check_loss(loss_f, owner)
        self.checkpoints_files: list[Path] = []
        self.lr: float | None = None

    def _loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        x = _label_free(batch)
        return self.loss_f(x, ModelAccess(model, head=None).output(x))

    def train_epoch(self, device: Any, dataloader: Any, optimizer: torch.optim.Optimizer
                    ) -> float:
        """One epoch of the one training loop with ``optimizer``; the epoch's mean loss."""
        history = train(self, dataloader, self._loss, epochs=1, optimizer=optimizer,
                        seed=epoch_seed(), progress=False,
                        desc=f"{type(self).__name__}.fit")
        return history.metrics["loss"][-1]

    def test_epoch(self, device: Any, dataloader: Any) -> float:
        """Mean over batches of ``loss_f(x, model(input_pert(x)))`` in eval mode (lfxai scores
        the test set on perturbed inputs: the pretext task's own loss)."""
        access = ModelAccess(self, head=None)
        losses = []
        with preserve_model_state(self), torch.no_grad():
            self.eval()
            self.input_pert.train()  # the perturbation on, everything else in eval mode
            for batch in _batches(dataloader, self):
                x = _label_free(batch)
                losses.append(float(self.loss_f(x, access.output(x))))
        return float(np.mean(losses))

    def fit(self, device: Any, train_loader: Any, test_loader: Any, save_dir: Path,
            n_epoch: int = 30, patience: int = 10, checkpoint_interval: int = -1) -> None:
        """Train with Adam (1e-3, weight decay 1e-5) for up to ``n_epoch`` epochs, saving the
        model to ``save_dir`` whenever the test loss improves, stopping after ``patience``
        epochs without improvement, and writing a checkpoint every ``checkpoint_interval``
        epochs (epochs 1, 1 + k, 1 + 2k, ...; -1: none)."""
        self.lr = 1e-3
        self._fit(device, train_loader, test_loader, save_dir, n_epoch, patience,
                  checkpoint_interval)


class ClassifierMnist(FitMixin, EncoderClassifier):
    """lfxai's ``ClassifierMnist(encoder, latent_dim, name)``: a linear head to 10 classes on
    ``encoder`` (:class:`~latentsurgeon.models.EncoderClassifier`). ``forward`` returns logits
    (lfxai's returns softmax probabilities and applies cross-entropy to them, a second
    softmax); trained with cross-entropy on the logits."""

    def __init__(self, encoder: nn.Module, latent_dim: int, name: str) -> None:
        owner = "ClassifierMnist"
        _check_module("encoder", encoder, owner, "EncoderMnist(encoded_space_dim)")
        dim = _check_dim("latent_dim", latent_dim, owner)
        super().__init__(encoder=encoder, latent_dim=dim, n_classes=10)
        self.name = str(name)
        self.checkpoints_files: list[Path] = []
        self.encoded_space_dim = getattr(encoder, "encoded_space_dim", dim)

    def train_epoch(self, device: Any, dataloader: Any, optimizer: torch.optim.Optimizer
                    ) -> float:
        """One epoch of cross-entropy training with ``optimizer``; the mean loss."""
        history = train_classifier(self, dataloader, epochs=1, optimizer=optimizer,
                                   seed=epoch_seed(), progress=False)
        return history.metrics["loss"][-1]

    def test_epoch(self, device: Any, dataloader: Any) -> tuple[float, float]:
        """``(loss, accuracy)``: means over the batches, in eval mode."""
        access = ModelAccess(self, head=None)
        losses, accs = [], []
        with preserve_model_state(self), torch.no_grad():
            self.eval()
            for batch in _batches(dataloader, self):
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise InvalidParameterError(
                        "ClassifierMnist.test_epoch: dataloader must yield (images, labels) "
                        f"batches; got a {type(batch).__name__} batch.")
                logits = access.output(batch[0])
                labels = batch[1].long()
                losses.append(float(F.cross_entropy(logits, labels)))
                accs.append(float((logits.argmax(dim=-1) == labels).float().mean()))
        return float(np.mean(losses)), float(np.mean(accs))

    def fit(self, device: Any, train_loader: Any, test_loader: Any, save_dir: Path,
            n_epoch: int = 30, patience: int = 10) -> None:
        """As :meth:`AutoEncoderMnist.fit`, without checkpoints; selected by test loss."""
        self._fit(device, train_loader, test_loader, save_dir, n_epoch, patience, -1)


class _VaeMnist(FitMixin, VAE):
    """A :class:`~latentsurgeon.models.VAE` at 28x28 with lfxai's ``fit`` (no saving, no early
    stopping) and ``latent_sample``; ``forward`` returns lfxai's tuple."""

    def __init__(self, latent_dims: int = 10, beta: float = 1) -> None:
        owner = type(self).__name__
        dim = _check_dim("latent_dims", latent_dims, owner)
        validate_params({"beta": beta}, {"beta": Interval(float, 0, None)}, owner=owner)
        super().__init__(latent_dim=dim, image_size=IMAGE_SIZE)
        self.latent_dims = dim
        self.beta = beta
        self.name = owner
        self.checkpoints_files: list[Path] = []

    #: beta-TC-VAE (the total-correlation decomposition) rather than beta-VAE
    _total_correlation = False

    def _objective(self, n_data: int) -> Callable[[torch.Tensor, VAEOutputs], Any]:
        if self._total_correlation:
            return BetaTCVAELoss(n_data=max(int(n_data), 1), alpha=1.0, beta=float(self.beta),
                                 gamma=1.0, sampling="mss")
        return BetaVAELoss(beta=float(self.beta))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """lfxai's tuple: ``(reconstruction, mu, logvar)``, and ``z`` for beta-TC-VAE."""
        out = self.outputs(x)
        parts = (torch.sigmoid(out.logits), out.mu, out.logvar)
        return (*parts, out.z) if self._total_correlation else parts

    def latent_sample(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """A posterior sample in training mode, the mean in eval mode."""
        return self.reparameterize(mu, logvar) if self.training else mu

    def train_epoch(self, device: Any, dataloader: Any, optimizer: torch.optim.Optimizer
                    ) -> float:
        """One epoch of the VAE's loss with ``optimizer``; the mean loss."""
        history = train_vae(self, dataloader, loss=self._objective(count_samples(dataloader)),
                            epochs=1, optimizer=optimizer, seed=epoch_seed(), progress=False)
        return history.metrics["loss"][-1]

    def test_epoch(self, device: Any, dataloader: Any) -> float:
        """The loss's mean over batches in eval mode (decoded from the posterior means)."""
        objective = self._objective(count_samples(dataloader))
        losses = []
        with preserve_model_state(self), torch.no_grad():
            self.eval()
            for batch in _batches(dataloader, self):
                x = _label_free(batch)
                value = objective(x, self.outputs(x, sample=False))
                losses.append(float(value["loss"] if isinstance(value, dict) else value))
        return float(np.mean(losses))

    def fit(self, device: Any, train_loader: Any, test_loader: Any, n_epoch: int = 30) -> None:
        """Train with Adam (1e-3, weight decay 1e-5) for ``n_epoch`` epochs."""
        self._fit(device, train_loader, test_loader, None, n_epoch, n_epoch + 1, -1)


class BetaVaeMnist(_VaeMnist):
    """lfxai's ``BetaVaeMnist(latent_dims, beta)``: trained with
    :class:`~latentsurgeon.models.BetaVAELoss` (Bernoulli likelihood), a true negative ELBO
    with ``beta`` on the KL. ``forward(x) -> (reconstruction, mu, logvar)``."""


class BetaTcVaeMnist(_VaeMnist):
    """lfxai's ``BetaTcVaeMnist(latent_dims, beta)``: trained with
    :class:`~latentsurgeon.models.BetaTCVAELoss` (``alpha = gamma = 1``, ``beta`` on the total
    correlation, minibatch-stratified sampling, as lfxai's loss).
    ``forward(x) -> (reconstruction, mu, logvar, z)``."""

    _total_correlation = True
