"""The bad-input corpus of ``latentsurgeon.compat.shortcut_detect``: every case raises our
exception with a message naming the argument, what was expected and what was given, and leaves
the model exactly as it was (``_harness.check``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from latentsurgeon.compat.shortcut_detect import ExplanationRegularization, resize_masks
from latentsurgeon.errors import InvalidParameterError, NonFiniteError, ShapeMismatchError

from ._harness import Case, check

torch.manual_seed(0)
MODEL = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(4, 2))
IMAGES = torch.rand(6, 1, 8, 8)
LABELS = np.array([0, 1] * 3)
MASKS = np.zeros((6, 8, 8), dtype=np.float32)
RRR = ExplanationRegularization(n_epochs=1, random_state=0)


def _fit(images=IMAGES, labels=LABELS, masks=MASKS, model=MODEL):
    return lambda: RRR.fit(model, images, labels, masks)


def _cases() -> list[Case]:
    mm = [MODEL]
    return [
        Case("a negative learning rate", lambda: ExplanationRegularization(lr=-1.0),
             InvalidParameterError, ["lr", "-1.0"]),
        Case("a fractional n_epochs", lambda: ExplanationRegularization(n_epochs=1.5),
             InvalidParameterError, ["epochs", "1.5"]),
        Case("a zero batch size", lambda: ExplanationRegularization(batch_size=0),
             InvalidParameterError, ["batch_size", "0"]),
        Case("a negative lambda", lambda: ExplanationRegularization(lambda_rrr=-2.0),
             InvalidParameterError, ["lambda_rrr", "-2.0"]),
        Case("fit: a model that is not a module", _fit(model="cnn.pt"), InvalidParameterError,
             ["model", "nn.Module", "str"]),
        Case("fit: fewer labels than images", _fit(labels=LABELS[:4]), ShapeMismatchError,
             ["labels length 4", "images 6"], mm),
        Case("fit: masks of another count", _fit(masks=MASKS[:4]), ShapeMismatchError,
             ["shortcut_masks batch size 4", "images 6"], mm),
        Case("fit: 4-D masks", _fit(masks=MASKS[:, None]), ShapeMismatchError,
             ["shortcut_masks", "(N, H, W)", "(6, 1, 8, 8)"], mm),
        Case("fit: tabular images", _fit(images=torch.rand(6, 64)), ShapeMismatchError,
             ["images", "(N, C, H, W)", "(6, 64)"], mm),
        Case("fit: labels out of range", _fit(labels=LABELS + 4), InvalidParameterError,
             ["labels", "[0, 1]", "5"], mm),
        Case("fit: NaN images", _fit(images=torch.full((6, 1, 8, 8), float("nan"))),
             NonFiniteError, ["inputs"], mm),
        Case("fit: masks that are a string", _fit(masks="mask.png"), InvalidParameterError,
             ["shortcut_masks", "str"], mm),
        Case("resize_masks: 1-D masks", lambda: resize_masks(np.zeros(8), IMAGES),
             ShapeMismatchError, ["shortcut_masks", "(N, H, W)", "(8,)"]),
    ]


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.name)
def test_bad_input(case: Case) -> None:
    check(case)
