"""The bad-input corpus of ``latentsurgeon.explain``: every case raises our exception with a
message naming the argument, what was expected and what was given, and leaves the models exactly
as they were (see ``_harness.check``). Results that cannot be all zero warn when they are."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.explain import TracIn
from latentsurgeon.models import DigitCNN

from ._harness import Case, check

G = torch.Generator().manual_seed(0)
X = torch.randn(10, 5, generator=G)
Y = torch.randint(0, 3, (10,), generator=G)
IMAGES = torch.rand(6, 1, 16, 16, generator=G)
DIGITS = torch.randint(0, 10, (6,), generator=G)


def _classifier(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).to(dtype)
    model.train()  # the state a call must leave alone, not eval
    return model


def _cnn(hidden: int) -> nn.Module:
    torch.manual_seed(0)
    return DigitCNN(hidden=hidden)


MODEL = _classifier()
CNN = _cnn(64)
OTHER_CNN = _cnn(32)  # the same parameter names as CNN, other shapes


def _tracin(checkpoints, **kw):
    return TracIn(checkpoints, "cross_entropy", lr=0.1, progress=False, **kw)


def cases() -> list[Case]:
    cnn = (CNN,)
    return [
        # -- checkpoints ----------------------------------------------------------------------
        Case("TracIn: a checkpoint of another architecture (same names, other shapes)",
             lambda: _tracin([OTHER_CNN.state_dict()]).fit(CNN, (IMAGES, DIGITS)),
             InvalidParameterError, ["checkpoints[0]", "classifier", "(32,", "(64,"], cnn),
        Case("TracIn: a checkpoint file of another architecture",
             lambda: _tracin([_saved(OTHER_CNN)]).fit(CNN, (IMAGES, DIGITS)),
             InvalidParameterError, ["checkpoints[0]", "other.pt", "shape"], cnn),
        Case("TracIn: a checkpoint with an integer tensor for a float parameter",
             lambda: _tracin([{k: v.long() for k, v in CNN.state_dict().items()}]).fit(
                 CNN, (IMAGES, DIGITS)),
             InvalidParameterError, ["checkpoints[0]", "torch.int64", "torch.float32"], cnn),
    ]


_TMP: list = []


def _saved(model: nn.Module) -> str:
    path = _TMP[0] / "other.pt"
    torch.save({"state_dict": model.state_dict(), "lr": 0.1}, path)
    return str(path)


@pytest.fixture(autouse=True, scope="module")
def _tmp(tmp_path_factory):
    _TMP[:] = [tmp_path_factory.mktemp("checkpoints")]


CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case) -> None:
    check(case)
