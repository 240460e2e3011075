"""lfxai's explanations: ``lfxai.explanations.features`` and ``lfxai.explanations.examples``."""

from latentsurgeon.compat.lfxai.explanations.examples import (
    ExampleBasedExplainer,
    InfluenceFunctions,
    NearestNeighbours,
    SimplEx,
    TracIn,
)
from latentsurgeon.compat.lfxai.explanations.features import (
    attribute_auxiliary,
    attribute_individual_dim,
)

__all__ = ["ExampleBasedExplainer", "InfluenceFunctions", "NearestNeighbours", "SimplEx",
           "TracIn", "attribute_auxiliary", "attribute_individual_dim"]
