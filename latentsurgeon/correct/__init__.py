"""Corrections: remove a shortcut's influence from a model (ClArC family, RRR).

* :class:`PClarc` - project the artifact out of a layer's activations (hook or exported module).
* :class:`AClarc` - fine-tune the layers above while adding the artifact in latent space.
* :class:`RRClarc` - fine-tune with a penalty on the latent gradient along the artifact.
* :class:`ExplanationRegularization` - RRR: penalise input gradients inside artifact masks.

Every correction has ``fit(...) -> self``, ``attach(model) -> HookGroup``, ``applied(model)``,
``export(model) -> nn.Module`` and ``save``/``load``. :func:`default_settings` gives the settings
tuned on the bundled decoy digits.
"""

from latentsurgeon.correct.clarc import AClarc, PClarc, RRClarc, RRLossType, RRMaskingPattern
from latentsurgeon.correct.modules import ClarcProjection, MassMeanShift
from latentsurgeon.correct.rrr import ExplanationRegularization
from latentsurgeon.correct.settings import default_settings
from latentsurgeon.hooks.clarc import add_clarc_hook, add_mass_mean_probe_hook

__all__ = [
    "AClarc",
    "ClarcProjection",
    "ExplanationRegularization",
    "MassMeanShift",
    "PClarc",
    "RRClarc",
    "RRLossType",
    "RRMaskingPattern",
    "add_clarc_hook",
    "add_mass_mean_probe_hook",
    "default_settings",
]
