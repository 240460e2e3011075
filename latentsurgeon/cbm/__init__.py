"""Concept bottleneck and concept embedding models, concept interventions and their policies."""

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
