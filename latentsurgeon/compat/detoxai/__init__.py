"""detoxai's ClArC family (``detoxai.methods.clarcs``) on latentsurgeon.

Replace ``from detoxai.methods.clarcs import PCLARC`` by
``from latentsurgeon.compat.detoxai import PCLARC`` (and ``detoxai.methods.clarcs.hooks`` by
``latentsurgeon.compat.detoxai.hooks``); the rest of the code stays. The correctors are
:class:`PCLARC`, :class:`ACLARC` and :class:`RRCLARC` on :class:`latentsurgeon.correct.PClarc`,
:class:`~latentsurgeon.correct.AClarc` and :class:`~latentsurgeon.correct.RRClarc`; the hooks
module is on :func:`latentsurgeon.correct.add_clarc_hook`. They take a Lightning
``LightningModule`` (``pip install latentsurgeon[lightning]``; its network is ``.model``, as
detoxai expects) or a plain ``nn.Module``. ``docs/compat.md`` lists the differences.
"""

from latentsurgeon.compat.detoxai.aclarc import ACLARC
from latentsurgeon.compat.detoxai.clarc import (
    ACTIVATIONS_DIR,
    CAV_TYPES,
    CLARC,
    require_activations_and_cav,
)
from latentsurgeon.compat.detoxai.hooks import (
    add_clarc_hook,
    add_mass_mean_probe_hook,
    clarc_hook,
    mass_mean_probe_hook,
    stabilize,
)
from latentsurgeon.compat.detoxai.pclarc import PCLARC
from latentsurgeon.compat.detoxai.rrclarc import RRCLARC, RRLossType, RRMaskingPattern

__all__ = [
    "ACLARC",
    "ACTIVATIONS_DIR",
    "CAV_TYPES",
    "CLARC",
    "PCLARC",
    "RRCLARC",
    "RRLossType",
    "RRMaskingPattern",
    "add_clarc_hook",
    "add_mass_mean_probe_hook",
    "clarc_hook",
    "mass_mean_probe_hook",
    "require_activations_and_cav",
    "stabilize",
]
