"""The artifact a certificate tests for: where it sits and what it looks like, so that it can be
pasted into images that lack it (counterfactual insertion) and removed from images that carry it
(counterfactual removal).

An :class:`Artifact` is a fixed-position pattern: ``mask`` ``(H, W)`` marks its elements and
``pattern`` holds their values (``(H, W)``, ``(C, H, W)`` or, for inputs of any other rank, the
per-sample shape). It is given, or estimated from examples that carry it
(:meth:`Artifact.from_examples`: the elements most examples mark, their mean value there), which
is how artifact masks found by discovery or supplied as labels become a testable artifact.

Removal fills the masked elements with a neutral value (:data:`FILLS`):

* ``"local_mean"``: per image and channel, the mean of the unmasked pixels in the one-pixel ring
  around the masked region (an inpainting by the local mean; images ``(N, C, H, W)`` only). On the
  bundled watermark digits it reproduces the effect of restoring the true clean image: the share of
  shortcut-class images that leave the class agrees to the sample (measured on the demo's models).
* ``"clean_mean"``: the mean of reference clean inputs at each masked element (any rank).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from latentsurgeon._validation import check_finite
from latentsurgeon.activations.batching import to_tensor
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError

__all__ = ["FILLS", "Artifact"]

FILLS = ("local_mean", "clean_mean")


def _sample_masks(masks: Any, inputs: torch.Tensor, name: str) -> torch.Tensor:
    """``(N, *S)`` bool masks broadcast to the per-sample shape, for spatial masks ``(N, H, W)``
    / ``(H, W)`` of image inputs ``(N, C, H, W)`` expanded over channels."""
    m = to_tensor(masks, name).bool()
    per_sample = tuple(inputs.shape[1:])
    n = inputs.shape[0]
    if inputs.dim() == 4 and tuple(m.shape[-2:]) == per_sample[-2:] and m.dim() in (2, 3):
        if m.dim() == 3 and m.shape[0] != n:
            raise ShapeMismatchError(
                f"{name}: {m.shape[0]} masks for {n} inputs; expected (N, H, W) with N = {n}, "
                "or one (H, W) mask for all.")
        m = m.reshape(-1, 1, *per_sample[-2:]) if m.dim() == 3 else m.reshape(1, 1, *m.shape)
    elif tuple(m.shape) == per_sample:
        m = m.unsqueeze(0)
    elif tuple(m.shape) != (n, *per_sample):
        raise ShapeMismatchError(
            f"{name}: masks of shape {tuple(m.shape)} do not fit inputs of shape "
            f"{tuple(inputs.shape)}; expected (N, H, W) or (H, W) for images, or the inputs' "
            "per-sample or full shape.")
    return m.expand(n, *per_sample)


@dataclass(frozen=True)
class Artifact:
    """A fixed-position artifact.

    Attributes:
        pattern: its values, broadcastable to one input (``(H, W)`` or ``(C, H, W)`` for images,
            the per-sample shape otherwise).
        mask: ``(H, W)`` (images) or the per-sample shape; True marks the artifact's elements.
    """

    pattern: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        pattern = check_finite(to_tensor(self.pattern, "pattern").float(), "Artifact: pattern")
        mask = to_tensor(self.mask, "mask").bool()
        try:
            torch.broadcast_shapes(pattern.shape, mask.shape)
        except RuntimeError:
            raise ShapeMismatchError(
                f"Artifact: pattern of shape {tuple(pattern.shape)} and mask of shape "
                f"{tuple(mask.shape)} must broadcast to one shape.") from None
        if not bool(mask.any()):
            raise InvalidParameterError("Artifact: mask must mark at least one element; it is "
                                        "empty.")
        object.__setattr__(self, "pattern", pattern)
        object.__setattr__(self, "mask", mask)

    @classmethod
    def from_examples(cls, images: Any, masks: Any, *, agreement: float = 0.5) -> Artifact:
        """The artifact that ``images`` carry where ``masks`` mark it.

        Args:
            images: ``(N, ...)`` inputs that carry the artifact.
            masks: their masks (``(N, H, W)`` or ``(H, W)`` for images, or the inputs' shape).
            agreement: an element belongs to the artifact when at least this share of the
                masks mark it.

        Returns:
            An :class:`Artifact` whose pattern is the mean of ``images`` over the masks that
            mark each element.

        Raises:
            InvalidParameterError: no element is marked by ``agreement`` of the masks (the masks
                mark a different place in each image: no fixed-position artifact to paste).
        """
        x = check_finite(to_tensor(images, "images").float(), "Artifact.from_examples: images")
        if len(x) == 0:
            raise InvalidParameterError("Artifact.from_examples: images holds no samples.")
        if not isinstance(agreement, (int, float)) or isinstance(agreement, bool) \
                or not 0.0 < float(agreement) <= 1.0:
            raise InvalidParameterError(
                f"Artifact.from_examples: agreement must be a number in (0, 1]; got "
                f"{agreement!r}.")
        m = _sample_masks(masks, x, "masks").float()
        share = m.mean(0)
        region = share >= float(agreement)
        if x.dim() == 4:
            region = region.all(0)  # one spatial mask; every channel marked alike
        if not bool(region.any()):
            raise InvalidParameterError(
                f"Artifact.from_examples: no element is marked by {agreement:.0%} of the "
                f"masks (at most {float(share.max()):.0%}); the artifact sits at a different "
                "place in each image, so there is no fixed-position pattern to paste.")
        pattern = (x * m).sum(0) / m.sum(0).clamp_min(1.0)
        return cls(pattern, region)

    def masks_for(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(N, *S)`` bool: the artifact's elements for each of ``inputs`` ``(N, *S)``."""
        return _sample_masks(self.mask, inputs, "mask")

    def paste(self, inputs: Any) -> torch.Tensor:
        """``inputs`` ``(N, ...)`` with the artifact pasted (a new tensor)."""
        x = to_tensor(inputs, "inputs").float()
        m = self.masks_for(x)
        try:
            pattern = torch.broadcast_to(self.pattern, x.shape[1:])
        except RuntimeError:
            raise ShapeMismatchError(
                f"Artifact.paste: a pattern of shape {tuple(self.pattern.shape)} does not fit "
                f"inputs of shape {tuple(x.shape)}.") from None
        return torch.where(m, pattern.to(x), x)


def remove(inputs: torch.Tensor, masks: Any, *, fill: str = "local_mean",
           reference: torch.Tensor | None = None) -> torch.Tensor:
    """``inputs`` with the masked elements replaced by a neutral value (``fill``, see
    :data:`FILLS`); ``reference`` (clean inputs of the same shape) is needed for
    ``"clean_mean"``."""
    if fill not in FILLS:
        raise InvalidParameterError(f"fill must be one of {', '.join(FILLS)}; got {fill!r}.")
    x = inputs.float()
    m = _sample_masks(masks, x, "masks")
    if fill == "clean_mean":
        if reference is None or len(reference) == 0:
            raise InvalidParameterError("fill='clean_mean' needs clean reference inputs; "
                                        "none were given.")
        return torch.where(m, reference.float().mean(0).to(x), x)
    if x.dim() != 4:
        raise InvalidParameterError(
            f"fill='local_mean' inpaints images (N, C, H, W); got inputs of shape "
            f"{tuple(x.shape)}: use fill='clean_mean' for other inputs.")
    spatial = m[:, :1].float()                     # (N, 1, H, W): masks are alike per channel
    ring = (F.max_pool2d(spatial, 3, stride=1, padding=1) > 0).float() - spatial
    count = ring.sum((2, 3), keepdim=True)
    local = (x * ring).sum((2, 3), keepdim=True) / count.clamp_min(1.0)
    # A mask that covers the whole image has no ring: fall back to the image's own mean.
    local = torch.where(count > 0, local, x.mean((2, 3), keepdim=True))
    return torch.where(m, local.expand_as(x), x)
