"""Bundled, deterministic data: scikit-learn's digits at 16x16 with planted shortcuts.

Nothing is downloaded: the digits ship with scikit-learn.
"""

from latentsurgeon.data.concept_sets import ConceptSets, watermark_concept_sets
from latentsurgeon.data.decoy import (
    CORNERS,
    KINDS,
    DecoyDigits,
    DecoySplit,
    decoy_digits,
    default_watermark,
    default_watermark_position,
    paste_swatch,
    paste_watermark,
    swatch_gray,
)
from latentsurgeon.data.digits import load_digits16
from latentsurgeon.data.tabular import spurious_tabular

__all__ = [
    "CORNERS",
    "ConceptSets",
    "KINDS",
    "DecoyDigits",
    "DecoySplit",
    "decoy_digits",
    "default_watermark",
    "default_watermark_position",
    "load_digits16",
    "paste_swatch",
    "paste_watermark",
    "spurious_tabular",
    "swatch_gray",
    "watermark_concept_sets",
]
