"""Shared fixtures of the concept tests: one torch thread, the small test models and images, the
decoy-trained DigitCNN (trained once per session in tests/conftest.py).

The models live here once; tests get them as fixtures (factories where a test needs variants).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from latentsurgeon.models import DigitCNN


@pytest.fixture(autouse=True)
def _one_torch_thread(one_thread):
    """These tests do small matrix work (eigh of 200x200, 16x16 convolutions): one torch thread."""


def _tiny_cnn(dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """``(N, 1, 8, 8) -> (N, 3)``; layer ``"3"`` gives ``(N, 6, 4, 4)``."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),      # 0 1 2
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),                         # 3 4
        nn.Flatten(), nn.Linear(6 * 16, 16), nn.ReLU(), nn.Linear(16, 3),  # 5 6 7 8
    ).to(dtype).eval()


def _images(n: int, seed: int, patch: bool = False) -> torch.Tensor:
    """``(n, 1, 8, 8)`` uniform noise; ``patch`` pastes a 3x3 checker in the lower-left corner."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    if patch:
        x[:, :, 5:8, 0:3] = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]])
    return x


class WithExtras(nn.Module):
    """A classifier returning a tuple or a dict: ``(features, logits)`` (logits second, so
    taking the first tensor differentiates the wrong output) or ``{"hidden", "logits"}``."""

    def __init__(self, inner: nn.Module, kind: str = "tuple") -> None:
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, x: torch.Tensor):
        hidden = self.inner[:8](x)
        logits = self.inner[8](hidden)
        if self.kind == "dict":
            return {"hidden": hidden, "logits": logits}
        return hidden, logits


@pytest.fixture
def with_extras() -> type[WithExtras]:
    """The tuple/dict-output wrapper class: ``with_extras(model, "tuple" | "dict")``."""
    return WithExtras


@pytest.fixture
def tiny_cnn() -> Callable[..., nn.Sequential]:
    """Factory of the small CNN (seeded): ``tiny_cnn(dtype=torch.float32)``."""
    return _tiny_cnn


@pytest.fixture
def images() -> Callable[..., torch.Tensor]:
    """Factory of seeded 8x8 images: ``images(n, seed, patch=False)``."""
    return _images


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(model, class inputs (40), concept inputs with the patch (60), random pool (400))``."""
    return _tiny_cnn(), _images(40, 1), _images(60, 2, patch=True), _images(400, 3)


@pytest.fixture(scope="session")
def decoy_model(base_state, watermark):
    """``(model, data)``: the DigitCNN trained 15 epochs on decoy digits with the class-0 watermark
    (seed 0; ``base_state`` of tests/conftest.py), shared by the session: read it, never change it."""
    torch.manual_seed(0)  # torch's global RNG as after training here (training restores it)
    model = DigitCNN()
    model.load_state_dict(base_state)
    return model.eval(), watermark
