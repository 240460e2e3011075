"""Small reference models, the models of the explain experiments, and their training recipes.

Every model trains through the one loop (:func:`latentsurgeon.training.train`), with
per-epoch checkpoints and progress bars; every model of the experiments has named submodules
(``encoder``, ``decoder``, ...) and an ``encode(x)`` method giving the representation.
"""

from latentsurgeon.models.augment import DigitAugment, augment_digits
from latentsurgeon.models.autoencoder import DigitAutoencoder
from latentsurgeon.models.cnn import DigitCNN
from latentsurgeon.models.contrastive import ContrastiveEncoder, nt_xent, train_contrastive
from latentsurgeon.models.perturbations import (
    PERTURBATIONS,
    GaussianNoise,
    Identity,
    RandomMask,
    make_perturbation,
)
from latentsurgeon.models.perturbed_autoencoder import (
    EncoderClassifier,
    PerturbedAutoencoder,
    digit_decoder,
    digit_encoder,
)
from latentsurgeon.models.pretext import PRETEXT_TASKS, pretext_model, train_pretext
from latentsurgeon.models.recurrent import RecurrentAutoencoder, train_recurrent_autoencoder
from latentsurgeon.models.vae import VAE, train_vae
from latentsurgeon.models.vae_losses import (
    BetaTCVAELoss,
    BetaVAELoss,
    VAELoss,
    VAEOutputs,
    kl_normal,
    reconstruction_nll,
    tc_decomposition,
)
from latentsurgeon.training import (
    TrainingHistory,
    evaluate_accuracy,
    train_autoencoder,
    train_classifier,
)

__all__ = [
    "PERTURBATIONS",
    "PRETEXT_TASKS",
    "VAE",
    "BetaTCVAELoss",
    "BetaVAELoss",
    "ContrastiveEncoder",
    "DigitAugment",
    "DigitAutoencoder",
    "DigitCNN",
    "EncoderClassifier",
    "GaussianNoise",
    "Identity",
    "PerturbedAutoencoder",
    "RandomMask",
    "RecurrentAutoencoder",
    "TrainingHistory",
    "VAELoss",
    "VAEOutputs",
    "augment_digits",
    "digit_decoder",
    "digit_encoder",
    "evaluate_accuracy",
    "kl_normal",
    "make_perturbation",
    "nt_xent",
    "pretext_model",
    "reconstruction_nll",
    "tc_decomposition",
    "train_autoencoder",
    "train_classifier",
    "train_contrastive",
    "train_pretext",
    "train_recurrent_autoencoder",
    "train_vae",
]
