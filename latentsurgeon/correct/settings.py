"""The settings each correction uses in the demo, tuned on the bundled decoy digits.

Every entry is a dict of constructor arguments; ``fit`` is then called as below (``data =
decoy_digits("watermark", seed=0)``, ``model`` the uncorrected DigitCNN)::

    PClarc(**default_settings("pclarc")).fit(model, data.train)          # evaluate .export(model)
    AClarc(**default_settings("aclarc")).fit(copy_of_model, data.train)  # changes the copy
    RRClarc(**default_settings("rrclarc")).fit(copy_of_model, data.train)
    ExplanationRegularization(**default_settings("rrr_finetune")).fit(
        copy_of_model, data.correction_data())
    torch.manual_seed(0); fresh = DigitCNN()                             # RRR from scratch
    ExplanationRegularization(**default_settings("rrr")).fit(fresh, data.correction_data())

``data.correction_data()`` is the training split with the watermark's fixed region as masks on
every image; on the swatch decoys the masks differ per image and come from the split.
The same settings (but ``"rrr"``) are the entries of :data:`~latentsurgeon.correct.registry.
REGISTRY`, which the CLI, the demo, the tests and the benchmarks run. The measured effect of
each is in ``docs/correct.md``.
"""

from __future__ import annotations

import copy
from typing import Any

from latentsurgeon.correct.registry import DEMO_LAYER, REGISTRY
from latentsurgeon.errors import InvalidParameterError

__all__ = ["DEMO_LAYER", "SETTINGS", "default_settings"]

#: RRR trained from scratch (a freshly initialised model): true-label log-probability, lambda 1.
#: Not a registry entry: every entry corrects a trained model; this is the recipe of Ross et al.
RRR_FROM_SCRATCH: dict[str, Any] = {
    "lambda_rrr": 1.0, "lr": 1e-3, "epochs": 15, "batch_size": 64, "masking": "true_label",
    "normalize": False, "seed": 0}

#: ``{key: constructor arguments}``: every registry entry's tuned settings under its name without
#: dashes (``"pclarc"``), RRR's from-scratch recipe as ``"rrr"`` and the registry's fine-tuning
#: RRR as ``"rrr_finetune"``.
SETTINGS: dict[str, dict[str, Any]] = {
    **{entry.name.replace("-", ""): dict(entry.settings) for entry in REGISTRY.values()},
    "rrr": RRR_FROM_SCRATCH,
    "rrr_finetune": dict(REGISTRY["rrr"].settings),
}


def default_settings(method: str) -> dict[str, Any]:
    """Constructor arguments of ``method`` as the demo uses them (a fresh copy).

    Args:
        method: ``"pclarc"``, ``"aclarc"``, ``"rrclarc"``, ``"rrr"`` (from scratch) or
            ``"rrr_finetune"`` (the registry's ``"rrr"``, fine-tuning a trained model).

    Raises:
        InvalidParameterError: an unknown method (the message lists the known ones).
    """
    key = str(method).lower().replace("-", "").replace("_clarc", "clarc")
    if key not in SETTINGS:
        raise InvalidParameterError(
            f"default_settings(): method must be one of {', '.join(SETTINGS)}; got {method!r}.")
    return copy.deepcopy(SETTINGS[key])
