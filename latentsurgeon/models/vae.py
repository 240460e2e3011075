"""A convolutional VAE for 16x16 digits and its training recipe (VAE, beta-VAE, beta-TC-VAE).

The three models of lfxai's disentanglement study differ only in their loss
(:mod:`latentsurgeon.models.vae_losses`): one :class:`VAE` architecture, trained by
:func:`train_vae` with :class:`~latentsurgeon.models.vae_losses.VAELoss`,
:class:`~latentsurgeon.models.vae_losses.BetaVAELoss` or
:class:`~latentsurgeon.models.vae_losses.BetaTCVAELoss`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from latentsurgeon._validation import Interval, validate_params
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError
from latentsurgeon.models.cnn import check_image_batch
from latentsurgeon.models.perturbed_autoencoder import _check_sizes
from latentsurgeon.models.vae_losses import VAELoss, VAEOutputs
from latentsurgeon.training import OptimizerSpec, TrainingData, TrainingHistory, train

__all__ = ["VAE", "train_vae"]


class VAE(nn.Module):
    """Gaussian-posterior VAE ``(N, 1, S, S) -> q(z|x) = N(mu, diag(exp(logvar)))`` in
    ``latent_dim`` units, decoded to per-pixel logits.

    Module layout::

        encoder.0  Conv2d(1, 16, 3, stride=2, padding=1)   (N, 16, S/2, S/2)
        encoder.1  ReLU
        encoder.2  Conv2d(16, 32, 3, stride=2, padding=1)  (N, 32, S/4, S/4)
        encoder.3  ReLU
        encoder.4  Flatten
        encoder.5  Linear(32 S^2/16, hidden)
        encoder.6  ReLU                                     (N, hidden)
        fc_mu      Linear(hidden, latent_dim)               posterior mean
        fc_logvar  Linear(hidden, latent_dim)               posterior log-variance
        decoder.0  Linear(latent_dim, hidden), decoder.1 ReLU,
        decoder.2  Linear(hidden, 32 S^2/16),  decoder.3 ReLU, decoder.4 Unflatten,
        decoder.5  ConvTranspose2d(32, 16, 4, 2, 1), decoder.6 ReLU,
        decoder.7  ConvTranspose2d(16, 1, 4, 2, 1)          (N, 1, S, S) logits

    :meth:`encode` gives the posterior mean (the representation lfxai explains, unit by unit);
    :meth:`forward` gives the reconstruction in ``(0, 1)``, decoded from a posterior sample in
    training mode (drawn from torch's global RNG, which the training loop seeds) and from the
    mean in eval mode, so an eval-mode forward is deterministic.

    Args:
        latent_dim: number of latent units.
        hidden: width of the fully connected layer on both sides.
        image_size: side length ``S`` of the images, a multiple of 4.
    """

    def __init__(self, latent_dim: int = 10, hidden: int = 128, image_size: int = 16) -> None:
        super().__init__()
        _check_sizes(type(self).__name__, latent_dim=latent_dim, image_size=image_size)
        validate_params({"hidden": hidden}, {"hidden": Interval(int, 1, None)},
                        owner=type(self).__name__)
        self.latent_dim = int(latent_dim)
        self.image_size = int(image_size)
        side = image_size // 4
        flat = 32 * side * side
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(flat, hidden),
            nn.ReLU(),
        )
        self.fc_mu = nn.Linear(hidden, self.latent_dim)
        self.fc_logvar = nn.Linear(hidden, self.latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(self.latent_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, flat),
            nn.ReLU(),
            nn.Unflatten(1, (32, side, side)),
            nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1),
        )

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 1, S, S)`` images -> ``(mu, logvar)``, each ``(N, latent_dim)``."""
        check_image_batch(x, self.image_size, type(self).__name__)
        hidden = self.encoder(x)
        return self.fc_mu(hidden), self.fc_logvar(hidden)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, S, S)`` images -> ``(N, latent_dim)`` posterior means."""
        return self.posterior(x)[0]

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """A sample ``mu + exp(logvar / 2) * eps``, ``eps ~ N(0, I)`` (torch's global RNG unless
        a ``generator`` is given)."""
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype,
                          device=generator.device if generator is not None else mu.device)
        return mu + torch.exp(0.5 * logvar) * eps.to(mu.device)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, latent_dim)`` codes -> ``(N, 1, S, S)`` logits of the pixels."""
        if not (torch.jit.is_tracing() or torch.jit.is_scripting()) and (
                z.dim() != 2 or z.shape[1] != self.latent_dim):
            raise ShapeMismatchError(
                f"{type(self).__name__}.decode expects codes of shape (N, {self.latent_dim}), "
                f"got {tuple(z.shape)}")
        return self.decoder(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, latent_dim)`` codes -> ``(N, 1, S, S)`` pixel means in ``(0, 1)``."""
        return torch.sigmoid(self.decode_logits(z))

    def outputs(self, x: torch.Tensor, sample: bool | None = None) -> VAEOutputs:
        """Everything a loss needs: :class:`~latentsurgeon.models.vae_losses.VAEOutputs`
        ``(logits, mu, logvar, z)``. ``sample``: decode a posterior sample (default: in training
        mode) or the mean."""
        mu, logvar = self.posterior(x)
        if sample is None:
            sample = self.training
        z = self.reparameterize(mu, logvar) if sample else mu
        return VAEOutputs(self.decode_logits(z), mu, logvar, z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(N, 1, S, S)`` in ``(0, 1)``."""
        return torch.sigmoid(self.outputs(x).logits)


def train_vae(
    model: nn.Module,
    data: TrainingData,
    *,
    loss: Any = None,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int | None = 0,
    device: str | torch.device | None = None,
    weight_decay: float = 0.0,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    optimizer: OptimizerSpec = "adam",
) -> TrainingHistory:
    """Train a :class:`VAE` in place through the one training loop.

    Same contract as :func:`~latentsurgeon.models.train_autoencoder` (labels, if any, are
    ignored), with the loss as a parameter.

    Args:
        model: a :class:`VAE` (anything with ``outputs(x, sample=True)`` returning
            :class:`~latentsurgeon.models.vae_losses.VAEOutputs`).
        data: images ``(N, 1, S, S)``, ``(images, labels)``, a split, a Dataset or a DataLoader.
        loss: :class:`~latentsurgeon.models.vae_losses.VAELoss` (the default, Bernoulli),
            :class:`~latentsurgeon.models.vae_losses.BetaVAELoss` or
            :class:`~latentsurgeon.models.vae_losses.BetaTCVAELoss` (its ``n_data`` the size
            of ``data``), or any ``loss(x, outputs) -> tensor or dict``.
        epochs, lr, batch_size, seed, device, weight_decay, progress, checkpoint_dir,
        optimizer: as :func:`~latentsurgeon.training.train`. ``seed`` also drives the
            posterior samples.

    Returns:
        A :class:`~latentsurgeon.training.TrainingHistory` with the loss's terms per
        epoch (``"recon"``, ``"kl"``, and ``"mi"``, ``"tc"``, ``"dwkl"`` for beta-TC-VAE). The
        model is left in eval mode.
    """
    objective = VAELoss() if loss is None else loss
    if not callable(objective):
        raise InvalidParameterError(
            f"train_vae: loss must be a VAE loss (VAELoss, BetaVAELoss, BetaTCVAELoss) or a "
            f"callable loss(x, outputs); got {objective!r}.")
    if not callable(getattr(model, "outputs", None)):
        raise InvalidParameterError(
            "train_vae: the model must have outputs(x, sample=True) returning VAEOutputs "
            "(latentsurgeon.models.VAE does).")

    def loss_fn(m: nn.Module, batch: Any) -> Any:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return objective(x, m.outputs(x, sample=True))

    return train(model, data, loss_fn, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                 device=device, weight_decay=weight_decay, progress=progress,
                 checkpoint_dir=checkpoint_dir, optimizer=optimizer, desc="train_vae")
