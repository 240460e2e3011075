"""Discover: find the shortcut nobody labelled.

Relevance per sample (:func:`relevance`), candidates per class without labels (:class:`SpRAy`,
:class:`PrototypeDiscovery`), and one ranking across classes (:func:`discover_shortcuts`) whose
:class:`Candidate` turns into artifact labels, a CAV and masks for the corrections.
"""

from latentsurgeon.discover.candidates import (
    THRESHOLD,
    Candidate,
    Refinement,
    discover_shortcuts,
    mask_iou,
)
from latentsurgeon.discover.prototypes import PrototypeDiscovery
from latentsurgeon.discover.relevance import RELEVANCE_METHODS, Relevance, relevance
from latentsurgeon.discover.spray import SpRAy

__all__ = ["RELEVANCE_METHODS", "THRESHOLD", "Candidate", "PrototypeDiscovery", "Refinement",
           "Relevance", "SpRAy", "discover_shortcuts", "mask_iou", "relevance"]
