"""Corrections: remove a shortcut's influence from a model (ClArC family, RRR).

* :class:`PClarc` - project the artifact out of one or several layers' activations (hook or
  exported module), no training.
* :class:`AClarc` - fine-tune the layers above while adding the artifact in latent space.
* :class:`RRClarc` - fine-tune with a penalty on the latent gradient along the artifact.
* :class:`ExplanationRegularization` - RRR: penalise input gradients inside artifact masks.
* :class:`RRClarcLoss`, :class:`RRRLoss` - the RR-ClArC and RRR penalties as loss terms for the
  user's own training loop (:mod:`latentsurgeon.correct.lightning`: a Lightning callback).

Every correction has ``fit(model, data) -> self``, ``corrected(model, data) -> nn.Module``,
``attach(model) -> HookGroup``, ``applied(model)``, ``export(model) -> nn.Module``,
``save``/``load`` and the scikit-learn parameter contract; it records the fingerprint of the
weights it applies to and refuses others. :data:`REGISTRY` is the one table of corrections (name,
class, the settings tuned on the bundled decoy digits) that the CLI, the demo, the tests and the
benchmarks run; :func:`default_settings` gives those settings. The projection
math (:mod:`latentsurgeon.correct.projection`) is also available as plain hooks
(:func:`add_clarc_hook`, :func:`add_mass_mean_probe_hook`) and modules.
"""

from latentsurgeon.activations.masks import prepare_masks
from latentsurgeon.correct._base import Correction
from latentsurgeon.correct.aclarc import AClarc
from latentsurgeon.correct.hooks import add_clarc_hook, add_mass_mean_probe_hook
from latentsurgeon.correct.loss_terms import RRClarcLoss, RRRLoss
from latentsurgeon.correct.modules import ClarcProjection, MassMeanShift
from latentsurgeon.correct.pclarc import PClarc
from latentsurgeon.correct.projection import clarc_projection, mass_mean_shift
from latentsurgeon.correct.registry import REGISTRY, CorrectionEntry, correction_entry
from latentsurgeon.correct.rr import RRLossType, RRMaskingPattern
from latentsurgeon.correct.rrclarc import RRClarc
from latentsurgeon.correct.rrr import ExplanationRegularization
from latentsurgeon.correct.settings import default_settings

__all__ = [
    "REGISTRY",
    "AClarc",
    "ClarcProjection",
    "Correction",
    "CorrectionEntry",
    "ExplanationRegularization",
    "MassMeanShift",
    "PClarc",
    "RRClarc",
    "RRClarcLoss",
    "RRLossType",
    "RRMaskingPattern",
    "RRRLoss",
    "add_clarc_hook",
    "add_mass_mean_probe_hook",
    "clarc_projection",
    "correction_entry",
    "default_settings",
    "mass_mean_shift",
    "prepare_masks",
]
