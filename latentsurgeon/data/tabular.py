"""Tabular data with a planted spurious feature: the non-image counterpart of the decoy digits.

Each sample is a row of ``n_features`` numbers. The class is carried by the *core* features
(Gaussian clusters around random class centres); one extra *spurious* feature (the last column)
is raised by ``strength`` on ``fraction`` of one class's training rows and is noise elsewhere,
so a model can take the shortcut "spurious feature high -> that class". The ``poisoned`` test
rows carry it whatever their class, so a model that took the shortcut loses accuracy there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from latentsurgeon._validation import Interval, validate_params
from latentsurgeon.errors import ShapeMismatchError

__all__ = ["TabularShortcut", "TabularSplit", "spurious_tabular"]


@dataclass
class TabularSplit:
    """One split of :func:`spurious_tabular`.

    Attributes:
        inputs: ``(N, D)`` float32 rows; the last column is the spurious feature.
        labels: ``(N,)`` int64 class labels.
        artifact: ``(N,)`` bool, True where the row carries the spurious feature.
        masks: ``(N, D)`` bool, True on the spurious column of the rows that carry it.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    artifact: torch.Tensor
    masks: torch.Tensor

    def __post_init__(self) -> None:
        if self.inputs.dim() != 2:
            raise ShapeMismatchError(f"inputs must be (N, D), got {tuple(self.inputs.shape)}")
        n = len(self.inputs)
        for name, shape in (("labels", (n,)), ("artifact", (n,)),
                            ("masks", tuple(self.inputs.shape))):
            if tuple(getattr(self, name).shape) != shape:
                raise ShapeMismatchError(
                    f"{name} must have shape {shape}, got {tuple(getattr(self, name).shape)}")

    @property
    def images(self) -> torch.Tensor:
        """The inputs, under the name every latentsurgeon function reads from a split."""
        return self.inputs

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


@dataclass
class TabularShortcut:
    """Rows with a planted spurious feature (see :func:`spurious_tabular`).

    Attributes:
        train: training rows, the spurious feature planted.
        train_clean: the same rows without it (paired with ``train``).
        test: clean test rows.
        poisoned: the same test rows, every one carrying the spurious feature.
        shortcut_class: the class the feature co-occurs with in training.
        shortcut_feature: its column index (the last one).
        seed: the seed everything was drawn from.
        params: the generator's settings.
    """

    train: TabularSplit
    train_clean: TabularSplit
    test: TabularSplit
    poisoned: TabularSplit
    shortcut_class: int
    shortcut_feature: int
    seed: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def region(self) -> torch.Tensor:
        """``(D,)`` mask of the spurious column (one mask for every row, e.g. for RRR)."""
        mask = torch.zeros(self.train.inputs.shape[1], dtype=torch.bool)
        mask[self.shortcut_feature] = True
        return mask


_CONSTRAINTS = {
    "seed": Interval(int, 0, None),
    "n_train": Interval(int, 10, None),
    "n_test": Interval(int, 10, None),
    "n_features": Interval(int, 2, None),
    "n_classes": Interval(int, 2, None),
    "fraction": Interval(float, 0, 1),
    "strength": Interval(float, 0, None, closed="neither"),
    "separation": Interval(float, 0, None, closed="neither"),
    "noise": Interval(float, 0, None),
}


def spurious_tabular(*, seed: int = 0, n_train: int = 1500, n_test: int = 600,
                     n_features: int = 8, n_classes: int = 4, shortcut_class: int = 0,
                     fraction: float = 0.9, strength: float = 4.0, noise: float = 1.0,
                     separation: float = 2.5) -> TabularShortcut:
    """Gaussian class clusters in ``n_features - 1`` core features plus one spurious feature.

    Core features: ``x = mu_y + N(0, I)`` with class centres ``mu_k`` drawn at distance
    ``separation`` from the origin in random directions (seeded): the classes overlap, so the
    core features alone give a good but imperfect classifier, and the spurious feature is the
    easier cue. Spurious feature: ``N(0, noise^2)`` on every row, plus ``strength`` on
    ``fraction`` of ``shortcut_class``'s training rows (which ones: seeded) and on every
    ``poisoned`` row. The noise makes the feature vary in clean data too, so a model trained
    without the shortcut learns to ignore it (instead of extrapolating on values it never saw).
    Classes are balanced.

    Returns:
        A :class:`TabularShortcut` with ``(N, n_features)`` float32 inputs.
    """
    validate_params({"seed": seed, "n_train": n_train, "n_test": n_test,
                     "n_features": n_features, "n_classes": n_classes, "fraction": fraction,
                     "strength": strength, "separation": separation,
                     "noise": noise}, _CONSTRAINTS, owner="spurious_tabular()")
    validate_params({"shortcut_class": shortcut_class},
                    {"shortcut_class": Interval(int, 0, n_classes - 1)},
                    owner="spurious_tabular()")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    d_core = n_features - 1
    directions = rng.standard_normal((n_classes, d_core))
    centres = separation * directions / np.linalg.norm(directions, axis=1, keepdims=True)

    def rows(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % n_classes
        rng.shuffle(labels)
        core = centres[labels] + rng.standard_normal((n, d_core))
        return core, labels

    def split(core: np.ndarray, labels: np.ndarray, carry: np.ndarray) -> TabularSplit:
        spurious = noise * rng.standard_normal(len(labels)) + strength * carry
        inputs = np.concatenate([core, spurious[:, None]], axis=1).astype(np.float32)
        masks = np.zeros(inputs.shape, dtype=bool)
        masks[:, -1] = carry
        return TabularSplit(torch.from_numpy(inputs), torch.from_numpy(labels.astype(np.int64)),
                            torch.from_numpy(carry.copy()), torch.from_numpy(masks))

    core_tr, y_tr = rows(n_train)
    in_class = np.flatnonzero(y_tr == shortcut_class)
    chosen = rng.permutation(in_class)[:math.floor(fraction * len(in_class) + 0.5)]
    carry = np.zeros(n_train, dtype=bool)
    carry[chosen] = True
    core_te, y_te = rows(n_test)
    train = split(core_tr, y_tr, carry)
    # the clean twin shares the core features and the spurious noise level, without the feature
    train_clean = TabularSplit(train.inputs.clone(), train.labels.clone(),
                               torch.zeros(n_train, dtype=torch.bool),
                               torch.zeros(train.inputs.shape, dtype=torch.bool))
    train_clean.inputs[carry, -1] -= strength
    test = split(core_te, y_te, np.zeros(n_test, dtype=bool))
    poisoned = TabularSplit(test.inputs.clone(), test.labels.clone(),
                            torch.ones(n_test, dtype=torch.bool),
                            torch.zeros(test.inputs.shape, dtype=torch.bool))
    poisoned.inputs[:, -1] += strength
    poisoned.masks[:, -1] = True
    return TabularShortcut(train, train_clean, test, poisoned, shortcut_class, n_features - 1,
                           seed, {"n_features": n_features, "n_classes": n_classes,
                                  "fraction": fraction, "strength": strength,
                                  "noise": noise, "separation": separation})
