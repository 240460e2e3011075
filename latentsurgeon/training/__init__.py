"""The one training loop (:func:`train`) and the reference recipes built on it.

Every method that changes weights trains here: the reference models, the corrections that
fine-tune (A-ClArC, RR-ClArC, RRR), the concept models and the experiments' models. The package
sits low in the layering (above ``activations`` and ``metrics``), so every stage may use it.
"""

from latentsurgeon.training.loop import (
    OPTIMIZERS,
    LossFn,
    OptimizerSpec,
    TrainingData,
    TrainingHistory,
    build_optimizer,
    train,
)
from latentsurgeon.training.recipes import evaluate_accuracy, train_autoencoder, train_classifier

__all__ = [
    "OPTIMIZERS",
    "LossFn",
    "OptimizerSpec",
    "TrainingData",
    "TrainingHistory",
    "build_optimizer",
    "evaluate_accuracy",
    "train",
    "train_autoencoder",
    "train_classifier",
]
