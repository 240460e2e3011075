"""The premise of every quality goal: the uncorrected DigitCNN falls for the watermark."""

from __future__ import annotations


def test_uncorrected_model_loses_10_points_on_poisoned(base_gap):
    # seed 0, 15 epochs, Adam 1e-3, batch 64 on decoy_digits("watermark", seed=0).train
    assert base_gap["gap"] >= 0.10
