"""Concept tests: TCAV of the artifact concept for the shortcut class at several layers, and the
artifact CAV's held-out accuracy there.

The concept examples are clean images of the other classes with the artifact pasted; the random
sets are drawn from *other* clean images of those classes (never the concept's own images, so the
random CAVs do not see the concept). The inputs tested are the clean images of the shortcut
class.

Two different questions, both reported: the CAV's accuracy says whether the artifact is still
*readable* at the layer (a correction that projects it out downstream, or trains the layers above
to ignore it, usually leaves it readable); TCAV's score and p-value say whether the class's logit
is still *sensitive* to it there. Neither is the decision itself: measured on the bundled digits,
P-ClArC's exported model keeps a significant TCAV score of 1.00 at its corrected layer while no
image flips under insertion, because the logit stays sensitive to the direction downstream of
the projection even though the projection removes that direction from every input. So the
certificate reports these tests and judges the counterfactual ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from latentsurgeon.activations.batching import as_samples
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.hooks import resolve_layer
from latentsurgeon.verify.artifact import Artifact

__all__ = ["ConceptLayer", "concept_tests", "neighbour_layers"]


@dataclass(frozen=True)
class ConceptLayer:
    """TCAV of the artifact concept at one layer: the mean sign-count score over runs, its
    p-value against random CAVs, whether it is significant at ``significance``, and the mean
    held-out accuracy of the concept CAVs."""

    layer: str
    score: float
    p_value: float
    significant: bool
    cav_accuracy: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def neighbour_layers(model: nn.Module, layer: str) -> list[str]:
    """``[before, layer, after]``: the last module with parameters computed before ``layer``'s
    output (inside it, or before it), ``layer``, and the first module with parameters after it;
    either neighbour is left out when there is none."""
    name = resolve_layer(model, layer)
    names = [n for n, m in model.named_modules() if n and any(
        True for _ in m.parameters(recurse=False))]
    order = [n for n, _ in model.named_modules() if n]
    position = order.index(name)
    inside = [n for n in names if n.startswith(name + ".")]
    before = [n for n in names if order.index(n) < position and not name.startswith(n + ".")]
    after = [n for n in names if order.index(n) > position and not n.startswith(name + ".")]
    picked = ([inside[-1]] if inside else before[-1:]) + [name] + after[:1]
    return [n for i, n in enumerate(picked) if n not in picked[:i]]


def concept_tests(model: nn.Module, layers: Sequence[str], data: Any, artifact: Artifact, *,
                  target: int, n_runs: int = 10, significance: float = 0.05, seed: int = 0,
                  batch_size: int = 64, progress: bool = True) -> list[ConceptLayer]:
    """TCAV of ``artifact`` for class ``target`` at every layer of ``layers``.

    Args:
        model: the classifier.
        layers: layer names (:func:`neighbour_layers` gives the corrected layer and the ones
            before and after it).
        data: clean test images with labels.
        artifact: the artifact pasted into the concept examples.
        target: the shortcut class.
        n_runs: concept CAVs (each against its own random set); also the null's size.
        significance: the level of each test (Bonferroni over the layers).
    """
    from latentsurgeon.concepts import tcav

    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise InvalidParameterError(
            f"concept_tests: layers must be a non-empty list of layer names; got {layers!r}.")
    samples = as_samples(data, need_labels=True, what="data")
    images, labels = samples.images.float(), samples.labels.reshape(-1).long()
    inputs = images[labels == target]
    others = images[labels != target]
    if len(inputs) < 2 or len(others) < 4:
        raise InvalidParameterError(
            f"concept_tests: data must hold at least 2 images of class {target} and 4 of the "
            f"other classes; it holds {len(inputs)} and {len(others)}.")
    order = torch.randperm(len(others), generator=torch.Generator().manual_seed(seed))
    half = len(others) // 2
    concept = artifact.paste(others[order[:half]])
    random = others[order[half:]]
    found = []
    for layer in layers:
        result = tcav(model, layer, inputs, int(target), concept, random=random, n_runs=n_runs,
                      significance=significance, n_tests=len(layers), seed=seed,
                      batch_size=batch_size, progress=progress)
        found.append(ConceptLayer(result.layer, float(result.mean), float(result.p_value),
                                  bool(result.significant), float(np.mean(result.cav_accuracy))))
    return found
