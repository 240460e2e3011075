"""The reliance certificate: every verify test on one model (beside its reference, the
uncorrected model), each figure with an interval, a verdict per criterion and overall.

    certificate = certify(corrected, data.test, data.poisoned, target=0, reference=model)
    print(certificate.summary())
    certificate.meets("reduced")        # the CI gate: verify --require reduced

Over training seeds (a correction that trains, fitted once per seed): :func:`combine_seeds`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn
from tqdm.auto import tqdm

from latentsurgeon._validation import Interval, Options, validate_params
from latentsurgeon.activations.batching import as_samples
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.metrics.intervals import Estimate, bootstrap, bootstrap_weights
from latentsurgeon.metrics.relevance import RELEVANCE_METHODS
from latentsurgeon.verify.artifact import FILLS, Artifact
from latentsurgeon.verify.concept import ConceptLayer, concept_tests
from latentsurgeon.verify.groups import group_metrics
from latentsurgeon.verify.insertion import counterfactual_insertion
from latentsurgeon.verify.relevance import relevance_test
from latentsurgeon.verify.removal import counterfactual_removal
from latentsurgeon.verify.verdict import (
    THRESHOLDS,
    Judgement,
    Threshold,
    judge,
    overall_verdict,
    verdict_rank,
)

__all__ = ["Certificate", "certify", "combine_seeds"]

#: The tests in the order a certificate lists them.
TESTS = ("insertion", "removal", "relevance", "groups")


@dataclass
class Certificate:
    """What :func:`certify` found.

    Attributes:
        target: the shortcut class.
        figures: ``{test: {figure: Estimate}}`` of the model.
        reference: the same for the reference model (None without one).
        ratios: ``{criterion: Estimate}`` of figure / reference (paired bootstrap).
        judgements: ``{criterion: Judgement}``.
        verdict, reason: overall (see :mod:`latentsurgeon.verify.verdict`).
        concept: TCAV and CAV accuracy per layer of the model (and ``concept_reference``).
        settings: how it was measured (method names, resamples, confidence, seeds, thresholds).
    """

    target: int
    figures: dict[str, dict[str, Estimate]]
    reference: dict[str, dict[str, Estimate]] | None
    ratios: dict[str, Estimate]
    judgements: dict[str, Judgement]
    verdict: str
    reason: str
    concept: list[ConceptLayer] = field(default_factory=list)
    concept_reference: list[ConceptLayer] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def meets(self, required: str) -> bool:
        """True when the overall verdict is ``required`` or better (``removed`` >
        ``reduced`` > ``not removed``)."""
        return verdict_rank(self.verdict) <= verdict_rank(required)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every estimate as ``{value, low, high, n, confidence, method}``."""
        def table(figures: Mapping[str, Mapping[str, Estimate]] | None) -> Any:
            if figures is None:
                return None
            return {t: {k: e.to_dict() for k, e in f.items()} for t, f in figures.items()}
        return {"verdict": self.verdict, "reason": self.reason, "target": self.target,
                "criteria": {k: j.to_dict() for k, j in self.judgements.items()},
                "figures": table(self.figures), "reference": table(self.reference),
                "ratios": {k: e.to_dict() for k, e in self.ratios.items()},
                "concept": [c.to_dict() for c in self.concept],
                "concept_reference": [c.to_dict() for c in self.concept_reference],
                "settings": self.settings}

    def summary(self) -> str:
        """The verdict line, one line per criterion, and the concept tests."""
        lines = [f"verdict: {self.verdict} ({self.reason})"]
        for judgement in self.judgements.values():
            lines.append(f"  [{judgement.verdict or 'not judged'}] {judgement.reason}")
        groups = self.figures.get("groups", {})
        if groups:
            lines.append("  groups (reported): " + ", ".join(
                f"{k} {e.format()}" for k, e in groups.items()))
        for row in self.concept:
            lines.append(f"  concept (reported) {row.layer}: TCAV {row.score:.2f} "
                         f"(p = {row.p_value:.2g}{', significant' if row.significant else ''}), "
                         f"CAV accuracy {row.cav_accuracy:.2f}")
        return "\n".join(lines)


def _estimates(test: Any, weights: np.ndarray, confidence: float) -> dict[str, Estimate]:
    return {name: bootstrap(stat, test.n, weights=weights, confidence=confidence)
            for name, stat in test.statistics().items()}


def _ratio(stat_model: Any, stat_reference: Any, weights: np.ndarray, n: int,
           confidence: float) -> Estimate | None:
    reference_value = float(stat_reference(weights[:1])[0])
    if not math.isfinite(reference_value) or reference_value <= 1e-9:
        return None  # the reference shows no reliance to reduce

    def ratio(w: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            out = stat_model(w) / stat_reference(w)
        return np.where(stat_reference(w) > 1e-12, out, np.nan)
    return bootstrap(ratio, n, weights=weights, confidence=confidence)


def _run_tests(model: nn.Module, clean: Any, poisoned: Any, artifact: Artifact, target: int,
               fill: str, method: str, batch_size: int, head: Any) -> dict[str, Any]:
    return {
        "insertion": counterfactual_insertion(model, clean, artifact, target=target, fill=fill,
                                              batch_size=batch_size, head=head),
        "removal": counterfactual_removal(model, poisoned, target=target, fill=fill,
                                          reference=clean, batch_size=batch_size, head=head),
        "relevance": relevance_test(model, poisoned, target=target, method=method, head=head),
        "groups": group_metrics(model, clean, poisoned, target=target, batch_size=batch_size,
                                head=head),
    }


def _thresholds(thresholds: Any) -> dict[str, Threshold]:
    if thresholds is None:
        return dict(THRESHOLDS)
    if not isinstance(thresholds, Mapping) or not all(
            isinstance(v, Threshold) for v in thresholds.values()):
        raise InvalidParameterError(
            "certify: thresholds must map criterion names to Threshold objects (default "
            f"latentsurgeon.verify.THRESHOLDS); got {type(thresholds).__name__}.")
    unknown = {k: v.test for k, v in thresholds.items() if v.test not in TESTS}
    if unknown:
        raise InvalidParameterError(
            f"certify: thresholds {unknown} name tests other than {', '.join(TESTS)}.")
    return dict(thresholds)


def certify(model: nn.Module, clean: Any, poisoned: Any, *, target: int,
            artifact: Artifact | None = None, reference: nn.Module | None = None,
            layers: Sequence[str] | None = None, relevance_method: str = "input_x_gradient",
            fill: str = "local_mean", thresholds: Mapping[str, Threshold] | None = None,
            n_boot: int = 1000, confidence: float = 0.95, seed: int = 0, tcav_runs: int = 10,
            concept_reference: bool = True, batch_size: int = 256, head: str | int = "logits",
            progress: bool = True) -> Certificate:
    """The reliance certificate of ``model`` for the artifact ``poisoned`` carries.

    Args:
        model: the classifier to certify (a corrected model, or any other).
        clean: clean labelled test images (``decoy_digits(...).test``).
        poisoned: labelled test images carrying the artifact, with ``.masks`` (and optionally
            ``.artifact`` flags): ``decoy_digits(...).poisoned``, or discovered masks.
        target: the shortcut class.
        artifact: what insertion pastes; None estimates it from ``poisoned``
            (:meth:`Artifact.from_examples`).
        reference: the uncorrected model; its figures are measured on the same samples and
            the criteria's ratios to them decide ``reduced``.
        layers: layers of ``model`` for the concept tests (TCAV and CAV accuracy;
            :func:`~latentsurgeon.verify.concept.neighbour_layers` gives the corrected layer and
            its neighbours); the reference is tested at those of them it has. None skips them.
        relevance_method: the attribution of the relevance test
            (``latentsurgeon.metrics.RELEVANCE_METHODS``).
        fill: the neutral fill of removal and of insertion's control (``FILLS``).
        thresholds: ``{criterion: Threshold}``; default :data:`~latentsurgeon.verify.THRESHOLDS`.
        n_boot, confidence, seed: the bootstrap over test samples.
        tcav_runs: CAVs per concept test.
        concept_reference: also run the concept tests on the reference (False when several
            models are certified against one reference: its rows are the same every time).
        batch_size, head: as for every model read.
        progress: a progress bar over the tests.

    Returns:
        A :class:`Certificate`.
    """
    validate_params(
        {"relevance_method": relevance_method, "fill": fill, "n_boot": n_boot,
         "confidence": confidence, "seed": seed, "tcav_runs": tcav_runs,
         "concept_reference": concept_reference, "batch_size": batch_size, "progress": progress},
        {"relevance_method": Options(RELEVANCE_METHODS), "fill": Options(FILLS),
         "n_boot": Interval(int, 10, None), "confidence": Interval(float, 0, 1,
                                                                  closed="neither"),
         "seed": Interval(int, 0, None), "tcav_runs": Interval(int, 2, None),
         "concept_reference": bool, "batch_size": Interval(int, 1, None), "progress": bool}, owner="certify()")
    if not isinstance(model, nn.Module):
        raise InvalidParameterError(
            f"certify: model must be a torch.nn.Module; got {type(model).__name__}.")
    if reference is not None and not isinstance(reference, nn.Module):
        raise InvalidParameterError(
            f"certify: reference must be a torch.nn.Module or None; got "
            f"{type(reference).__name__}.")
    chosen = _thresholds(thresholds)
    carrying = as_samples(poisoned, need_labels=True, what="poisoned")
    if carrying.masks is None:
        raise InvalidParameterError("certify: poisoned must carry .masks (where the artifact "
                                    "sits in each image); it has none.")
    if artifact is None:
        flags = carrying.artifact
        keep = flags.reshape(-1).bool() if flags is not None else slice(None)
        artifact = Artifact.from_examples(carrying.images[keep], carrying.masks[keep])
    elif not isinstance(artifact, Artifact):
        raise InvalidParameterError(
            f"certify: artifact must be an Artifact or None; got {type(artifact).__name__}.")
    models = {"model": model} if reference is None else {"model": model, "reference": reference}
    concept_roles = [r for r in models if r == "model" or concept_reference] if layers else []
    steps = tqdm(total=len(models) + len(concept_roles), desc="certify", disable=not progress,
                 leave=False)
    tests: dict[str, dict[str, Any]] = {}
    for role, net in models.items():
        tests[role] = _run_tests(net, clean, carrying, artifact, int(target), fill,
                                 relevance_method, batch_size, head)
        steps.update(1)
    figures: dict[str, dict[str, dict[str, Estimate]]] = {role: {} for role in models}
    ratios: dict[str, Estimate] = {}
    weights = {}
    for offset, name in enumerate(TESTS):
        n = tests["model"][name].n
        weights[name] = bootstrap_weights(n, n_boot, seed=seed + offset)
        for role in models:
            figures[role][name] = _estimates(tests[role][name], weights[name], confidence)
    judgements = {}
    for criterion, threshold in chosen.items():
        if reference is not None:
            stats_m = tests["model"][threshold.test].statistics()[threshold.figure]
            stats_r = tests["reference"][threshold.test].statistics()[threshold.figure]
            found = _ratio(stats_m, stats_r, weights[threshold.test],
                           tests["model"][threshold.test].n, confidence)
            if found is not None:
                ratios[criterion] = found
        judgements[criterion] = judge(criterion, threshold,
                                      figures["model"][threshold.test][threshold.figure],
                                      ratios.get(criterion))
    verdict, reason = overall_verdict(judgements)
    concept: dict[str, list[ConceptLayer]] = {"model": [], "reference": []}
    if layers:
        for role in concept_roles:
            net = models[role]
            # an exported correction may add modules (P-ClArC wraps its layer): the reference
            # is tested at the names it has
            names = dict(net.named_modules())
            present = [name for name in layers if name in names] if role == "reference" \
                else list(layers)
            if present:
                concept[role] = concept_tests(net, present, clean, artifact, target=int(target),
                                              n_runs=tcav_runs, seed=seed, progress=False)
            steps.update(1)
    steps.close()
    settings = {"relevance_method": relevance_method, "fill": fill, "n_boot": n_boot,
                "confidence": confidence, "seed": seed, "tcav_runs": tcav_runs, "seeds": 1,
                "thresholds": {k: t.describe() for k, t in chosen.items()}}
    return Certificate(int(target), figures["model"], figures.get("reference"), ratios,
                       judgements, verdict, reason, concept["model"], concept["reference"],
                       settings)


def _over_seeds(estimates: Sequence[Estimate], confidence: float) -> Estimate:
    """The seeds' mean with the wider of two intervals: the t-interval over the seeds' values,
    and the mean of their bootstrap bounds (a seed-free figure, such as P-ClArC's, keeps its
    test-sample uncertainty)."""
    over = Estimate.over_seeds([e.value for e in estimates], confidence)
    low = min(over.low, float(np.mean([e.low for e in estimates])))
    high = max(over.high, float(np.mean([e.high for e in estimates])))
    return Estimate(over.value, low, high, len(estimates), confidence, "seeds")


def combine_seeds(certificates: Sequence[Certificate],
                  thresholds: Mapping[str, Threshold] | None = None) -> Certificate:
    """One certificate over training seeds: every figure's mean over the seeds, with the wider
    of the t-interval over seeds and the mean bootstrap interval; the verdicts judged again on
    those.

    Raises:
        InvalidParameterError: no certificates, or certificates of different shortcut classes.
    """
    if not certificates or not all(isinstance(c, Certificate) for c in certificates):
        raise InvalidParameterError(
            "combine_seeds: certificates must be a non-empty list of Certificate objects.")
    first = certificates[0]
    if any(c.target != first.target for c in certificates):
        raise InvalidParameterError("combine_seeds: the certificates test different shortcut "
                                    "classes; expected one per seed of the same setting.")
    confidence = float(first.settings.get("confidence", 0.95))
    chosen = _thresholds(thresholds)

    def combine(tables: Sequence[dict[str, dict[str, Estimate]]]) -> dict:
        return {t: {k: _over_seeds([tab[t][k] for tab in tables], confidence)
                    for k in tables[0][t]} for t in tables[0]}

    figures = combine([c.figures for c in certificates])
    reference = (combine([c.reference for c in certificates])  # type: ignore[misc]
                 if all(c.reference is not None for c in certificates) else None)
    ratios = {k: _over_seeds([c.ratios[k] for c in certificates], confidence)
              for k in first.ratios if all(k in c.ratios for c in certificates)}
    judgements = {k: judge(k, t, figures[t.test][t.figure], ratios.get(k))
                  for k, t in chosen.items()}
    verdict, reason = overall_verdict(judgements)
    settings = {**first.settings, "seeds": len(certificates)}
    return Certificate(first.target, figures, reference, ratios, judgements, verdict, reason,
                       first.concept, first.concept_reference, settings)


