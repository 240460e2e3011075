"""The one table of corrections: what the CLI, the demo, the tests and the benchmarks run.

Each :class:`CorrectionEntry` names a correction class and the settings it was tuned with on the
bundled decoy digits. Every caller reaches every correction through :data:`REGISTRY` and the one
protocol of :class:`~latentsurgeon.correct._base.Correction` (``fit(model, data)``,
``corrected(model, data)``, ``attach``/``applied``/``export``), so adding a correction is one
class plus one entry here (``docs/architecture.md`` shows a worked example).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from latentsurgeon.correct._base import Correction
from latentsurgeon.correct.aclarc import AClarc
from latentsurgeon.correct.pclarc import PClarc
from latentsurgeon.correct.rrclarc import RRClarc
from latentsurgeon.correct.rrr import ExplanationRegularization
from latentsurgeon.errors import InvalidParameterError

__all__ = ["DEMO_LAYER", "REGISTRY", "CorrectionEntry", "correction_entry"]

#: The DigitCNN layer the ClArC methods act on: the output of the conv block, ``(N, 32, 4, 4)``.
DEMO_LAYER = "features"


@dataclass(frozen=True)
class CorrectionEntry:
    """One correction as the tools run it.

    Attributes:
        name: the spelling of the CLI (``--method``), the demo's table and the benchmarks
            (``"p-clarc"``).
        cls: the :class:`~latentsurgeon.correct._base.Correction` subclass.
        settings: the constructor arguments tuned on the bundled decoy digits (a read-only
            mapping; :meth:`build` copies it).
        summary: one line for ``--help`` and the docs.
    """

    name: str
    cls: type[Correction]
    settings: Mapping[str, Any]
    summary: str
    parameters: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = frozenset(inspect.signature(self.cls.__init__).parameters) - {"self"}
        unknown = sorted(set(self.settings) - names)
        if unknown:
            raise InvalidParameterError(
                f"CorrectionEntry {self.name!r}: settings name parameters {self.cls.__name__} "
                f"does not have: {', '.join(unknown)}.")
        object.__setattr__(self, "parameters", names)
        object.__setattr__(self, "settings", MappingProxyType(copy.deepcopy(dict(self.settings))))

    @property
    def modifies_weights(self) -> bool:
        """True when ``fit`` fine-tunes the model (the correction lives in the weights)."""
        return bool(self.cls.modifies_weights)

    @property
    def takes_layer(self) -> bool:
        """True when the correction acts at a layer (``layer=``)."""
        return "layer" in self.parameters

    def build(self, **overrides: Any) -> Correction:
        """A new, unfitted correction with the tuned settings, ``overrides`` applied.

        Overrides the class does not take (``layer`` for RRR, ``seed`` for P-ClArC) are an
        :class:`~latentsurgeon.errors.InvalidParameterError` naming them.
        """
        unknown = sorted(set(overrides) - self.parameters)
        if unknown:
            raise InvalidParameterError(
                f"{self.name}: {self.cls.__name__} has no parameter {', '.join(unknown)}; its "
                f"parameters are {', '.join(sorted(self.parameters))}.")
        return self.cls(**{**copy.deepcopy(dict(self.settings)), **overrides})


def _entries(*entries: CorrectionEntry) -> Mapping[str, CorrectionEntry]:
    return MappingProxyType({entry.name: entry for entry in entries})


#: Every correction, in the order the demo and the CLI list them.
REGISTRY: Mapping[str, CorrectionEntry] = _entries(
    CorrectionEntry(
        "p-clarc", PClarc,
        # Mass-mean CAV within the class the watermark occurs in, flattened, full projection.
        {"layer": DEMO_LAYER, "alpha": 1.0, "cav_method": "mass_mean", "pooling": "flatten",
         "cav_samples": "artifact_classes"},
        "project the artifact direction out of a layer's output (no training)"),
    CorrectionEntry(
        "a-clarc", AClarc,
        # Half of each batch gets the artifact; only the head (layers above `features`) trains.
        {"layer": DEMO_LAYER, "alpha": 1.0, "epochs": 5, "lr": 1e-3, "augment_fraction": 0.5,
         "trainable": "above", "seed": 0},
        "fine-tune the layers above while the artifact is added in latent space"),
    CorrectionEntry(
        "rr-clarc", RRClarc,
        # max-logit gradient, l2 penalty, lambda 10, head only.
        {"layer": DEMO_LAYER, "lambda_rr": 10.0, "loss": "l2", "masking": "max_logit",
         "epochs": 5, "lr": 1e-3, "trainable": "above", "seed": 0},
        "fine-tune with a penalty on the latent gradient along the artifact"),
    CorrectionEntry(
        "rrr", ExplanationRegularization,
        # Fine-tuning a trained model: the true label's log-probability is saturated there (its
        # input gradient vanishes on confident samples), so penalise all classes'
        # log-probabilities, normalised per masked element.
        {"lambda_rrr": 0.1, "lr": 1e-3, "epochs": 10, "batch_size": 64,
         "masking": "sum_log_probs", "normalize": True, "seed": 0},
        "fine-tune with a penalty on input gradients inside the artifact's masks"),
)


def correction_entry(name: str) -> CorrectionEntry:
    """The entry of ``name`` (``"p-clarc"``; also ``"pclarc"``, ``"P-ClArC"``, ``"rr_clarc"``).

    Raises:
        InvalidParameterError: an unknown name (the message lists the known ones).
    """
    key = _normal(name) if isinstance(name, str) else None
    for entry in REGISTRY.values():
        if key == _normal(entry.name):
            return entry
    raise InvalidParameterError(
        f"correction: name must be one of {', '.join(REGISTRY)}; got {name!r}.")


def _normal(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")
