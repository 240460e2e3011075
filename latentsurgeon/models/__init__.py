"""Small reference models for 16x16 digits and deterministic training loops."""

from latentsurgeon.models.autoencoder import DigitAutoencoder
from latentsurgeon.models.cnn import DigitCNN
from latentsurgeon.models.training import (
    TrainingHistory,
    evaluate_accuracy,
    train_autoencoder,
    train_classifier,
)

__all__ = [
    "DigitAutoencoder",
    "DigitCNN",
    "TrainingHistory",
    "evaluate_accuracy",
    "train_autoencoder",
    "train_classifier",
]
