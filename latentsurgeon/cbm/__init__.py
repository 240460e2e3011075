"""Concept bottleneck and concept embedding models, concept interventions and their policies.

* models (``models.py``): :class:`ConceptBottleneckModel`, :class:`ConceptEmbeddingModel`,
  :class:`BlackBoxModel`, all ``nn.Module`` s with the estimator contract;
* interventions (``intervention.py``): :class:`InterventionModule` (a wrapper) and
  :func:`intervention` (a context manager on a live model's layer);
* what is written (``strategies.py``) and which concepts first (``policies.py``, ``masks.py``);
* :func:`intervention_curve` (``curves.py``).

The experiment ``latentsurgeon cbm`` runs (train per seed, curves, files) is
:mod:`latentsurgeon.experiments.cbm`, an experiment of the experiments package.

See ``docs/cbm.md``.
"""

from latentsurgeon.cbm.curves import POLICIES, InterventionCurves, intervention_curve
from latentsurgeon.cbm.intervention import InterventionModule, intervention
from latentsurgeon.cbm.masks import build_mask, count_from_fraction, intervention_count
from latentsurgeon.cbm.models import (
    BlackBoxModel,
    ConceptBottleneckModel,
    ConceptEmbeddingModel,
    ConceptOutput,
)
from latentsurgeon.cbm.policies import (
    GradientPolicy,
    InterventionPolicy,
    RandomPolicy,
    UncertaintyPolicy,
    UniformPolicy,
    task_gradients,
)
from latentsurgeon.cbm.strategies import (
    DistributionIntervention,
    DoIntervention,
    GroundTruthIntervention,
    InterventionStrategy,
    to_output_space,
)

__all__ = [
    "POLICIES",
    "BlackBoxModel",
    "ConceptBottleneckModel",
    "ConceptEmbeddingModel",
    "ConceptOutput",
    "DistributionIntervention",
    "DoIntervention",
    "GradientPolicy",
    "GroundTruthIntervention",
    "InterventionCurves",
    "InterventionModule",
    "InterventionPolicy",
    "InterventionStrategy",
    "RandomPolicy",
    "UncertaintyPolicy",
    "UniformPolicy",
    "build_mask",
    "count_from_fraction",
    "intervention",
    "intervention_curve",
    "intervention_count",
    "task_gradients",
    "to_output_space",
]


#: Names that moved to the experiments package (which this package sits below).
_MOVED = {"run_experiment": "latentsurgeon.experiments.cbm.run (settings in its Settings)",
          "ExperimentResult": "latentsurgeon.experiments.cbm.CbmResult"}


def __getattr__(name: str) -> object:
    if name in _MOVED:
        raise AttributeError(f"latentsurgeon.cbm.{name} moved: use {_MOVED[name]}.")
    raise AttributeError(f"module 'latentsurgeon.cbm' has no attribute {name!r}")
