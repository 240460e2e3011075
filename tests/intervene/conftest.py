"""Small models shared by the intervention tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentsurgeon.models import DigitCNN


class TinySeq(nn.Module):
    """Token model with per-position layers only: ``(N, T) -> (N, T, 5)`` outputs.

    Nothing mixes positions, so changing one position's activation changes only that
    position's output (position effects are analytic).
    """

    def __init__(self, vocab: int = 12, dim: int = 6) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mid = nn.Linear(dim, dim)
        self.act = nn.Tanh()
        self.head = nn.Linear(dim, 5)

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.act(self.mid(self.emb(input_ids))))


@pytest.fixture
def cnn() -> DigitCNN:
    torch.manual_seed(0)
    return DigitCNN().eval()


@pytest.fixture
def images() -> tuple[torch.Tensor, torch.Tensor]:
    """A clean and a corrupted batch of six 16x16 images."""
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 1, 16, 16, generator=g), torch.rand(6, 1, 16, 16, generator=g)


@pytest.fixture
def tiny_seq() -> TinySeq:
    torch.manual_seed(0)
    return TinySeq().eval()


@pytest.fixture(autouse=True)
def _one_torch_thread(one_thread):
    """Run these tiny models on one thread: on a busy machine, waking a thread pool for each
    micro-op costs far more than the op itself."""
