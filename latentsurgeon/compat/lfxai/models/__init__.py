"""lfxai's models: ``lfxai.models.images`` and ``lfxai.models.pretext``."""

from latentsurgeon.compat.lfxai.models.images import (
    AutoEncoderMnist,
    BetaTcVaeMnist,
    BetaVaeMnist,
    ClassifierMnist,
    DecoderMnist,
    EncoderMnist,
)
from latentsurgeon.compat.lfxai.models.pretext import Identity, Mask, RandomNoise

__all__ = ["AutoEncoderMnist", "BetaTcVaeMnist", "BetaVaeMnist", "ClassifierMnist",
           "DecoderMnist", "EncoderMnist", "Identity", "Mask", "RandomNoise"]
