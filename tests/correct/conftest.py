"""Shared fixtures: every small test model the correction tests use (through the ``nets``
fixture). The decoy data and the uncorrected DigitCNN of the quality goals (``watermark``,
``base_model``, ``base_gap``, ``clean_trained``) come from tests/conftest.py."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _one_torch_thread(one_thread):
    """Every test here runs on one torch thread: reproducible numbers, no oversubscription."""


# -- the small models -----------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """A torchvision-style residual block: in-place ReLUs and ``out += identity``.

    ``inplace=False`` builds the same computation without in-place operations (same parameter
    names, so state dicts are interchangeable)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, inplace: bool = True) -> None:
        super().__init__()
        self.inplace = inplace
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        if self.inplace:
            out += identity
        else:
            out = out + identity
        return self.relu(out)


class ResNetTiny(nn.Module):
    """stem -> residual block with a downsampling skip branch -> pooled head, on 16x16 images."""

    def __init__(self, inplace: bool = True, n_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU(inplace=inplace))
        self.block = BasicBlock(8, 16, stride=2, inplace=inplace)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16 * 4, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.block(self.stem(x))).flatten(1))


class FunctionalResidual(nn.Module):
    """A layer followed by a functional in-place ``out += h`` (no module with inplace=True);
    ``inplace=False`` computes ``out = out + h`` instead (same parameters)."""

    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.inplace = inplace
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        out = self.conv2(h)
        if self.inplace:
            out += h
        else:
            out = out + h
        return self.head(out.flatten(1))


def inplace_cnn(inplace: bool = True) -> nn.Sequential:
    """The issue's minimal case: conv -> ReLU(inplace) -> pool -> linear on 16x16 images."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(inplace=inplace),
                         nn.MaxPool2d(4), nn.Flatten(), nn.Linear(128, 10))


class Reordered(nn.Module):
    """Registers the head before the body but runs the body first; reuses ``shared`` twice."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)
        self.shared = nn.Linear(4, 4)
        self.body = nn.Linear(5, 4)
        self.mid = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.shared(self.body(x))
        h = self.mid(h)
        return self.head(self.shared(h))


class Twice(nn.Module):
    """Applies the same block twice: its output exists twice per forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(torch.relu(self.block(x))))


class DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"aux": x.sum(1), "scores": self.out(torch.relu(self.body(x)))}


class Linear2d(nn.Module):
    """logits = W vec(x) + b for (N, 1, 4, 4) inputs; optionally a tuple or dict output."""

    def __init__(self, wrap: str = "tensor", n_classes: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(16, n_classes)
        self.wrap = wrap

    def forward(self, x: torch.Tensor):
        logits = self.fc(x.flatten(1))
        if self.wrap == "tuple":  # shortcut_detect's convention: logits first
            return (logits, logits.sum(1))
        if self.wrap == "tuple_last":
            return (logits.sum(1), logits)
        if self.wrap == "dict":
            return {"aux": logits.sum(1), "out": logits}
        return logits


def mlp(n_features: int = 8, n_classes: int = 4, hidden: int = 32) -> nn.Sequential:
    """The tabular model: Linear -> ReLU -> Linear -> ReLU -> Linear; layer "3" is the
    second hidden representation."""
    return nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, n_classes))


def tiny_data(n: int = 64, seed: int = 0, features: int = 5, classes: int = 3):
    """``(x, y, artifact)``: Gaussian rows, every other one shifted along feature 0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    artifact = torch.arange(n) % 2 == 0
    x[artifact, 0] += 3.0
    return x, y, artifact


NETS = types.SimpleNamespace(
    BasicBlock=BasicBlock, ResNetTiny=ResNetTiny, FunctionalResidual=FunctionalResidual,
    inplace_cnn=inplace_cnn, Reordered=Reordered, Twice=Twice, DictOutput=DictOutput,
    Linear2d=Linear2d, mlp=mlp, tiny_data=tiny_data)


@pytest.fixture(scope="session")
def nets():
    """The small test models and data makers: ``nets.ResNetTiny(inplace=...)``, ..."""
    return NETS


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="session")
def same_state():
    """``same_state(a, b)``: bit-identical parameters and buffers."""
    return state_equal
