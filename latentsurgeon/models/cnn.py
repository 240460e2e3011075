"""A small reference CNN for 16x16 single-channel digits."""

from __future__ import annotations

import torch
from torch import nn

from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError

__all__ = ["DigitCNN", "check_image_batch"]


def check_image_batch(x: torch.Tensor, image_size: int, owner: str) -> None:
    """Raise :class:`ShapeMismatchError` unless ``x`` is ``(N, 1, image_size, image_size)``."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return  # shapes are fixed while tracing; a Python check would only add warnings
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, image_size, image_size):
        raise ShapeMismatchError(
            f"{owner} expects images of shape (N, 1, {image_size}, {image_size}), "
            f"got {tuple(x.shape)}"
            + ("; add the channel dimension with x.unsqueeze(1)" if x.dim() == 3 else "")
        )


class DigitCNN(nn.Module):
    """Two conv blocks and a two-layer head: ``(N, 1, 16, 16) -> (N, n_classes)`` logits.

    Module names are part of the API (layer selection, tests and docs rely on them)::

        features.0  Conv2d(1, c1, 3, padding=1)      (N, c1, 16, 16)
        features.1  ReLU                             (N, c1, 16, 16)
        features.2  MaxPool2d(2)                     (N, c1, 8, 8)
        features.3  Conv2d(c1, c2, 3, padding=1)     (N, c2, 8, 8)
        features.4  ReLU                             (N, c2, 8, 8)
        features.5  MaxPool2d(2)                     (N, c2, 4, 4)
        classifier.0  Flatten                        (N, c2 * 16)
        classifier.1  Linear(c2 * 16, hidden)        (N, hidden)
        classifier.2  ReLU                           (N, hidden)
        classifier.3  Linear(hidden, n_classes)      (N, n_classes)

    Every ReLU is out-of-place so that forward hooks see the pre-activation tensors
    unchanged. Weight initialisation draws from torch's global RNG: call
    ``torch.manual_seed`` before construction for a reproducible model.

    Args:
        n_classes: number of output logits.
        channels: output channels of the two convolutions.
        hidden: width of the hidden layer of the head.
        image_size: input side length; must be divisible by 4.
    """

    def __init__(
        self,
        n_classes: int = 10,
        channels: tuple[int, int] = (16, 32),
        hidden: int = 64,
        image_size: int = 16,
    ) -> None:
        super().__init__()
        if len(channels) != 2:
            raise InvalidParameterError(f"channels must hold two ints, got {channels!r}")
        if image_size % 4:
            raise InvalidParameterError(f"image_size must be divisible by 4, got {image_size}")
        c1, c2 = (int(c) for c in channels)
        self.n_classes = int(n_classes)
        self.image_size = int(image_size)
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(inplace=False),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(inplace=False),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * side * side, hidden),
            nn.ReLU(inplace=False),
            nn.Linear(hidden, self.n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 16, 16)`` images -> ``(N, n_classes)`` logits."""
        check_image_batch(x, self.image_size, type(self).__name__)
        return self.classifier(self.features(x))
