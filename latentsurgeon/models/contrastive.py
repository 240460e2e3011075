"""A small SimCLR-style contrastive encoder (Chen et al. 2020) for 16x16 digits.

Two augmented views of every image in a batch go through the encoder and a projection head; the
NT-Xent loss pulls each view's projection towards its partner's and pushes it away from the other
``2N - 2`` projections. The representation explained afterwards is the encoder's output
(:meth:`ContrastiveEncoder.encode`), before the projection head, as in SimCLR.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentsurgeon._validation import Interval, validate_params
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError
from latentsurgeon.models.augment import DigitAugment
from latentsurgeon.models.cnn import check_image_batch
from latentsurgeon.models.perturbed_autoencoder import _check_sizes, digit_encoder
from latentsurgeon.training import OptimizerSpec, TrainingData, TrainingHistory, train

__all__ = ["ContrastiveEncoder", "nt_xent", "train_contrastive"]

Augmentation = Callable[..., torch.Tensor]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """The normalised temperature-scaled cross-entropy of SimCLR.

    Rows of ``z1`` and ``z2`` are two views of the same ``N`` samples. With ``u`` the ``2N``
    unit-normalised rows of ``[z1; z2]`` and ``s(a, b) = u_a . u_b / temperature``, the loss of
    anchor ``a`` with partner ``p(a)`` is ``-log(exp s(a, p(a)) / sum_{b != a} exp s(a, b))``;
    the result is the mean over all ``2N`` anchors.

    Args:
        z1, z2: ``(N, D)`` projections, ``N >= 2``.
        temperature: the softmax temperature (> 0; lfxai's SimCLR uses 0.5).

    Returns:
        A scalar tensor.
    """
    validate_params({"temperature": temperature},
                    {"temperature": Interval(float, 0, None, closed="neither")}, owner="nt_xent")
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ShapeMismatchError(
            f"nt_xent: z1 and z2 must share one (N, D) shape; got {tuple(z1.shape)} and "
            f"{tuple(z2.shape)}.")
    n = z1.shape[0]
    if n < 2:
        raise ShapeMismatchError("nt_xent needs at least 2 samples (negatives come from the "
                                 f"batch); got {n}.")
    u = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = u @ u.T / float(temperature)
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=u.device)
    logits = logits.masked_fill(self_pairs, float("-inf"))
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(u.device)
    return F.cross_entropy(logits, partner)


class ContrastiveEncoder(nn.Module):
    """The shared encoder design with a SimCLR projection head.

    Module layout: ``encoder`` (default :func:`~latentsurgeon.models.digit_encoder`:
    ``(N, 1, S, S) -> (N, latent_dim)``), ``projector`` (``projector.0`` Linear(latent_dim,
    hidden), ``projector.1`` ReLU, ``projector.2`` Linear(hidden, projection_dim)).

    Args:
        encoder: maps images to ``(N, latent_dim)``; None builds the shared digit encoder.
        latent_dim: size of the representation.
        projection_dim: size of the projection the loss sees.
        hidden: width of the projection head.
        image_size: side length of the images the default encoder takes.
    """

    def __init__(self, encoder: nn.Module | None = None, latent_dim: int = 16,
                 projection_dim: int = 32, hidden: int = 64, image_size: int = 16) -> None:
        super().__init__()
        _check_sizes(type(self).__name__, latent_dim=latent_dim, image_size=image_size)
        validate_params({"projection_dim": projection_dim, "hidden": hidden},
                        {"projection_dim": Interval(int, 1, None),
                         "hidden": Interval(int, 1, None)}, owner=type(self).__name__)
        self.latent_dim = int(latent_dim)
        self.image_size = int(image_size) if encoder is None else None
        self.encoder = encoder if encoder is not None else digit_encoder(latent_dim, image_size)
        self.projector = nn.Sequential(nn.Linear(self.latent_dim, hidden), nn.ReLU(),
                                       nn.Linear(hidden, projection_dim))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, S, S)`` images -> ``(N, latent_dim)`` representations."""
        if self.image_size is not None:
            check_image_batch(x, self.image_size, type(self).__name__)
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, S, S)`` images -> ``(N, projection_dim)`` projections."""
        return self.projector(self.encode(x))


def train_contrastive(
    model: nn.Module,
    data: TrainingData,
    *,
    temperature: float = 0.5,
    augment: Augmentation | None = None,
    epochs: int = 30,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int | None = 0,
    device: str | torch.device | None = None,
    weight_decay: float = 0.0,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    optimizer: OptimizerSpec = "adam",
) -> TrainingHistory:
    """Train a :class:`ContrastiveEncoder` in place with NT-Xent through the one training loop.

    Each batch is augmented twice (two independent draws) and the loss is
    :func:`nt_xent` of the two views' projections. Labels, if any, are ignored. Same contract
    as :func:`~latentsurgeon.models.train_autoencoder` otherwise.

    Args:
        model: maps ``(N, ...)`` inputs to ``(N, D)`` projections.
        data: images, ``(images, labels)``, a split, a Dataset or a DataLoader.
        temperature: NT-Xent's temperature.
        augment: ``augment(x, seed=generator) -> x'``; default :class:`DigitAugment` ``()``.
            It receives ``torch.default_generator``, which the loop seeds with ``seed``.
        batch_size: samples per step (each gives two views). A last batch of one sample
            changes nothing (NT-Xent needs negatives) and counts as a loss of 0 in the history.
        epochs, lr, seed, device, weight_decay, progress, checkpoint_dir, optimizer: as
            :func:`~latentsurgeon.training.train`.

    Returns:
        A :class:`~latentsurgeon.training.TrainingHistory`; the model is left in eval mode.
    """
    validate_params({"temperature": temperature},
                    {"temperature": Interval(float, 0, None, closed="neither")},
                    owner="train_contrastive")
    views = DigitAugment() if augment is None else augment
    if not callable(views):
        raise InvalidParameterError(
            f"train_contrastive: augment must be a callable augment(x, seed=...) or None; got "
            f"{views!r}.")

    def loss_fn(m: nn.Module, batch: Any) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if x.shape[0] < 2:
            # No negatives in a batch of one. A leaf zero leaves every .grad None, and the
            # optimizers skip parameters without gradients: the step changes nothing.
            return torch.zeros((), device=x.device, requires_grad=True)
        # torch.default_generator is the RNG train() seeds: the views follow the loop's seed
        first = views(x, seed=torch.default_generator)
        second = views(x, seed=torch.default_generator)
        projections = m(torch.cat([first, second]))
        return nt_xent(projections[: x.shape[0]], projections[x.shape[0]:], temperature)

    return train(model, data, loss_fn, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                 device=device, weight_decay=weight_decay, progress=progress,
                 checkpoint_dir=checkpoint_dir, optimizer=optimizer, desc="train_contrastive")
