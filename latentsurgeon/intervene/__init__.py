"""Interventions on activations: activation patching, steering vectors, activation addition.

* :func:`patch` swaps activations between a clean and a corrupted run, layer by layer, and reports
  a metric and a normalised effect (:class:`PatchingResult`); :func:`zero_ablation`,
  :func:`mean_ablation` and :func:`interpolate` are ready-made ``patch_fn``\\ s.
* :class:`SteeringVector` adds a learned or given direction to layer outputs while attached;
  :class:`ActivationAddition` is its per-position, prompt-pair variant ("ActAdd").

Everything works on plain ``nn.Module``\\ s and on HuggingFace transformers (dict inputs are
passed as ``model(**inputs)``; tuple outputs of transformer blocks are handled).
"""

from latentsurgeon.intervene.patching import (
    PatchingResult,
    interpolate,
    mean_ablation,
    patch,
    zero_ablation,
)
from latentsurgeon.intervene.steering import ActivationAddition, SteeringVector

__all__ = [
    "ActivationAddition",
    "PatchingResult",
    "SteeringVector",
    "interpolate",
    "mean_ablation",
    "patch",
    "zero_ablation",
]
