"""Verify: does a model still rely on the artifact? A reliance certificate with intervals and a
verdict (``docs/verify.md``).

One module per test, each through the one model-access layer:

* :func:`counterfactual_insertion` - paste the artifact into other classes' clean images: the
  share that flips to the shortcut class beyond a neutral fill of the same region;
* :func:`counterfactual_removal` - remove it from the shortcut class's images (inpainted by the
  local mean): the fall of the class's probability;
* :func:`relevance_test` - the artifact's share of the shortcut class's input relevance;
* :func:`group_metrics` - clean, poisoned, worst-group and balanced accuracy, demographic parity
  and equalised odds differences with the artifact as the protected attribute;
* :func:`concept_tests` - TCAV of the artifact and the CAV's accuracy at several layers
  (readable is not used: reported, not judged).

:func:`certify` runs them on a model beside its reference (the uncorrected model), bootstraps
every figure over test samples (pairs kept), and judges each criterion and the whole
(:mod:`~latentsurgeon.verify.verdict`: ``removed``, ``reduced``, ``not removed`` against
:data:`THRESHOLDS`); :func:`combine_seeds` pools certificates over training seeds.
"""

from latentsurgeon.verify.artifact import FILLS, Artifact
from latentsurgeon.verify.certificate import Certificate, certify, combine_seeds
from latentsurgeon.verify.concept import ConceptLayer, concept_tests, neighbour_layers
from latentsurgeon.verify.groups import GroupTest, group_metrics
from latentsurgeon.verify.insertion import InsertionTest, counterfactual_insertion
from latentsurgeon.verify.relevance import RelevanceTest, relevance_test
from latentsurgeon.verify.removal import RemovalTest, counterfactual_removal
from latentsurgeon.verify.verdict import THRESHOLDS, VERDICTS, Judgement, Threshold

__all__ = ["FILLS", "THRESHOLDS", "VERDICTS", "Artifact", "Certificate", "ConceptLayer",
           "GroupTest", "InsertionTest", "Judgement", "RelevanceTest", "RemovalTest",
           "Threshold", "certify", "combine_seeds", "concept_tests", "counterfactual_insertion",
           "counterfactual_removal", "group_metrics", "neighbour_layers", "relevance_test"]
