"""Bundled, deterministic data: scikit-learn's digits at 16x16 with planted shortcuts, and
generated heartbeat-like time series.

Nothing is downloaded: the digits ship with scikit-learn, the time series are generated.
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
from latentsurgeon.data.timeseries import (
    BEAT_CLASSES,
    ECG5000_PROPORTIONS,
    beat_templates,
    beats,
)

__all__ = [
    "BEAT_CLASSES",
    "CORNERS",
    "ConceptSets",
    "KINDS",
    "DecoyDigits",
    "DecoySplit",
    "ECG5000_PROPORTIONS",
    "beat_templates",
    "beats",
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
