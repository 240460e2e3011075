"""TCAV's random sets: which random inputs each run uses, each computed once per call.

Run ``i`` (``i = 1..n_runs``) fits a CAV of the concept against random set ``R_i``; null run ``i``
fits a CAV of another random set ``P_i`` against the same ``R_i``, so every null run has its own
random "concept", as in Kim et al.'s code, where the random baseline pools many random concepts.

* From a pool tensor, run ``i`` draws (seeded) ``R_i`` and a disjoint ``P_i`` of ``set_size``
  inputs; the union of the drawn rows goes through the model once.
* From a list of sets ``[S_0, ..., S_n]``, ``R_i = S_i`` and ``P_i = S_{i-1}``; each set goes
  through the model once (``S_i`` serves run ``i`` and null run ``i + 1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from latentsurgeon.activations.batching import count_samples, n_batches
from latentsurgeon.activations.pooling import same_pooled_space
from latentsurgeon.concepts._activations import _layer_activations
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError

__all__ = ["RandomActivations", "RandomSets"]


@dataclass
class RandomActivations:
    """Pooled activations of the random inputs, each input once.

    Attributes:
        rows: ``(M, D)`` float64.
        negatives, positives: per run, the rows of ``R_i`` and of ``P_i``.
        shape: per-input activation shape before pooling.
    """

    rows: torch.Tensor
    negatives: list[torch.Tensor]
    positives: list[torch.Tensor]
    shape: tuple[int, ...]


class RandomSets:
    """The random sets of one TCAV call (see the module doc).

    Args:
        random: a tensor pool ``(N_r, ...)`` or a list of at least 2 input sets.
        n_runs: number of runs (default: 10 for a pool, ``len(random) - 1`` for sets).
        set_size: inputs per drawn set (pool only); ``2 * set_size`` must fit in the pool.
        seed: seeds the draws.
    """

    def __init__(self, random: Any, n_runs: int | None, set_size: int | None,
                 seed: int) -> None:
        self.random = random
        self.explicit = not isinstance(random, torch.Tensor)
        if self.explicit:
            if not isinstance(random, (list, tuple)) or len(random) < 2:
                raise InvalidParameterError(
                    "tcav(): random must be a tensor of random inputs to draw sets from, or a "
                    f"list of at least 2 random input sets; got {type(random).__name__}"
                    f"{f' of {len(random)}' if isinstance(random, (list, tuple)) else ''}.")
            available = len(random) - 1
            if n_runs is not None and n_runs > available:
                raise InvalidParameterError(
                    f"tcav(): n_runs={n_runs} needs {n_runs + 1} random sets but {len(random)} "
                    "were given.")
            self.n_runs = n_runs or available
            self.sets = list(random[: self.n_runs + 1])
            return
        n_pool = len(random)
        self.n_runs = n_runs or 10
        size = set_size if set_size is not None else n_pool // 2
        if size < 2 or 2 * size > n_pool:
            raise InvalidParameterError(
                f"tcav(): cannot draw random sets of {size} inputs from a pool of {n_pool}: a "
                "null run's two random sets must not overlap, so the pool needs 2 * set_size "
                "inputs. Pass set_size= or more random inputs.")
        gen = torch.Generator().manual_seed(seed)
        self.negatives: list[torch.Tensor] = []
        self.positives: list[torch.Tensor] = []
        for _ in range(self.n_runs):
            perm = torch.randperm(n_pool, generator=gen)
            self.negatives.append(perm[:size])
            self.positives.append(perm[size:2 * size])
        self.drawn = torch.unique(torch.cat(self.negatives + self.positives))  # sorted

    def n_batches(self, batch_size: int) -> int:
        """Forward passes :meth:`activations` runs (for the progress bar)."""
        if self.explicit:
            return sum(n_batches(s, batch_size) or 0 for s in self.sets)
        return math.ceil(len(self.drawn) / batch_size)

    def n_inputs(self) -> int | None:
        """How many random inputs go through the model (None when a set's size is unknown)."""
        if not self.explicit:
            return len(self.drawn)
        sizes = [count_samples(s) for s in self.sets]
        return None if any(n is None for n in sizes) else sum(sizes)

    def activations(self, model: nn.Module, layer: str, pooling: str, *, batch_size: int,
                    device: torch.device, bar: Any = None,
                    out: torch.Tensor | None = None) -> RandomActivations:
        """Pooled activations of every random input used, computed once each (written into
        ``out``, ``(n_inputs(), D)``, when given)."""
        if not self.explicit:
            rows, shape = _layer_activations(model, layer, self.random[self.drawn], pooling,
                                             batch_size, device, bar, what="random inputs",
                                             out=out)

            def locate(idx: torch.Tensor) -> torch.Tensor:
                return torch.searchsorted(self.drawn, idx)

            return RandomActivations(rows, [locate(i) for i in self.negatives],
                                     [locate(i) for i in self.positives], shape)
        parts, offsets, shapes = [], [0], []
        for j, s in enumerate(self.sets):
            size = count_samples(s) if out is not None else None
            target = out[offsets[-1]:offsets[-1] + size] if size is not None else None
            acts, shape = _layer_activations(model, layer, s, pooling, batch_size, device, bar,
                                             what=f"random set {j}", out=target)
            parts.append(acts)
            offsets.append(offsets[-1] + len(acts))
            shapes.append(shape)
        # Sets of padded token batches differ in T; pooled, they share one space.
        if any(not same_pooled_space(s, shapes[0], pooling) for s in shapes) or \
                len({p.shape[1] for p in parts}) != 1:
            raise ShapeMismatchError(
                f"The random sets give activations of shapes {sorted(set(shapes))}.")
        ranges = [torch.arange(offsets[j], offsets[j + 1]) for j in range(len(self.sets))]
        rows = out if out is not None else torch.cat(parts)
        return RandomActivations(rows, ranges[1:], ranges[:-1], shapes[0])
