"""lfxai's pretext perturbations (``lfxai.models.pretext``) as latentsurgeon's perturbation modules.

``Identity``, ``RandomNoise(noise_level)`` and ``Mask(mask_proportion, baseline)`` are
:class:`latentsurgeon.models.Identity`, :class:`~latentsurgeon.models.GaussianNoise` and
:class:`~latentsurgeon.models.RandomMask` under lfxai's names and arguments, with lfxai's
``str()`` (the name of the pretext task). Being modules, they perturb in training mode only; an
autoencoder applies its perturbation in training mode only in lfxai too, so inside a model the
behaviour is the same. A fresh perturbation is in training mode, so calling one on its own
perturbs, as lfxai's does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from latentsurgeon._validation import Interval, validate_params
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.models.perturbations import GaussianNoise, RandomMask
from latentsurgeon.models.perturbations import Identity as _Identity

__all__ = ["Identity", "Mask", "RandomNoise", "as_perturbation"]


class Identity(_Identity):
    """No perturbation: plain reconstruction."""

    def __str__(self) -> str:
        return "Reconstruction"


class RandomNoise(GaussianNoise):
    """Additive Gaussian noise of standard deviation ``noise_level`` (denoising)."""

    def __init__(self, noise_level: float = 0.3) -> None:
        validate_params({"noise_level": noise_level},
                        {"noise_level": Interval(float, 0, None)}, owner="RandomNoise")
        super().__init__(std=noise_level)
        self.noise_level = self.std

    def __str__(self) -> str:
        return "Denoising"


class Mask(RandomMask):
    """Each entry set to ``baseline`` with probability ``mask_proportion`` (inpainting)."""

    def __init__(self, mask_proportion: float = 0.2, baseline: float = 0.0) -> None:
        validate_params({"mask_proportion": mask_proportion, "baseline": baseline},
                        {"mask_proportion": Interval(float, 0, 1),
                         "baseline": Interval(float, None, None)}, owner="Mask")
        super().__init__(fraction=mask_proportion, value=baseline)
        self.mask_proportion = self.fraction
        self.baseline = self.value

    def __str__(self) -> str:
        return "Inpainting"


class _CallablePerturbation(nn.Module):
    """A user's perturbation callable (lfxai accepts any ``x -> x~``), applied in training mode
    only, as lfxai's autoencoders apply theirs."""

    def __init__(self, perturb: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.perturb = perturb

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.perturb(x) if self.training else x

    def __str__(self) -> str:
        return str(self.perturb)


def as_perturbation(input_pert: object) -> nn.Module:
    """``input_pert`` as a module: a module as it is, any other callable wrapped."""
    if isinstance(input_pert, nn.Module):
        return input_pert
    if callable(input_pert):
        return _CallablePerturbation(input_pert)
    raise InvalidParameterError(
        "input_pert must be a perturbation (Identity(), RandomNoise(), Mask(), an nn.Module or "
        f"a callable x -> perturbed x); got {type(input_pert).__name__}.")
