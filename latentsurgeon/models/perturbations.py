"""Input perturbations of the pretext tasks: identity, Gaussian noise (denoising), masking
(inpainting).

Each is an ``nn.Module`` that changes its input only in training mode, like dropout: in eval mode
the input passes untouched, so an explanation of a trained model sees the clean input. The noise
is drawn from torch's global RNG, which :func:`latentsurgeon.training.train` seeds with its
``seed`` for the duration of the call; the same seed therefore gives the same perturbations.
"""

from __future__ import annotations

import torch
from torch import nn

from latentsurgeon._validation import Interval, validate_params
from latentsurgeon.errors import InvalidParameterError

__all__ = ["PERTURBATIONS", "GaussianNoise", "Identity", "RandomMask", "make_perturbation"]

#: The names :func:`make_perturbation` accepts and the pretext task each one sets up.
PERTURBATIONS = {"identity": "reconstruction", "noise": "denoising", "mask": "inpainting"}


class Identity(nn.Module):
    """No perturbation: the autoencoder learns plain reconstruction."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class GaussianNoise(nn.Module):
    """Adds ``N(0, std^2)`` noise to every entry in training mode (denoising pretext task).

    Values are not clipped, so the perturbation is exactly additive Gaussian noise.

    Args:
        std: standard deviation of the noise (the input's units; digits lie in ``[0, 1]``).
    """

    def __init__(self, std: float = 0.3) -> None:
        super().__init__()
        validate_params({"std": std}, {"std": Interval(float, 0, None)}, owner="GaussianNoise")
        self.std = float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.std == 0:
            return x
        return x + self.std * torch.randn_like(x)

    def extra_repr(self) -> str:
        return f"std={self.std}"


class RandomMask(nn.Module):
    """Sets a random ``fraction`` of the entries to ``value`` in training mode (inpainting).

    Each entry is masked independently with probability ``fraction`` (per sample, per channel,
    per pixel), as lfxai's ``Mask(mask_proportion)``.

    Args:
        fraction: probability that an entry is masked, in ``[0, 1]``.
        value: what masked entries become (0: black pixels).
    """

    def __init__(self, fraction: float = 0.3, value: float = 0.0) -> None:
        super().__init__()
        validate_params({"fraction": fraction, "value": value},
                        {"fraction": Interval(float, 0, 1), "value": Interval(float, None, None)},
                        owner="RandomMask")
        self.fraction = float(fraction)
        self.value = float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.fraction == 0:
            return x
        masked = torch.rand_like(x, dtype=torch.float32) < self.fraction
        return x.masked_fill(masked, self.value)

    def extra_repr(self) -> str:
        return f"fraction={self.fraction}, value={self.value}"


def make_perturbation(name: str | nn.Module | None, **kwargs: float) -> nn.Module:
    """A perturbation from its name: ``"identity"``, ``"noise"`` (``std=``) or ``"mask"``
    (``fraction=``, ``value=``); a module is returned as it is, None gives :class:`Identity`."""
    if isinstance(name, nn.Module):
        return name
    if name is None or name == "identity":
        if kwargs:
            raise InvalidParameterError(
                f"the identity perturbation takes no settings; got {sorted(kwargs)}.")
        return Identity()
    if name == "noise":
        return GaussianNoise(**kwargs)
    if name == "mask":
        return RandomMask(**kwargs)
    raise InvalidParameterError(
        f"perturbation must be one of {sorted(PERTURBATIONS)}, an nn.Module or None; got {name!r}.")
