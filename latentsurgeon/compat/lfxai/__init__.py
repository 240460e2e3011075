"""lfxai (Crabbe & van der Schaar's label-free explainability) on latentsurgeon.

The subpackages mirror lfxai's modules, so ``from lfxai.models.images import AutoEncoderMnist``
becomes ``from latentsurgeon.compat.lfxai.models.images import AutoEncoderMnist`` (every name is
also here, at the top):

- ``explanations.features``: ``attribute_auxiliary``, ``attribute_individual_dim``;
- ``explanations.examples``: ``SimplEx``, ``NearestNeighbours``, ``TracIn``,
  ``InfluenceFunctions``;
- ``models.images``: ``EncoderMnist``, ``DecoderMnist``, ``AutoEncoderMnist``,
  ``ClassifierMnist``, ``BetaVaeMnist``, ``BetaTcVaeMnist``;
- ``models.pretext``: ``Identity``, ``RandomNoise``, ``Mask``.

docs/compat.md lists every difference from lfxai and its reason.
"""

from latentsurgeon.compat.lfxai.explanations import (
    ExampleBasedExplainer,
    InfluenceFunctions,
    NearestNeighbours,
    SimplEx,
    TracIn,
    attribute_auxiliary,
    attribute_individual_dim,
)
from latentsurgeon.compat.lfxai.models import (
    AutoEncoderMnist,
    BetaTcVaeMnist,
    BetaVaeMnist,
    ClassifierMnist,
    DecoderMnist,
    EncoderMnist,
    Identity,
    Mask,
    RandomNoise,
)

__all__ = [
    "AutoEncoderMnist",
    "BetaTcVaeMnist",
    "BetaVaeMnist",
    "ClassifierMnist",
    "DecoderMnist",
    "EncoderMnist",
    "ExampleBasedExplainer",
    "Identity",
    "InfluenceFunctions",
    "Mask",
    "NearestNeighbours",
    "RandomNoise",
    "SimplEx",
    "TracIn",
    "attribute_auxiliary",
    "attribute_individual_dim",
]
