"""Example sets for concept tests (TCAV, CAVs) built from the decoy digits."""

from __future__ import annotations

from typing import NamedTuple

import torch

from latentsurgeon.data.decoy import DecoyDigits, paste_watermark
from latentsurgeon.errors import InvalidParameterError


class ConceptSets(NamedTuple):
    concept: torch.Tensor         # (n, 1, H, W): clean training digits with the watermark pasted
    random_concept: torch.Tensor  # (n, 1, H, W): other clean digits, a control "concept"
    random_pool: torch.Tensor     # (M, 1, H, W): the remaining clean digits, for random sets


def watermark_concept_sets(data: DecoyDigits, n: int = 60, seed: int = 0) -> ConceptSets:
    """Disjoint sets of clean training digits of every class (seeded draw): ``n`` with the
    watermark pasted (the concept), ``n`` without (a random control concept), and the rest as
    the pool random sets are drawn from.

    Raises:
        ValueError: ``n`` leaves fewer than ``n`` images for the pool.
    """
    images = data.train_clean.images
    if n < 2 or 3 * n > len(images):
        raise InvalidParameterError(f"n must lie in [2, {len(images) // 3}] for {len(images)} images, got {n}.")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    pool = images[order]
    position = data.params.get("position") if data.kind == "watermark" else None
    pattern = data.params.get("pattern") if data.kind == "watermark" else None
    concept, _ = paste_watermark(pool[:n], pattern=pattern,
                                 position=tuple(position) if position is not None else None)
    return ConceptSets(concept, pool[n:2 * n], pool[2 * n:])
