"""Augmentations that suit 16x16 digits, in torch (no torchvision): small shifts, small rotations,
Gaussian noise. One affine resampling per batch (``affine_grid`` + ``grid_sample``), every
random draw from one seeded ``torch.Generator``.

The contrastive encoder (:mod:`latentsurgeon.models.contrastive`) learns from two augmented views
of each digit; the augmentations must change the pixels without changing the digit, which is why
rotations stay small (a 6 turned by 180 degrees is a 9) and there is no flip or crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from latentsurgeon._validation import Interval, Seed, check_finite, validate_params
from latentsurgeon.errors import ShapeMismatchError

__all__ = ["DigitAugment", "augment_digits", "make_generator"]


def make_generator(seed: int | torch.Generator | None) -> torch.Generator:
    """A CPU generator from a seed: an int seeds a new one, a ``torch.Generator`` is used as it
    is (its state advances), None seeds a new one from fresh entropy."""
    if isinstance(seed, torch.Generator):
        return seed
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def augment_digits(
    x: torch.Tensor,
    *,
    max_shift: float = 2.0,
    max_rotation: float = 15.0,
    noise_std: float = 0.05,
    clip: bool = True,
    seed: int | torch.Generator | None = None,
) -> torch.Tensor:
    """A randomly shifted, rotated and noised copy of each image.

    Per image: a rotation by an angle uniform in ``[-max_rotation, max_rotation]`` degrees about
    the image centre and a shift uniform in ``[-max_shift, max_shift]`` pixels along each axis,
    applied together by one bilinear resampling (outside the image counts as 0); then
    ``N(0, noise_std^2)`` noise per pixel; then, with ``clip``, clamping to ``[0, 1]``.

    Args:
        x: ``(N, C, H, W)`` images (digits: ``(N, 1, 16, 16)`` in ``[0, 1]``).
        max_shift: largest shift in pixels.
        max_rotation: largest rotation in degrees.
        noise_std: standard deviation of the pixel noise.
        clip: clamp the result to ``[0, 1]``.
        seed: an int (reproducible), a ``torch.Generator`` (draws from it: pass
            ``torch.default_generator`` to follow torch's global RNG, as the training loop
            seeds it) or None (fresh randomness). Draws happen on the CPU, so the result does not
            depend on the device.

    Returns:
        A new ``(N, C, H, W)`` tensor on ``x``'s device and dtype.

    Raises:
        NonFiniteError: ``x`` holds NaN or Inf.
    """
    validate_params(
        {"max_shift": max_shift, "max_rotation": max_rotation, "noise_std": noise_std,
         "seed": seed},
        {"max_shift": Interval(float, 0, None), "max_rotation": Interval(float, 0, 180),
         "noise_std": Interval(float, 0, None), "seed": Seed()},
        owner="augment_digits")
    if x.dim() != 4:
        raise ShapeMismatchError(
            f"augment_digits expects images (N, C, H, W); got shape {tuple(x.shape)}.")
    check_finite(x, "augment_digits: x")
    generator = make_generator(seed)
    n, _, h, w = x.shape
    # Draws in float64 on the CPU: identical per seed on every device and dtype.
    angle = (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) \
        * math.radians(max_rotation)
    shift = (torch.rand(n, 2, generator=generator, dtype=torch.float64) * 2 - 1) * max_shift
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    # grid_sample's normalised coordinates span the image with 2 units (align_corners=False)
    theta[:, 0, 2] = shift[:, 0] * 2.0 / w
    theta[:, 1, 2] = shift[:, 1] * 2.0 / h
    dtype = x.dtype if x.is_floating_point() else torch.float32
    theta = theta.to(device=x.device, dtype=dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.to(dtype), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    if noise_std > 0:
        out = out + float(noise_std) * noise.to(device=x.device, dtype=dtype)
    return out.clamp(0.0, 1.0) if clip else out


@dataclass(frozen=True)
class DigitAugment:
    """:func:`augment_digits` with its settings fixed: ``DigitAugment()(x, seed=0)``.

    Attributes:
        max_shift: largest shift in pixels.
        max_rotation: largest rotation in degrees.
        noise_std: standard deviation of the pixel noise.
        clip: clamp the result to ``[0, 1]``.
    """

    max_shift: float = 2.0
    max_rotation: float = 15.0
    noise_std: float = 0.05
    clip: bool = True

    def __call__(self, x: torch.Tensor, seed: int | torch.Generator | None = None) -> torch.Tensor:
        return augment_digits(x, max_shift=self.max_shift, max_rotation=self.max_rotation,
                              noise_std=self.noise_std, clip=self.clip, seed=seed)
