"""The bundled data of the experiments, per seed: scikit-learn's digits (16x16) and the generated
heartbeats. Labels are used to evaluate (similarity rates, probes), never to explain."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from latentsurgeon.data import beats, load_digits16
from latentsurgeon.data.digits import stratified_split

__all__ = ["Split", "beat_split", "digit_split"]


@dataclass(frozen=True)
class Split:
    """Training and test inputs with their labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def _subset(n: int | None, size: int, generator: torch.Generator) -> torch.Tensor:
    if n is None or n >= size:
        return torch.arange(size)
    return torch.randperm(size, generator=generator)[:n].sort().values


def digit_split(seed: int, *, n_train: int | None = None, n_test: int = 497) -> Split:
    """The 1797 digits split per ``seed`` into ``n_test`` test digits (stratified by class) and
    the rest for training (1300 with the default ``n_test``), or a seeded random ``n_train`` of
    them."""
    images, labels = load_digits16()
    generator = torch.Generator().manual_seed(int(seed))
    train_idx, test_idx = stratified_split(labels, n_test, generator)
    train_idx = train_idx[_subset(n_train, len(train_idx), generator)]
    return Split(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx])


def beat_split(seed: int, *, n_train: int = 500, n_test: int = 200) -> Split:
    """``n_train`` and ``n_test`` generated heartbeats ``(N, 140, 1)`` (balanced classes), two
    draws of their own seeds derived from ``seed``."""
    train_x, train_y = beats(n_train, seed=2 * int(seed) + 1000)
    test_x, test_y = beats(n_test, seed=2 * int(seed) + 1001)
    return Split(train_x, train_y, test_x, test_y)
