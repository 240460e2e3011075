"""The pretext-task models of lfxai's experiments on one encoder design.

:class:`PerturbedAutoencoder` is lfxai's ``AutoEncoderMnist(encoder, decoder, latent_dim,
input_pert)`` for 16x16 digits: an autoencoder that perturbs its input in training mode only
(identity, Gaussian noise or a random mask, :mod:`latentsurgeon.models.perturbations`) and
reconstructs the clean input, so reconstruction, denoising and inpainting are one model with three
perturbations. :class:`EncoderClassifier` puts a linear head on the same encoder design.
:func:`digit_encoder` and :func:`digit_decoder` are that design: exactly the layers of
:class:`~latentsurgeon.models.DigitAutoencoder`.

Training: the reconstruction target is the clean input and the perturbation lives inside the
model, so :func:`~latentsurgeon.models.train_autoencoder` trains every
:class:`PerturbedAutoencoder` and :func:`~latentsurgeon.models.train_classifier` trains the
:class:`EncoderClassifier` (both through the one loop, with checkpoints).
"""

from __future__ import annotations

import torch
from torch import nn

from latentsurgeon._validation import Interval, validate_params
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.models.autoencoder import DigitAutoencoder
from latentsurgeon.models.cnn import check_image_batch
from latentsurgeon.models.perturbations import make_perturbation

__all__ = ["EncoderClassifier", "PerturbedAutoencoder", "digit_decoder", "digit_encoder"]

_SIZES = {"latent_dim": Interval(int, 1, None), "image_size": Interval(int, 4, None)}


def _check_sizes(owner: str, **sizes: int) -> None:
    validate_params(sizes, _SIZES, owner=owner)
    if sizes.get("image_size", 16) % 4:
        raise InvalidParameterError(
            f"{owner}: image_size must be a multiple of 4; got {sizes['image_size']}.")


def digit_encoder(latent_dim: int = 16, image_size: int = 16) -> nn.Sequential:
    """The shared encoder design ``(N, 1, S, S) -> (N, latent_dim)``: two stride-2 convolutions
    (16 and 32 channels, ReLU), flatten, a linear map to the code (no activation). The layers
    (``0``..``5``) are those of :class:`~latentsurgeon.models.DigitAutoencoder`'s ``encoder``.
    Initialisation draws from torch's global RNG."""
    _check_sizes("digit_encoder", latent_dim=latent_dim, image_size=image_size)
    return DigitAutoencoder(latent_dim, image_size).encoder


def digit_decoder(latent_dim: int = 16, image_size: int = 16) -> nn.Sequential:
    """The shared decoder design ``(N, latent_dim) -> (N, 1, S, S)`` in ``(0, 1)`` (sigmoid
    output): :class:`~latentsurgeon.models.DigitAutoencoder`'s ``decoder``."""
    _check_sizes("digit_decoder", latent_dim=latent_dim, image_size=image_size)
    return DigitAutoencoder(latent_dim, image_size).decoder


class PerturbedAutoencoder(nn.Module):
    """An autoencoder whose input is perturbed in training mode only (lfxai's
    ``AutoEncoderMnist``).

    ``forward(x) = decoder(encoder(input_pert(x)))``; the model is trained to give back the
    *clean* ``x`` (:func:`~latentsurgeon.models.train_autoencoder` does exactly that), so the
    perturbation sets the pretext task: ``"identity"`` reconstruction, ``"noise"`` denoising,
    ``"mask"`` inpainting. In eval mode ``input_pert`` is the identity: explanations and
    :meth:`encode` see the input as it is. :meth:`encode` never perturbs, in either mode.

    Module layout: ``input_pert``, ``encoder`` (default :func:`digit_encoder`), ``decoder``
    (default :func:`digit_decoder`).

    Args:
        encoder: maps ``(N, 1, S, S)`` images to ``(N, latent_dim)`` codes; None builds
            :func:`digit_encoder`.
        decoder: maps codes back to images; None builds :func:`digit_decoder`.
        latent_dim: size of the code (used to build the defaults and to check codes).
        input_pert: ``"identity"`` (or None), ``"noise"``, ``"mask"`` or an ``nn.Module``
            (see :func:`~latentsurgeon.models.perturbations.make_perturbation`).
        image_size: side length of the images the default encoder and decoder take.
        **pert_kwargs: settings of a named perturbation (``std=`` for ``"noise"``,
            ``fraction=`` for ``"mask"``).

    Call ``torch.manual_seed`` before construction for a reproducible initialisation.
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        latent_dim: int = 16,
        input_pert: str | nn.Module | None = "identity",
        image_size: int = 16,
        **pert_kwargs: float,
    ) -> None:
        super().__init__()
        _check_sizes(type(self).__name__, latent_dim=latent_dim, image_size=image_size)
        self.latent_dim = int(latent_dim)
        # Shapes are checked against the default design only; custom parts check themselves.
        self.image_size = int(image_size) if encoder is None else None
        self.input_pert = make_perturbation(input_pert, **pert_kwargs)
        self.encoder = encoder if encoder is not None else digit_encoder(latent_dim, image_size)
        self.decoder = decoder if decoder is not None else digit_decoder(latent_dim, image_size)

    def _check(self, x: torch.Tensor) -> None:
        if self.image_size is not None:
            check_image_batch(x, self.image_size, type(self).__name__)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, S, S)`` images -> ``(N, latent_dim)`` codes of the unperturbed input."""
        self._check(x)
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, latent_dim)`` codes -> reconstructions."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` from its perturbed version (training) or from ``x`` itself
        (eval): ``(N, 1, S, S)``."""
        self._check(x)
        return self.decoder(self.encoder(self.input_pert(x)))


class EncoderClassifier(nn.Module):
    """A classifier on the shared encoder design: ``head(encoder(x))``.

    The classification pretext task of lfxai's experiments (``ClassifierMnist``): the same
    encoder as the autoencoders, followed by one linear layer to the logits, so the code
    ``encode(x)`` is directly comparable with theirs. Train it with
    :func:`~latentsurgeon.models.train_classifier`.

    Module layout: ``encoder`` (default :func:`digit_encoder`), ``head`` (``Linear(latent_dim,
    n_classes)``).

    Args:
        encoder: maps images to ``(N, latent_dim)`` codes; None builds :func:`digit_encoder`.
        latent_dim: size of the code.
        n_classes: number of logits.
        image_size: side length of the images the default encoder takes.
    """

    def __init__(self, encoder: nn.Module | None = None, latent_dim: int = 16,
                 n_classes: int = 10, image_size: int = 16) -> None:
        super().__init__()
        _check_sizes(type(self).__name__, latent_dim=latent_dim, image_size=image_size)
        validate_params({"n_classes": n_classes}, {"n_classes": Interval(int, 2, None)},
                        owner=type(self).__name__)
        self.latent_dim = int(latent_dim)
        self.n_classes = int(n_classes)
        self.image_size = int(image_size) if encoder is None else None
        self.encoder = encoder if encoder is not None else digit_encoder(latent_dim, image_size)
        self.head = nn.Linear(self.latent_dim, self.n_classes)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, S, S)`` images -> ``(N, latent_dim)`` codes."""
        if self.image_size is not None:
            check_image_batch(x, self.image_size, type(self).__name__)
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, S, S)`` images -> ``(N, n_classes)`` logits."""
        return self.head(self.encode(x))
