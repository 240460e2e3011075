"""A small convolutional autoencoder for 16x16 single-channel digits."""

from __future__ import annotations

import torch
from torch import nn

from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError
from latentsurgeon.models.cnn import check_image_batch

__all__ = ["DigitAutoencoder"]


class DigitAutoencoder(nn.Module):
    """Convolutional autoencoder ``(N, 1, 16, 16) -> (N, latent_dim) -> (N, 1, 16, 16)``.

    Module layout::

        encoder.0  Conv2d(1, 16, 3, stride=2, padding=1)    (N, 16, 8, 8)
        encoder.1  ReLU
        encoder.2  Conv2d(16, 32, 3, stride=2, padding=1)   (N, 32, 4, 4)
        encoder.3  ReLU
        encoder.4  Flatten                                  (N, 512)
        encoder.5  Linear(512, latent_dim)                  (N, latent_dim)
        decoder.0  Linear(latent_dim, 512)
        decoder.1  ReLU
        decoder.2  Unflatten                                (N, 32, 4, 4)
        decoder.3  ConvTranspose2d(32, 16, 4, stride=2, padding=1)  (N, 16, 8, 8)
        decoder.4  ReLU
        decoder.5  ConvTranspose2d(16, 1, 4, stride=2, padding=1)   (N, 1, 16, 16)
        decoder.6  Sigmoid                                  values in (0, 1)

    The latent code is linear (no activation) so that label-free explanations see an
    unconstrained representation. Call ``torch.manual_seed`` before construction for a
    reproducible initialisation.

    Args:
        latent_dim: size of the latent code.
        image_size: input side length; must be divisible by 4.
    """

    def __init__(self, latent_dim: int = 16, image_size: int = 16) -> None:
        super().__init__()
        if latent_dim < 1:
            raise InvalidParameterError(f"latent_dim must be >= 1, got {latent_dim}")
        if image_size % 4:
            raise InvalidParameterError(f"image_size must be divisible by 4, got {image_size}")
        self.latent_dim = int(latent_dim)
        self.image_size = int(image_size)
        side = image_size // 4
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1),
            nn.ReLU(inplace=False),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(inplace=False),
            nn.Flatten(),
            nn.Linear(32 * side * side, self.latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(self.latent_dim, 32 * side * side),
            nn.ReLU(inplace=False),
            nn.Unflatten(1, (32, side, side)),
            nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1),
            nn.ReLU(inplace=False),
            nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 16, 16)`` images -> ``(N, latent_dim)`` codes."""
        check_image_batch(x, self.image_size, type(self).__name__)
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, latent_dim)`` codes -> ``(N, 1, 16, 16)`` reconstructions in ``(0, 1)``."""
        if not (torch.jit.is_tracing() or torch.jit.is_scripting()) and (
            z.dim() != 2 or z.shape[1] != self.latent_dim
        ):
            raise ShapeMismatchError(
                f"{type(self).__name__}.decode expects codes of shape (N, {self.latent_dim}), "
                f"got {tuple(z.shape)}"
            )
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction: ``decode(encode(x))``, shape ``(N, 1, 16, 16)``."""
        return self.decode(self.encode(x))
