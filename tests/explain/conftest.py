"""Small float64 models and data shared by the explain tests (float64: a mismatch is a bug)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentsurgeon.training import train


class TinyAE(nn.Module):
    """``(N, 1, 4, 4) -> (N, 3) -> (N, 1, 4, 4)``; ``encoder`` and ``decoder`` as lfxai expects."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.Tanh(), nn.Linear(6, 3))
        self.decoder = nn.Sequential(nn.Linear(3, 16), nn.Unflatten(1, (1, 4, 4)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def make_ae(seed: int = 0) -> TinyAE:
    torch.manual_seed(seed)
    return TinyAE().double().eval()


def make_classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double().eval()


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64)


def tabular(n: int, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 5, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (n,), generator=g))


def reconstruction(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    x = batch[0] if isinstance(batch, (tuple, list)) else batch
    return F.mse_loss(model(x), x)


@pytest.fixture
def ae() -> TinyAE:
    return make_ae()


@pytest.fixture
def ae_checkpoints(tmp_path):
    """An autoencoder trained 3 epochs (SGD) on 23 images, its checkpoint directory, the data."""
    model = make_ae()
    x = images(23)
    history = train(model, x, reconstruction, epochs=3, lr=0.05, batch_size=8,
                    optimizer="sgd", checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert len(history.checkpoints) == 3
    return model, tmp_path / "ckpt", x
