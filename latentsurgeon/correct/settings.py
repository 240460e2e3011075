"""The settings each correction uses in the demo, tuned on the bundled decoy digits.

Every entry is a dict of constructor arguments; ``fit`` is then called as below (``data =
decoy_digits("watermark", seed=0)``, ``model`` the uncorrected DigitCNN, ``region =
data.poisoned.masks[0]`` the watermark's pixels)::

    PClarc(**default_settings("pclarc")).fit(model, data.train)          # evaluate .export(model)
    AClarc(**default_settings("aclarc")).fit(copy_of_model, data.train)  # changes the copy
    RRClarc(**default_settings("rrclarc")).fit(copy_of_model, data.train)
    ExplanationRegularization(**default_settings("rrr_finetune")).fit(
        copy_of_model, data.train.images, data.train.labels, region)
    torch.manual_seed(0); fresh = DigitCNN()                             # RRR from scratch
    ExplanationRegularization(**default_settings("rrr")).fit(
        fresh, data.train.images, data.train.labels, region)

On the swatch decoys the masks differ per image: ``.fit(fresh, swatch.train)`` takes them from the
split. The measured effect of each is in ``docs/correct.md``.
"""

from __future__ import annotations

import copy
from typing import Any

from latentsurgeon.errors import InvalidParameterError

__all__ = ["DEMO_LAYER", "SETTINGS", "default_settings"]

#: The DigitCNN layer the ClArC methods act on: the output of the conv block, ``(N, 32, 4, 4)``.
DEMO_LAYER = "features"

SETTINGS: dict[str, dict[str, Any]] = {
    # Mass-mean CAV within the class the watermark occurs in, flattened, full projection.
    "pclarc": {"layer": DEMO_LAYER, "alpha": 1.0, "cav_method": "mass_mean",
               "pooling": "flatten", "cav_samples": "artifact_classes"},
    # Half of each batch gets the artifact; only the head (layers above `features`) trains.
    "aclarc": {"layer": DEMO_LAYER, "alpha": 1.0, "epochs": 5, "lr": 1e-3,
               "augment_fraction": 0.5, "trainable": "above", "seed": 0},
    # max-logit gradient, l2 penalty, lambda 10, head only.
    "rrclarc": {"layer": DEMO_LAYER, "lambda_rr": 10.0, "loss": "l2", "masking": "max_logit",
                "epochs": 5, "lr": 1e-3, "trainable": "above", "seed": 0},
    # From scratch (a freshly initialised model): true-label log-probability, lambda 1.
    "rrr": {"lambda_rrr": 1.0, "lr": 1e-3, "epochs": 15, "batch_size": 64,
            "masking": "true_label", "normalize": False, "seed": 0},
    # Fine-tuning a trained model: the true label's log-probability is saturated there (its
    # input gradient vanishes on confident samples), so penalise all classes' log-probabilities,
    # normalised per masked element.
    "rrr_finetune": {"lambda_rrr": 0.1, "lr": 1e-3, "epochs": 10, "batch_size": 64,
                     "masking": "sum_log_probs", "normalize": True, "seed": 0},
}


def default_settings(method: str) -> dict[str, Any]:
    """Constructor arguments of ``method`` as the demo uses them (a fresh copy).

    Args:
        method: ``"pclarc"``, ``"aclarc"``, ``"rrclarc"``, ``"rrr"`` (from scratch) or
            ``"rrr_finetune"``.

    Raises:
        InvalidParameterError: an unknown method (the message lists the known ones).
    """
    key = str(method).lower().replace("-", "").replace("_clarc", "clarc")
    if key not in SETTINGS:
        raise InvalidParameterError(
            f"default_settings(): method must be one of {', '.join(SETTINGS)}; got {method!r}.")
    return copy.deepcopy(SETTINGS[key])
