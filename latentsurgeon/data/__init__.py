"""Bundled, deterministic data: scikit-learn's digits at 16x16 with planted shortcuts, and
concept data sets (generated toy sets, the digits with pixel concepts), a tabular set with a planted
spurious feature and generated heartbeat-like time series.

Nothing is downloaded: the digits ship with scikit-learn, the time series are generated.
"""

from latentsurgeon.data.concept_digits import (
    DIGIT_CONCEPT_NAMES,
    concept_digits,
    count_holes,
    digit_concepts,
)
from latentsurgeon.data.concept_sets import ConceptSets, watermark_concept_sets
from latentsurgeon.data.decoy import (
    CORNERS,
    KINDS,
    PATTERNS,
    DecoyDigits,
    DecoySplit,
    decoy_digits,
    default_watermark,
    default_watermark_position,
    paste_swatch,
    paste_watermark,
    swatch_gray,
    watermark_pattern,
)
from latentsurgeon.data.digits import load_digits16
from latentsurgeon.data.tabular import spurious_tabular
from latentsurgeon.data.timeseries import (
    BEAT_CLASSES,
    ECG5000_PROPORTIONS,
    beat_templates,
    beats,
)
from latentsurgeon.data.toy_concepts import (
    TOY_CONCEPT_SETS,
    ConceptData,
    ConceptSplit,
    toy_concepts,
)

__all__ = [
    "BEAT_CLASSES",
    "CORNERS",
    "ConceptData",
    "ConceptSets",
    "ConceptSplit",
    "DIGIT_CONCEPT_NAMES",
    "KINDS",
    "PATTERNS",
    "TOY_CONCEPT_SETS",
    "DecoyDigits",
    "DecoySplit",
    "ECG5000_PROPORTIONS",
    "beat_templates",
    "beats",
    "concept_digits",
    "count_holes",
    "decoy_digits",
    "default_watermark",
    "default_watermark_position",
    "digit_concepts",
    "load_digits16",
    "paste_swatch",
    "paste_watermark",
    "spurious_tabular",
    "swatch_gray",
    "watermark_pattern",
    "toy_concepts",
    "watermark_concept_sets",
]
