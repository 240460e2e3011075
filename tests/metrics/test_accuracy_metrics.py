"""accuracy, class accuracies, shortcut_gap and gap_closed on models with known predictions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from latentsurgeon.errors import LatentSurgeonError
from latentsurgeon.metrics import (
    accuracy,
    class_accuracies,
    gap_closed,
    predict,
    shortcut_gap,
    worst_class_accuracy,
)


class Oracle(nn.Module):
    """Predicts the class stored in the first input feature (a one-hot of it as logits)."""

    def __init__(self, wrap: str = "tensor") -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.wrap = wrap

    def forward(self, x):
        logits = nn.functional.one_hot(x[:, 0].long(), 3).float() + self.dummy
        return {"logits": logits} if self.wrap == "dict" else logits


def data():
    preds = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
    labels = torch.tensor([0, 1, 1, 1, 2, 2, 0, 0])
    return preds[:, None].float(), labels


def test_accuracy_per_class_and_worst():
    x, y = data()
    model = Oracle()
    assert accuracy(model, (x, y)) == pytest.approx(6 / 8)
    assert class_accuracies(model, (x, y)) == pytest.approx({0: 2 / 3, 1: 2 / 3, 2: 1.0})
    assert worst_class_accuracy(model, (x, y)) == pytest.approx(2 / 3)
    # other containers and a structured output
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    assert accuracy(model, loader) == pytest.approx(6 / 8)
    assert accuracy(Oracle("dict"), TensorDataset(x, y), batch_size=2) == pytest.approx(6 / 8)
    torch.testing.assert_close(predict(model, x, batch_size=3), x[:, 0].long())
    with pytest.raises(LatentSurgeonError, match="labels"):
        accuracy(model, x)


def test_accuracy_restores_the_model_mode():
    model = Oracle().train()
    x, y = data()
    accuracy(model, (x, y))
    assert model.training


def test_shortcut_gap_and_gap_closed():
    x, y = data()
    poisoned = torch.zeros_like(x)  # everything predicted as class 0
    gap = shortcut_gap(Oracle(), (x, y), (poisoned, y))
    assert gap["clean_acc"] == pytest.approx(0.75)
    assert gap["poisoned_acc"] == pytest.approx(3 / 8)
    assert gap["gap"] == pytest.approx(0.75 - 3 / 8)
    before = {"clean_acc": 0.9, "poisoned_acc": 0.7}
    assert gap_closed(before, {"clean_acc": 0.9, "poisoned_acc": 0.85}) == pytest.approx(0.75)
    assert gap_closed(before, {"clean_acc": 0.7, "poisoned_acc": 0.7}) == pytest.approx(0.0)
    assert gap_closed(before, {"clean_acc": 0.9, "poisoned_acc": 0.6}) == pytest.approx(-0.5)
    assert math.isnan(gap_closed({"clean_acc": 0.8, "poisoned_acc": 0.8}, before))
