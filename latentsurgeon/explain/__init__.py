"""Explain: label-free feature importance and example importance for any encoder or layer.

Feature importance (:mod:`~latentsurgeon.explain.features`) attributes the representation of
a sample to its input features with any captum method. Example importance explains a test
example by training examples: :class:`NearestNeighbours` and :class:`SimplEx` in representation
space, :class:`TracIn` and :class:`InfluenceFunctions` through loss gradients. Every explainer
returns an ``(n_test, n_train)`` score matrix; :func:`top_examples` ranks it. The methods by
name, with their sign conventions, are one table: :data:`latentsurgeon.explain.methods.METHODS`.
"""

from latentsurgeon.explain.features import (
    FEATURE_METHODS,
    FeatureMethod,
    label_free_attribution,
    label_free_attribution_per_unit,
)
from latentsurgeon.explain.influence import InfluenceFunctions
from latentsurgeon.explain.methods import ExampleMethod, top_examples_by_method
from latentsurgeon.explain.neighbours import NearestNeighbours
from latentsurgeon.explain.ranking import flagged_share, top_examples
from latentsurgeon.explain.representations import representations
from latentsurgeon.explain.simplex import SimplEx, simplex_weights
from latentsurgeon.explain.tracin import TracIn

__all__ = [
    "FEATURE_METHODS",
    "FeatureMethod",
    "ExampleMethod",
    "InfluenceFunctions",
    "NearestNeighbours",
    "SimplEx",
    "TracIn",
    "flagged_share",
    "label_free_attribution",
    "label_free_attribution_per_unit",
    "representations",
    "simplex_weights",
    "top_examples",
    "top_examples_by_method",
]
