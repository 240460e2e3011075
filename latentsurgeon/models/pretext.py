"""One encoder design, five pretext tasks: the models of lfxai's pretext-sensitivity study.

``reconstruction``, ``denoising`` and ``inpainting`` are a :class:`PerturbedAutoencoder` with the
identity, Gaussian-noise and mask perturbation; ``classification`` an :class:`EncoderClassifier`;
``contrastive`` a :class:`ContrastiveEncoder`. Each has the encoder of
:func:`~latentsurgeon.models.digit_encoder` as its ``encoder`` submodule and ``encode(x)`` giving
its ``(N, latent_dim)`` representation, so their explanations can be compared unit for unit.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from latentsurgeon._validation import Interval, Options, Seed, validate_params
from latentsurgeon.models.contrastive import ContrastiveEncoder, train_contrastive
from latentsurgeon.models.perturbed_autoencoder import EncoderClassifier, PerturbedAutoencoder
from latentsurgeon.training import (
    OptimizerSpec,
    TrainingData,
    TrainingHistory,
    train_autoencoder,
    train_classifier,
)

__all__ = ["PRETEXT_TASKS", "pretext_model", "train_pretext"]

#: The pretext tasks, in the order lfxai's study lists them (plus the contrastive one).
PRETEXT_TASKS = ("reconstruction", "denoising", "inpainting", "classification", "contrastive")

_PERTURBATION = {"reconstruction": "identity", "denoising": "noise", "inpainting": "mask"}


def pretext_model(
    task: str,
    *,
    latent_dim: int = 16,
    seed: int | None = 0,
    n_classes: int = 10,
    noise_std: float = 0.3,
    mask_fraction: float = 0.3,
    image_size: int = 16,
) -> nn.Module:
    """A fresh, untrained model for a pretext task, initialised from ``seed``.

    The encoder is built first, so one seed gives every task the same initial encoder weights:
    differences between the trained encoders come from the tasks. Torch's global RNG is
    restored afterwards.

    Args:
        task: one of :data:`PRETEXT_TASKS`.
        latent_dim: size of the representation.
        seed: initialisation seed (None: fresh randomness).
        n_classes: logits of the classifier.
        noise_std: the denoising task's noise level.
        mask_fraction: the inpainting task's share of masked pixels.
        image_size: side length of the images.
    """
    validate_params({"task": task, "seed": seed},
                    {"task": Options(PRETEXT_TASKS), "seed": Seed()}, owner="pretext_model")
    with torch.random.fork_rng(devices=[]):
        if seed is None:
            torch.seed()
        else:
            torch.manual_seed(int(seed))
        if task in _PERTURBATION:
            kwargs = {"std": noise_std} if task == "denoising" else \
                {"fraction": mask_fraction} if task == "inpainting" else {}
            return PerturbedAutoencoder(latent_dim=latent_dim, input_pert=_PERTURBATION[task],
                                        image_size=image_size, **kwargs)
        if task == "classification":
            return EncoderClassifier(latent_dim=latent_dim, n_classes=n_classes,
                                     image_size=image_size)
        return ContrastiveEncoder(latent_dim=latent_dim, image_size=image_size)


def train_pretext(
    task: str,
    data: TrainingData,
    *,
    latent_dim: int = 16,
    epochs: int = 15,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int | None = 0,
    device: str | torch.device | None = None,
    weight_decay: float = 0.0,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    optimizer: OptimizerSpec = "adam",
    noise_std: float = 0.3,
    mask_fraction: float = 0.3,
    temperature: float = 0.5,
    n_classes: int = 10,
) -> tuple[nn.Module, TrainingHistory]:
    """Build the model of a pretext task (:func:`pretext_model`) and train it.

    The autoencoders train with :func:`~latentsurgeon.models.train_autoencoder` (reconstruct
    the clean input from the perturbed one), the classifier with
    :func:`~latentsurgeon.models.train_classifier` (``data`` must hold labels), the contrastive
    encoder with :func:`~latentsurgeon.models.train_contrastive`. ``seed`` initialises the
    model and drives the training (batch order, perturbations, augmentations).

    Args:
        task: one of :data:`PRETEXT_TASKS`.
        data: ``(images, labels)`` (labels are used by ``"classification"`` only), images
            alone for the other tasks, a split, a Dataset or a DataLoader.
        latent_dim, noise_std, mask_fraction, n_classes: as :func:`pretext_model`.
        temperature: NT-Xent's temperature (``"contrastive"``).
        epochs, lr, batch_size, seed, device, weight_decay, progress, checkpoint_dir,
        optimizer: as :func:`~latentsurgeon.training.train`.

    Returns:
        ``(model, history)``; the model is trained and in eval mode.
    """
    validate_params({"task": task, "latent_dim": latent_dim},
                    {"task": Options(PRETEXT_TASKS), "latent_dim": Interval(int, 1, None)},
                    owner="train_pretext")
    model = pretext_model(task, latent_dim=latent_dim, seed=seed, noise_std=noise_std,
                          mask_fraction=mask_fraction, n_classes=n_classes)
    common = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed,
              "device": device, "weight_decay": weight_decay, "progress": progress,
              "checkpoint_dir": checkpoint_dir, "optimizer": optimizer}
    if task in _PERTURBATION:
        history = train_autoencoder(model, data, **common)
    elif task == "classification":
        history = train_classifier(model, data, **common)
    else:
        history = train_contrastive(model, data, temperature=temperature, **common)
    return model, history
