"""Activation patching: which layers carry the difference between a clean and a corrupted input?

Run the model on *clean* inputs (where it behaves as wanted) and on *corrupted* inputs (where it
does not), record the activations of the *source* run at the selected layers, then re-run the
*target* inputs with one layer's activation (or a set of layers' activations) replaced, and read a
user metric off the output (e.g. a logit difference). A layer whose clean activation restores the
clean metric in the corrupted run carries the information the corruption destroyed (Vig et al.
2020, "causal mediation analysis"; Meng et al. 2022, "causal tracing").

``patch_fn`` generalises "replace": it receives the target and source activations and returns the
activation to use, so the same loop does interpolation and ablations (:func:`zero_ablation`,
:func:`mean_ablation`, :func:`interpolate`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from latentsurgeon._aliases import moved
from latentsurgeon._validation import check_finite
from latentsurgeon.activations.batching import count_samples
from latentsurgeon.activations.capture import capture
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, ShapeMismatchError
from latentsurgeon.hooks import HookGroup, preserve_model_state, primary_tensor, replace_primary
from latentsurgeon.hooks.resolve import LayerSelector, is_layer_selector, resolve_layers
from latentsurgeon.intervene._common import (
    ForwardFn,
    Positions,
    as_float,
    broadcast_vector,
    check_positions,
    merge_positions,
    run_batches,
)

logger = logging.getLogger(__name__)

PatchFn = Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor]
Metric = Callable[[Any], Any]
DIRECTIONS = ("clean_to_corrupted", "corrupted_to_clean")


# -- ready-made patch functions ------------------------------------------------------------------
def replace(name: str, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """The default patch: use the source run's activation ``(N, ...)`` as is."""
    return source


def zero_ablation(name: str, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Zero ablation: replace the activation ``(N, ...)`` by zeros (the source is ignored)."""
    return torch.zeros_like(target)


def mean_ablation(mean: torch.Tensor | Mapping[str, torch.Tensor]) -> PatchFn:
    """Mean ablation: replace the activation by a fixed mean (the source is ignored).

    Args:
        mean: the mean activation over a reference set, one tensor for every layer or a dict
            ``{layer name: tensor}``. Each may have the per-sample shape (``(C, H, W)``,
            ``(T, D)``), ``(D,)`` for ``(N, D)``/``(N, T, D)`` activations or ``(C,)`` for
            ``(N, C, H, W)`` activations (broadcast over tokens/pixels). Compute it with
            :func:`latentsurgeon.activations.capture`::

                with torch.no_grad(), capture(model, layers, accumulate=True, copy=True) as cap:
                    model(reference)
                means = {name: act.mean(0) for name, act in cap.activations.items()}

    Returns:
        ``patch_fn(name, target, source) -> (N, ...)`` for :func:`patch`.
    """
    if not isinstance(mean, (torch.Tensor, Mapping)):
        raise TypeError(f"mean must be a tensor or a dict of tensors, got {type(mean).__name__}.")

    def mean_patch(name: str, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        if isinstance(mean, Mapping):
            if name not in mean:
                raise LatentSurgeonError(
                    f"mean_ablation has no mean for layer {name!r}; it has means for "
                    f"{sorted(mean)}."
                )
            value = mean[name]
        else:
            value = mean
        value = broadcast_vector(value.to(target.device, target.dtype), target,
                                 f"mean_ablation at layer {name!r}")
        return value.expand_as(target).clone()

    return mean_patch


def interpolate(t: float) -> PatchFn:
    """Interpolate: ``(1 - t) * target + t * source`` (``t=0`` keeps the target run exactly,
    ``t=1`` gives the source activation exactly; ``torch.lerp``)."""
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
        raise LatentSurgeonError(f"interpolate(t) needs a finite number, got {t!r}.")
    weight = float(t)

    def interpolate_patch(name: str, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return torch.lerp(target, source.to(target.dtype), weight)

    return interpolate_patch


# -- result --------------------------------------------------------------------------------------
@dataclass
class PatchingResult:
    """What :func:`patch` measured.

    Attributes:
        layers: row labels in model order: one layer name per row (``per_layer=True``) or a single
            row ``"a + b + ..."`` when all layers were patched together.
        groups: ``{row label: [layer names patched in that run]}``.
        clean: the metric on the clean inputs (mean of the metric's value when it is a tensor).
        corrupted: the metric on the corrupted inputs.
        patched: ``{row label: metric of the patched run}``.
        direction: ``"clean_to_corrupted"`` (clean activations into the corrupted run) or
            ``"corrupted_to_clean"``.
        clean_raw, corrupted_raw, patched_raw: the metric values as returned (e.g. per-sample
            ``(N,)`` tensors), as float64 CPU tensors.
    """

    layers: list[str]
    groups: dict[str, list[str]]
    clean: float
    corrupted: float
    patched: dict[str, float]
    direction: str
    clean_raw: torch.Tensor = field(repr=False)
    corrupted_raw: torch.Tensor = field(repr=False)
    patched_raw: dict[str, torch.Tensor] = field(repr=False)

    @property
    def effect(self) -> dict[str, float]:
        """Normalised effect ``(patched - corrupted) / (clean - corrupted)`` per row.

        1 means the patched run scores like the clean run, 0 like the corrupted run, in either
        direction (``clean_to_corrupted``: share of the clean behaviour the patch restores;
        ``corrupted_to_clean``: 1 minus the share the patch destroys). ``nan`` when the clean and
        corrupted metrics are equal.
        """
        gap = self.clean - self.corrupted
        if gap == 0:
            return {row: math.nan for row in self.layers}
        return {row: (self.patched[row] - self.corrupted) / gap for row in self.layers}

    def records(self) -> list[dict[str, Any]]:
        """One dict per row: ``layer``, ``patched``, ``effect`` (e.g. for ``pandas.DataFrame``)."""
        effect = self.effect
        return [{"layer": row, "patched": self.patched[row], "effect": effect[row]}
                for row in self.layers]

    def table(self, digits: int = 4) -> str:
        """A plain-text table: baselines, then one line per row with patched metric and effect."""
        arrow = "clean -> corrupted" if self.direction == "clean_to_corrupted" else \
            "corrupted -> clean"
        width = max([len("layer"), *(len(row) for row in self.layers)])
        lines = [
            f"activation patching ({arrow}): metric clean {self.clean:.{digits}g}, "
            f"corrupted {self.corrupted:.{digits}g}",
            f"{'layer':<{width}}  {'patched':>12}  {'effect':>10}",
        ]
        for rec in self.records():
            lines.append(f"{rec['layer']:<{width}}  {rec['patched']:>12.{digits}g}  "
                         f"{rec['effect']:>10.{digits}g}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def plot(self, ax: Any = None, *, title: str | None = None) -> Any:
        """Bar chart of the normalised effect per row (dashed lines at 0 = corrupted, 1 = clean).

        Returns:
            The matplotlib ``Axes``.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(self.layers) + 2), 3.5))
        effect = self.effect
        ax.bar(range(len(self.layers)), [effect[row] for row in self.layers], color="tab:blue")
        ax.axhline(0.0, color="gray", linestyle="--", linewidth=1)
        ax.axhline(1.0, color="gray", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(self.layers)))
        ax.set_xticklabels(self.layers, rotation=45, ha="right")
        ax.set_ylabel("normalised effect")
        ax.set_title(title or f"activation patching ({self.direction.replace('_', ' ')})")
        return ax


# -- the patching loop ---------------------------------------------------------------------------
def _combine(values: list[torch.Tensor], sizes: list[int]) -> torch.Tensor:
    """One metric value from per-batch values: a size-weighted mean of scalars, or the
    concatenation of per-sample values."""
    if len(values) == 1:
        return values[0]
    if all(v.dim() == 0 for v in values):
        weights = torch.tensor(sizes, dtype=torch.float64)
        return (torch.stack(values) * weights).sum() / weights.sum()
    if all(v.dim() >= 1 and v.shape[0] == n for v, n in zip(values, sizes, strict=True)):
        return torch.cat(values)
    raise LatentSurgeonError(
        "With batch_size set, the metric is called once per batch and must return a scalar "
        "(averaged over batches, weighted by batch size) or one value per sample (N_batch, ...); "
        f"got shapes {[tuple(v.shape) for v in values]} for batches of {sizes} samples."
    )


def _evaluate(
    model: nn.Module,
    inputs: Any,
    metric: Metric,
    *,
    batch_size: int | None,
    forward_fn: ForwardFn | None,
    device: str | torch.device | None,
    before_batch: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, int]:
    values, sizes = [], []
    for n, _, output in run_batches(model, inputs, batch_size=batch_size, forward_fn=forward_fn,
                                 device=device, before_batch=before_batch):
        values.append(check_finite(as_float(metric(output), "metric"), "the metric's value"))
        sizes.append(n)
    if not sizes:
        raise LatentSurgeonError("The inputs yielded no batch; patching needs at least one sample.")
    return _combine(values, sizes), sum(sizes)


def _row_label(names: list[str]) -> str:
    return " + ".join(names)


@moved(("model", "clean_inputs", "corrupted_inputs", "layers", "metric"),
       is_old=lambda args: len(args) >= 2 and not is_layer_selector(args[1]))
def patch(
    model: nn.Module,
    layers: LayerSelector,
    clean_inputs: Any,
    corrupted_inputs: Any,
    metric: Metric,
    *,
    patch_fn: PatchFn | None = None,
    direction: str = "clean_to_corrupted",
    positions: Positions = None,
    per_layer: bool = True,
    forward_fn: ForwardFn | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> PatchingResult:
    """Patch activations from a source run into a target run, layer by layer, and measure.

    With ``direction="clean_to_corrupted"`` (default, "denoising") the source is the clean run and
    the target the corrupted run: a layer with effect 1 restores the clean behaviour on its own.
    With ``"corrupted_to_clean"`` ("noising") corrupted activations go into the clean run.
    The order is the library's (model, layer, data); the earlier
    ``(model, clean_inputs, corrupted_inputs, layers, metric)`` still works, with a
    ``FutureWarning``.

    Args:
        model: the network (run in eval mode under ``torch.no_grad``; its mode, hooks and
            ``requires_grad`` flags are restored).
        layers: layer selector (names, globs such as ``"transformer.h.*"``, ``re:`` regexes,
            classes). Rows follow the model's module order.
        clean_inputs: ``(N, ...)`` tensor, dict of tensors (``input_ids``/``attention_mask``:
            called as ``model(**inputs)``), Dataset or DataLoader (not shuffled).
        corrupted_inputs: the same kind, paired sample by sample with ``clean_inputs`` (row ``i``
            of one is the counterpart of row ``i`` of the other); a single source sample is
            broadcast to every target sample. Both must give activations of the same shape at
            the patched layers (for text: the same number of tokens).
        metric: ``metric(model_output) -> float | tensor``, e.g. a logit difference. A tensor
            value (per sample) is kept in ``*_raw`` and averaged for the table and the effect.
            With ``batch_size`` it is called per batch (see below).
        patch_fn: ``patch_fn(name, target_activation, source_activation) -> new_activation``, all
            ``(N, ...)`` (the layer's primary tensor; tuples/dicts of transformer blocks are
            rebuilt around it); returning ``None`` means "use the source activation" (as in
            tdhook). Default: the source activation. See :func:`zero_ablation`,
            :func:`mean_ablation`, :func:`interpolate`.
        direction: ``"clean_to_corrupted"`` or ``"corrupted_to_clean"``.
        positions: token positions (dim 1 of ``(N, T, D)`` activations) to patch: an int, a list
            of ints (negative counts from the end), a slice or an index tensor; other positions
            keep the target run's values. ``None`` patches everything.
        per_layer: ``True``: one run per layer, each layer patched alone. ``False``: one run with
            all selected layers patched together (patching a complete cut, e.g. every top-level
            block, with clean activations reproduces the clean output exactly).
        forward_fn: ``forward_fn(model, batch) -> output`` instead of the default
            (``model(**batch)`` for dicts, ``model(batch)`` otherwise).
        batch_size: run in batches of this many samples (tensor/dict inputs). The metric is then
            called per batch; scalar values are averaged weighted by batch size, per-sample
            values ``(N_batch, ...)`` concatenated. ``None``: one batch.
        device: move inputs there (default: the device of the model's parameters).
        progress: show a progress bar over the patched runs (hidden when not on a terminal).

    Returns:
        A :class:`PatchingResult` (``.table()``, ``.plot()``, ``.effect``).

    Raises:
        LayerNotFoundError: a selector matched no layer.
        ShapeMismatchError: source and target activations differ in shape, ``patch_fn`` returned
            a wrong shape, or ``positions`` was used on activations that are not ``(N, T, D)``.
        LatentSurgeonError: a selected layer did not run, or ran more than once per forward.
    """
    if direction not in DIRECTIONS:
        raise InvalidParameterError(f"direction must be one of {DIRECTIONS}, got {direction!r}.")
    names = list(resolve_layers(model, layers))
    fn = patch_fn or replace
    if direction == "clean_to_corrupted":
        source_inputs, target_inputs = clean_inputs, corrupted_inputs
    else:
        source_inputs, target_inputs = corrupted_inputs, clean_inputs
    n_source, n_target = count_samples(source_inputs), count_samples(target_inputs)
    if n_source is not None and n_target is not None and n_source not in (1, n_target):
        raise ShapeMismatchError(
            f"clean and corrupted inputs must be paired sample by sample: expected the same "
            f"number of samples (or a single source sample), got {n_source} source and "
            f"{n_target} target samples."
        )
    run = {"batch_size": batch_size, "forward_fn": forward_fn, "device": device}

    with preserve_model_state(model), torch.no_grad():
        model.eval()  # dropout would make the runs incomparable
        with capture(model, names, accumulate=True, copy=True) as cap:
            source_value, n_src = _evaluate(model, source_inputs, metric, **run)
        sources: dict[str, torch.Tensor] = {}
        for name in names:
            if name not in cap:
                raise LatentSurgeonError(
                    f"Layer {name!r} did not run during the forward pass, so there is nothing to "
                    "patch there; choose layers the model's forward uses."
                )
            sources[name] = cap[name]
            if sources[name].shape[0] != n_src:
                raise LatentSurgeonError(
                    f"Layer {name!r} produced {sources[name].shape[0]} rows for {n_src} samples: "
                    "it runs more than once per forward pass (a shared module), and patching "
                    "needs one activation per sample. Patch a layer that runs once."
                )
        target_value, n_tgt = _evaluate(model, target_inputs, metric, **run)
        if n_src not in (1, n_tgt):
            raise ShapeMismatchError(
                f"clean and corrupted inputs must be paired sample by sample: expected the same "
                f"number of samples, got {n_src} source and {n_tgt} target samples."
            )

        rows = [[name] for name in names] if per_layer else [names]
        span = {"start": 0, "stop": 0}
        patched_raw: dict[str, torch.Tensor] = {}

        def set_span(start: int, stop: int) -> None:
            span["start"], span["stop"] = start, stop

        def patch_hook(name: str, module: nn.Module, inputs: tuple, output: Any) -> Any:
            target = primary_tensor(output)
            source = sources[name]
            if source.shape[0] != 1:
                source = source[span["start"]:span["stop"]]
            if source.shape[1:] != target.shape[1:] or source.shape[0] not in (1, target.shape[0]):
                raise ShapeMismatchError(
                    f"Layer {name!r}: the source run's activation has shape "
                    f"{tuple(source.shape)} for this batch, the target run's "
                    f"{tuple(target.shape)}; expected equal shapes. Clean and corrupted inputs "
                    "must give activations of the same shape (for text: prompts with the same "
                    "number of tokens)."
                )
            check_positions(positions, target, f"Layer {name!r}")
            # A fresh copy: patch_fn or a later in-place op must not alter the recorded source.
            source = source.to(target.device, target.dtype).expand_as(target).clone()
            new = fn(name, target, source)
            if new is None:
                new = source
            if not isinstance(new, torch.Tensor) or new.shape != target.shape:
                got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
                raise ShapeMismatchError(
                    f"patch_fn at layer {name!r} must return a tensor of the activation's shape "
                    f"{tuple(target.shape)}, got {got}."
                )
            return replace_primary(output, merge_positions(target, new, positions))

        bar = tqdm(rows, desc="patching", unit="run", disable=(not progress) or None, leave=False)
        for group_names in bar:
            with HookGroup() as group:
                group.forward(model, group_names, patch_hook, prepend=True)
                value, _ = _evaluate(model, target_inputs, metric, before_batch=set_span, **run)
            patched_raw[_row_label(group_names)] = value
        bar.close()

    clean_raw, corrupted_raw = (source_value, target_value) if direction == "clean_to_corrupted" \
        else (target_value, source_value)
    result = PatchingResult(
        layers=list(patched_raw),
        groups={_row_label(g): list(g) for g in rows},
        clean=float(clean_raw.mean()),
        corrupted=float(corrupted_raw.mean()),
        patched={row: float(v.mean()) for row, v in patched_raw.items()},
        direction=direction,
        clean_raw=clean_raw,
        corrupted_raw=corrupted_raw,
        patched_raw=patched_raw,
    )
    if result.clean == result.corrupted:
        logger.warning("The metric is equal on clean and corrupted inputs (%g); the normalised "
                       "effect is undefined (nan).", result.clean)
    return result
