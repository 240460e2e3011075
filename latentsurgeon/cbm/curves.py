"""Intervention curves: task (and concept) accuracy against the number of concepts intervened on.

For every policy and every count ``k = 0..K``, the test data run through the model while the
concept layer's ``k`` lowest-scoring concepts of each sample are replaced by their true values
(:func:`~latentsurgeon.cbm.intervention` with ``k=``). Several runs (models trained with
different seeds, each with its own test data if wanted) give a mean curve and a t-interval; the
area under the mean curve over the fraction of concepts intervened, ``[0, 1]``, summarises a
policy (it is the mean accuracy over fractions, so it lies in ``[0, 1]``).
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from latentsurgeon._io import write_text_atomic
from latentsurgeon._validation import Interval, Options, check_finite, validate_params
from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.activations.batching import iter_batches, model_device, to_device
from latentsurgeon.cbm.intervention import InterventionModule, _attached
from latentsurgeon.cbm.policies import (
    GradientPolicy,
    RandomPolicy,
    UncertaintyPolicy,
    UniformPolicy,
)
from latentsurgeon.cbm.strategies import GroundTruthIntervention
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError
from latentsurgeon.hooks import HookGroup, get_layer, primary_tensor, resolve_layer
from latentsurgeon.metrics.accuracy import accuracy

__all__ = ["POLICIES", "InterventionCurves", "intervention_curve"]

#: The policies :func:`intervention_curve` builds by name.
POLICIES = ("random", "uncertainty", "gradient", "uniform")


@dataclass
class InterventionCurves:
    """Accuracy against the number of concepts intervened on, per policy and run.

    Attributes:
        counts: ``[0, 1, ..., K]`` concepts intervened on per sample.
        n_concepts: ``K``.
        task: ``{policy: (n_runs, K + 1)}`` task accuracies.
        concept: ``{policy: (n_runs, K + 1)}`` concept accuracies (after the intervention).
        confidence: level of the t-intervals.
    """

    counts: list[int]
    n_concepts: int
    task: dict[str, np.ndarray]
    concept: dict[str, np.ndarray]
    confidence: float = 0.95
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def policies(self) -> list[str]:
        return list(self.task)

    @property
    def n_runs(self) -> int:
        return int(next(iter(self.task.values())).shape[0])

    @property
    def fractions(self) -> np.ndarray:
        """``counts / K``."""
        return np.asarray(self.counts, dtype=np.float64) / self.n_concepts

    def _table(self, which: str) -> dict[str, np.ndarray]:
        if which not in ("task", "concept"):
            raise InvalidParameterError(f"which must be 'task' or 'concept'; got {which!r}.")
        return self.task if which == "task" else self.concept

    def _values(self, policy: str, which: str) -> np.ndarray:
        table = self._table(which)
        if policy not in table:
            raise InvalidParameterError(
                f"No curve for policy {policy!r}; the curves hold {', '.join(table)}.")
        return table[policy]

    def mean(self, policy: str, which: str = "task") -> np.ndarray:
        """``(K + 1,)`` mean accuracy over runs."""
        return self._values(policy, which).mean(0)

    def interval(self, policy: str, which: str = "task") -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)``, each ``(K + 1,)``: the t-interval of the mean over runs (the mean
        itself with a single run)."""
        values = self._values(policy, which)
        mean = values.mean(0)
        n = len(values)
        if n < 2:
            return mean.copy(), mean.copy()
        from scipy import stats

        half = stats.t.ppf(0.5 + self.confidence / 2, n - 1) * values.std(0, ddof=1) / math.sqrt(n)
        return mean - half, mean + half

    def difference(self, policy: str, baseline: str = "random", fraction: float | None = None,
                   which: str = "task") -> tuple[float, float, float]:
        """``policy`` minus ``baseline``, paired run by run (same model, same data): the mean
        difference and its t-interval ``(mean, low, high)``, at ``fraction`` of the concepts
        (interpolated as in :meth:`at`) or, with ``fraction=None``, of the areas."""
        a, b = self._values(policy, which), self._values(baseline, which)
        if fraction is None:
            per_run = np.trapezoid(a - b, self.fractions, axis=1)
        else:
            validate_params({"fraction": fraction}, {"fraction": Interval(float, 0, 1)},
                            owner="InterventionCurves.difference()")
            per_run = np.array([np.interp(fraction, self.fractions, row) for row in a - b])
        mean = float(per_run.mean())
        if len(per_run) < 2:
            return mean, mean, mean
        from scipy import stats

        half = float(stats.t.ppf(0.5 + self.confidence / 2, len(per_run) - 1)
                     * per_run.std(ddof=1) / math.sqrt(len(per_run)))
        return mean, mean - half, mean + half

    def at(self, policy: str, fraction: float, which: str = "task") -> float:
        """Mean accuracy with ``fraction`` of the concepts intervened on, read off the curve
        (linear interpolation between counts: 25 % of 2 concepts is half way from 0 to 1)."""
        validate_params({"fraction": fraction}, {"fraction": Interval(float, 0, 1)},
                        owner="InterventionCurves.at()")
        return float(np.interp(fraction, self.fractions, self.mean(policy, which)))

    def auc(self, policy: str, which: str = "task") -> float:
        """Area under the mean curve over the fraction intervened on, ``[0, 1]`` (trapezoids):
        the mean accuracy over fractions."""
        return float(np.trapezoid(self.mean(policy, which), self.fractions))

    def summary(self) -> dict[str, Any]:
        """Per policy: accuracy without and with every concept intervened on, at 25 % and 50 %,
        the areas, and (when there is a random policy) the paired difference to it at 25 % and
        50 % as ``[mean, low, high]`` (JSON-serialisable)."""
        out: dict[str, Any] = {"n_concepts": self.n_concepts, "n_runs": self.n_runs,
                               **self.meta, "policies": {}}
        for policy in self.policies:
            task = self.mean(policy)
            out["policies"][policy] = {
                "task_none": float(task[0]), "task_all": float(task[-1]),
                "task_at_25": self.at(policy, 0.25), "task_at_50": self.at(policy, 0.5),
                "task_auc": self.auc(policy), "concept_auc": self.auc(policy, "concept")}
            if "random" in self.task and policy != "random":
                for fraction, key in ((0.25, "vs_random_at_25"), (0.5, "vs_random_at_50")):
                    out["policies"][policy][key] = list(self.difference(policy, "random",
                                                                        fraction))
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One row per policy and count: means and interval bounds of both accuracies."""
        rows = []
        for policy in self.policies:
            t_mean, c_mean = self.mean(policy), self.mean(policy, "concept")
            (t_low, t_high), (c_low, c_high) = self.interval(policy), self.interval(policy,
                                                                                    "concept")
            for i, count in enumerate(self.counts):
                rows.append({
                    "policy": policy, "count": count, "fraction": float(self.fractions[i]),
                    "task_mean": float(t_mean[i]), "task_low": float(t_low[i]),
                    "task_high": float(t_high[i]), "concept_mean": float(c_mean[i]),
                    "concept_low": float(c_low[i]), "concept_high": float(c_high[i]),
                    "n_runs": self.n_runs})
        return rows

    def to_csv(self, path: str | Path) -> Path:
        """Write :meth:`rows` as CSV (atomically)."""
        import csv

        rows = self.rows()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return write_text_atomic(path, buffer.getvalue())

    def plot(self, title: str = "", references: Mapping[str, float] | None = None) -> Any:
        """A matplotlib figure: task and concept accuracy against the number of concepts
        intervened on, one line per policy with its interval shaded; ``references``
        (``{label: task accuracy}``, e.g. a black box) are drawn as dashed lines."""
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for ax, which, ylabel in ((axes[0], "task", "task accuracy"),
                                  (axes[1], "concept", "concept accuracy")):
            for policy in self.policies:
                mean = self.mean(policy, which)
                low, high = self.interval(policy, which)
                line = ax.plot(self.counts, mean, marker="o", markersize=3,
                               label=f"{policy} (AUC {self.auc(policy, which):.3f})")[0]
                ax.fill_between(self.counts, low, high, color=line.get_color(), alpha=0.15)
            if which == "task":
                for name, value in (references or {}).items():
                    ax.axhline(value, color="gray", linestyle="--", linewidth=1,
                               label=f"{name} ({value:.3f})")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("concepts intervened on per sample")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        return fig

    def add_to_report(self, report: Any, title: str, text: str = "",
                      references: Mapping[str, float] | None = None) -> Any:
        """Add a section to a :class:`latentsurgeon.report.html.HtmlReport`: a heading, the
        summary table and the figure (``references`` as in :meth:`plot`). Returns the report."""
        report.heading(title)
        if text:
            report.paragraph(text)
        rows = [[policy, s["task_none"], s["task_at_25"], s["task_at_50"], s["task_all"],
                 s["task_auc"], s["concept_auc"]]
                for policy, s in self.summary()["policies"].items()]
        report.table(["policy", "no intervention", "25 % intervened", "50 % intervened",
                      "all intervened", "task AUC", "concept AUC"], rows)
        caption = f"Mean over {self.n_runs} run(s), {self.confidence:.0%} t-intervals shaded."
        report.figure(self.plot(references=references), caption,
                      alt=f"intervention curves: {title}")
        return report


Triple = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

_CONSTRAINTS = {
    "layer_output": Options(["logits", "probs"]),
    "batch_size": Interval(int, 1, None),
    "seed": Interval(int, 0, None),
    "confidence": Interval(float, 0, 1, closed="neither"),
}


def _as_triple(data: Any, what: str) -> Triple:
    if not isinstance(data, (tuple, list)) or len(data) != 3:
        raise InvalidParameterError(
            f"{what} must be (inputs, labels, concepts) such as a ConceptSplit; got "
            f"{type(data).__name__}.")
    x, y, c = (torch.as_tensor(t) for t in data)
    if x.dim() == 0 or len(x) == 0:
        raise InvalidParameterError(
            f"{what} must hold at least one sample (inputs (N, ...) with N >= 1); got inputs of "
            f"shape {tuple(x.shape)}.")
    if not (len(x) == len(y) == len(c)):
        raise ShapeMismatchError(f"{what}: {len(x)} inputs, {len(y)} labels, {len(c)} concept rows.")
    if c.dim() != 2 or c.shape[1] == 0:
        raise ShapeMismatchError(
            f"{what}: concepts must be (N, K) with K >= 1; got {tuple(c.shape)}.")
    check_finite(c, f"{what}'s concepts")
    return x, y.reshape(-1).long(), c.float()


def _policies(policies: Any, run_seed: int, layer_output: str) -> dict[str, Callable]:
    if policies is None:
        policies = POLICIES
    if isinstance(policies, str) or not isinstance(policies, (Mapping, Sequence)) \
            or len(policies) == 0:
        # a string would be read letter by letter; no policy would give curves of nothing
        raise InvalidParameterError(
            f"policies must be a non-empty list of names from {', '.join(POLICIES)} or a "
            f"non-empty {{name: policy}} dict; got {policies!r}.")
    if isinstance(policies, Mapping):
        built = dict(policies)
        for policy in built.values():
            if isinstance(policy, RandomPolicy):
                policy.reset()
        return built
    made: dict[str, Callable] = {}
    for name in policies:
        if name not in POLICIES:
            raise InvalidParameterError(
                f"Unknown policy {name!r}; use {', '.join(POLICIES)} or pass {{name: policy}}.")
        made[name] = {"random": lambda: RandomPolicy(seed=run_seed),
                      "uncertainty": lambda: UncertaintyPolicy(layer_output),
                      "gradient": GradientPolicy, "uniform": UniformPolicy}[name]()
    return made


def _warn_repeated_runs(runs: Sequence[nn.Module], sets: Sequence[Any]) -> None:
    """Warn when two runs are the same weights on the same data: their curves are identical, so
    the interval counts one run twice and is too narrow (width 0 for two copies of one)."""
    from latentsurgeon.activations import model_fingerprint

    seen: dict[tuple[str, int], int] = {}
    for i, (model, data) in enumerate(zip(runs, sets, strict=True)):
        try:
            key = (model_fingerprint(model), id(data[0]))
        except Exception:  # noqa: BLE001 - a model that cannot be read is refused later, named
            return
        if key in seen:
            warnings.warn(
                f"intervention_curve(): runs {seen[key]} and {i} are the same weights on the same "
                "data, so the curves count one run twice and the interval is too narrow; pass "
                "models trained with different seeds.", UserWarning, stacklevel=3)
            return
        seen[key] = i


def intervention_curve(models: nn.Module | Sequence[nn.Module], data: Any, *,
                       layer: str = "concepts", policies: Sequence[str] | Mapping[str, Any] | None
                       = None, build_context: Callable | None = None,
                       layer_output: str = "logits", head: str | int | None = "logits",
                       batch_size: int = 512, seed: int = 0, confidence: float = 0.95,
                       progress: bool = True) -> InterventionCurves:
    """Intervention curves of one or several models (runs) with ground-truth interventions.

    Args:
        models: a model, or one model per run (e.g. trained with different seeds).
        data: test data ``(inputs, labels, concepts)`` (a :class:`~latentsurgeon.data.
            ConceptSplit`), or one such triple per model.
        layer: the concept layer (its output ``(N, K)`` is replaced).
        policies: names from :data:`POLICIES` (default: all four) or ``{name: policy}``.
            ``"random"`` is a :class:`RandomPolicy` seeded with ``seed + run``; a random policy
            is reset before each count, so every sample keeps one random order and the concepts
            replaced at ``k`` are among those replaced at ``k + 1``.
        build_context: for :class:`GradientPolicy`; default: each model's
            ``gradient_context()`` (the latentsurgeon concept models have one).
        layer_output: what the concept layer outputs: ``"logits"`` (the 0/1 ground truth is
            converted with ``space="probs"``; a concept counts as predicted present when its
            logit is > 0) or ``"probs"`` (ground truth written as it is; present when > 0.5).
        head: where the task logits are in the model's output (``select_logits``).
        batch_size: samples per forward pass.
        seed: seeds the random policy (``seed + run``).
        confidence: level of the t-intervals over runs.
        progress: tqdm bar over runs and policies.

    Returns:
        :class:`InterventionCurves`. Models are left as they were (hooks, modes, flags).

    Raises:
        InvalidParameterError: a GradientPolicy without a way to compute gradients, an unknown
            policy name, no policies, mismatching numbers of models and data sets, data
            without samples.
        ShapeMismatchError: concepts that do not match the layer's output (checked on one
            sample before any curve is computed), no concepts (``K = 0``).
    """
    validate_params({"layer_output": layer_output, "batch_size": batch_size, "seed": seed,
                     "confidence": confidence}, _CONSTRAINTS, owner="intervention_curve()")
    runs = [models] if isinstance(models, nn.Module) else list(models)
    if not runs:
        raise InvalidParameterError("intervention_curve() needs at least one model.")
    if isinstance(data, (tuple, list)) and data and all(isinstance(d, (tuple, list))
                                                        for d in data):
        if len(data) != len(runs):
            raise InvalidParameterError(
                f"intervention_curve(): {len(data)} data sets for {len(runs)} models; give one "
                "(inputs, labels, concepts) triple for all, or one per model.")
        names_of_sets = [f"data[{i}]" for i in range(len(data))]
        sets = [_as_triple(d, what) for d, what in zip(data, names_of_sets, strict=True)]
    else:
        names_of_sets = ["data"] * len(runs)
        sets = [_as_triple(data, "data")] * len(runs)
    _warn_repeated_runs(runs, sets)
    n_concepts = sets[0][2].shape[1]
    if any(s[2].shape[1] != n_concepts for s in sets):
        raise ShapeMismatchError("Every data set must have the same number of concepts.")
    counts = list(range(n_concepts + 1))
    space = "probs" if layer_output == "logits" else "output"
    threshold = 0.0 if layer_output == "logits" else 0.5
    names = list(_policies(policies, seed, layer_output))
    task = {name: np.zeros((len(runs), len(counts))) for name in names}
    concept = {name: np.zeros((len(runs), len(counts))) for name in names}
    bar = tqdm(total=len(runs) * len(names), desc="intervention curves",
               disable=None if progress else True, leave=False)
    for run, (model, (x, y, c)) in enumerate(zip(runs, sets, strict=True)):
        context = build_context if build_context is not None else (
            model.gradient_context() if hasattr(model, "gradient_context") else None)
        layer = resolve_layer(model, layer)
        layer_module = get_layer(model, layer)
        _check_concept_width(model, layer, x, c, names_of_sets[run])
        for name, policy in _policies(policies, seed + run, layer_output).items():
            if isinstance(policy, GradientPolicy) and context is None:
                raise InvalidParameterError(
                    f"Policy {name!r} is a GradientPolicy but there is no build_context for "
                    f"{type(model).__name__}: pass build_context=task_gradients(...).")
            for k in counts:
                if isinstance(policy, RandomPolicy):
                    # the same random order of each sample at every k: nested interventions
                    policy.reset()
                acc_task, acc_concept = _evaluate(
                    model, layer, layer_module, (x, y, c), policy, context, k, space,
                    threshold, head, batch_size)
                task[name][run, k] = acc_task
                concept[name][run, k] = acc_concept
            bar.update()
    bar.close()
    return InterventionCurves(counts, n_concepts, task, concept, confidence,
                              meta={"layer": layer, "layer_output": layer_output})


def _check_concept_width(model: nn.Module, layer: str, inputs: torch.Tensor,
                         concepts: torch.Tensor, what: str) -> None:
    """The data's concepts ``(N, K)`` must match the concept layer's output ``(N, K)``: one
    sample through the model, stopped after the layer, before any curve is computed."""
    with torch.no_grad():
        output = ModelAccess(model, head=None).forward_to(inputs[:1], layer)
    if output.dim() != 2 or output.shape[1] != concepts.shape[1]:
        raise ShapeMismatchError(
            f"{what}: the concepts must have one column per output of the concept layer "
            f"{layer!r}, which outputs (N, K) = (1, {output.shape[1] if output.dim() == 2 else '?'})"
            f" for one sample (shape {tuple(output.shape)}); got concepts of shape "
            f"{tuple(concepts.shape)}.")


def _evaluate(model: nn.Module, layer: str, layer_module: nn.Module, data: Triple,
              policy: Callable, context: Callable | None, k: int, space: str, threshold: float,
              head: str | int | None, batch_size: int) -> tuple[float, float]:
    """Task and concept accuracy with ``k`` concepts per sample replaced by ground truth."""
    strategy = GroundTruthIntervention(space=space)
    wrapper = InterventionModule(layer_module, strategy, policy, build_context=context, k=k)
    device = model_device(model)
    seen, task_hits, concept_hits = 0, 0.0, 0.0
    recorded: list[torch.Tensor] = []

    def observe(name: str, module: nn.Module, inputs: tuple, output: Any) -> None:
        recorded.append(primary_tensor(output).detach())

    with _attached(model, layer, wrapper), HookGroup() as observer:
        observer.forward(model, layer, observe)  # after the intervention: sees its result
        for xb, yb, cb in iter_batches(data, batch_size):
            cb = to_device(cb, device)
            strategy.ground_truth = cb
            recorded.clear()
            n = len(yb)
            task_hits += accuracy(model, (xb, yb), batch_size=n, head=head) * n
            if len(recorded) != 1 or tuple(recorded[0].shape) != tuple(cb.shape):
                raise ShapeMismatchError(
                    f"The concept layer {layer!r} must run once per forward pass and output "
                    f"(N, K) = {tuple(cb.shape)}; it ran {len(recorded)} time(s)"
                    + (f" with shape {tuple(recorded[0].shape)}." if recorded else "."))
            predicted = (recorded[0] > threshold).float()
            concept_hits += float((predicted == (cb > 0.5).float()).float().mean()) * n
            seen += n
    return task_hits / seen, concept_hits / seen
