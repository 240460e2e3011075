"""lfxai's studies of unsupervised representations, on bundled data, in minutes on a CPU.

Crabbe & van der Schaar (*Label-Free Explainability for Unsupervised Models*, ICML 2022) test
label-free explanations with five experiments; each is a module here, run over several seeds,
summarised as means with 95% t-intervals, and checked against the paper's headline effect:

| name | module | the headline effect |
|---|---|---|
| ``consistency-features`` | :mod:`.consistency_features` | masking the most important pixels shifts the representation more than random pixels |
| ``consistency-examples`` | :mod:`.consistency_examples` | every example-importance method beats a random ranking at finding same-label examples |
| ``roar`` | :mod:`.roar` | removing the important pixels and retraining hurts more than removing random ones |
| ``pretext`` | :mod:`.pretext` | encoders trained on different pretext tasks are explained differently |
| ``disvae`` | :mod:`.disvae` | a larger beta does not decorrelate the units' saliency maps |

:func:`run_experiment` runs one (and writes its CSV tables, PNG plots and HTML report),
:func:`run_experiments` several into one report; the command line is ``latentsurgeon
explain-experiment NAME``. Each module's ``run(seeds, settings=..., quick=...)`` computes
without writing anything.

:mod:`.cbm` is the concept-intervention experiment ``latentsurgeon cbm`` runs (concept
bottleneck and embedding models, intervention curves per policy; not one of lfxai's studies,
so ``"all"`` leaves it out): ``cbm.run(seeds, settings=cbm.Settings(...))`` and
``result.write(out)``.
"""

from latentsurgeon.experiments import (
    cbm,
    consistency_examples,
    consistency_features,
    disvae,
    pretext,
    roar,
)
from latentsurgeon.experiments._base import ExperimentResult
from latentsurgeon.experiments._runner import EXPERIMENTS, run_experiment, run_experiments
from latentsurgeon.experiments._stats import MeanInterval, mean_interval

__all__ = [
    "EXPERIMENTS",
    "ExperimentResult",
    "MeanInterval",
    "cbm",
    "consistency_examples",
    "consistency_features",
    "disvae",
    "mean_interval",
    "pretext",
    "roar",
    "run_experiment",
    "run_experiments",
]
