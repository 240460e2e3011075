"""Shortcut candidates without labels, one score across classes, and the way from a candidate to
artifact labels, a CAV and masks.

**Proposals.** For every class, SpRAy clusters the training samples' input relevance and their
concept relevance at ``layer`` (each into the eigengap's number of clusters in
``cluster_range``, and into two on the same embedding); every cluster of at least ``min_members`` samples is a
proposal.

**The score** (the same formula for every class and layer, in ``[0, 1]``). Let ``H`` be each
sample's absolute input relevance normalised to sum 1, and ``S`` the ``region_size`` input
elements where the members' mean ``H`` exceeds the rest of the class's the most (where the
members' decision differs). A planted shortcut is *one pattern*: on ``S`` the members' inputs
agree. ``score`` is the share of members whose inputs, on the elements of ``S`` where the
members' median input is at least ``ink`` (at least 3 of them), lie within ``tolerance`` of that
median; it is 0 when fewer than 3 elements of ``S`` carry ink. Natural sub-strategies of a
class (a serif, a slant) vary from sample to sample and score low; the parts reported with it
are ``relevance_share`` (the members' share of relevance on ``S`` minus the rest's) and the
size. A candidate whose score reaches ``threshold`` (0.5, :data:`THRESHOLD`) is *flagged*.

Measured on the bundled decoy digits (``docs/discover.md``): on models trained on clean digits
the top score stayed at 0.12-0.21 (3 seeds). The score needs an artifact that is pasted
identically (a watermark, a tag); an artifact that varies in value from sample to sample (a
ruler photographed at different angles) is not what it detects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

from latentsurgeon._validation import Interval, Options, check_finite, validate_params
from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.activations.batching import as_samples, index_batches, to_tensor
from latentsurgeon.activations.read import layer_outputs
from latentsurgeon.concepts.cav import CAV
from latentsurgeon.discover.relevance import RELEVANCE_METHODS, relevance
from latentsurgeon.discover.spray import SpRAy, normalised_vectors
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError
from latentsurgeon.hooks import preserve_model_state

__all__ = ["THRESHOLD", "Candidate", "Refinement", "discover_shortcuts", "mask_iou"]

#: The score at which a candidate is flagged (see the module doc).
THRESHOLD = 0.5


@dataclass(frozen=True)
class Refinement:
    """What :meth:`Candidate.refine` returns.

    Attributes:
        artifact_labels: ``(N,)`` int64 0/1 over every sample of the data (all classes).
        scores: ``(N,)`` float64 projections on the refined CAV (higher = more artifact).
        cav: the refined :class:`~latentsurgeon.concepts.CAV` at the candidate's layer.
        auroc, ap: of ``scores`` against the ground truth, when it was given (else None).
    """

    artifact_labels: torch.Tensor
    scores: torch.Tensor
    cav: CAV
    auroc: float | None = None
    ap: float | None = None


@dataclass
class Candidate:
    """One suspected shortcut: a group of samples of one class the model decides on alike.

    Attributes:
        class_label: the class.
        members: ``(M,)`` int64 indices into the data.
        score: the score in ``[0, 1]`` (module doc); ``parts`` holds its parts.
        parts: ``{"agreement", "relevance_share", "size", "source"}``.
        prototypes: ``(P,)`` int64 indices of the members nearest their mean concept relevance.
        heatmap: the members' mean input relevance, of the input's per-sample shape.
        region: bool, of the input's per-sample shape: the elements ``S`` of the score.
        channels: ``(C',)`` int64 channels at the layer whose relevance rises most in the
            members, strongest first.
        flagged: ``score >= THRESHOLD``.
    """

    class_label: int
    members: torch.Tensor
    score: float
    parts: dict[str, Any]
    prototypes: torch.Tensor
    heatmap: torch.Tensor
    region: torch.Tensor
    channels: torch.Tensor
    flagged: bool
    _context: _Context = field(repr=False)

    def __repr__(self) -> str:
        return (f"Candidate(class_label={self.class_label}, members={len(self.members)}, "
                f"score={self.score:.3f}, flagged={self.flagged})")

    def artifact_labels(self) -> torch.Tensor:
        """``(N,)`` int64 0/1 over the data: 1 for the members (the artifact labels every CAV
        and correction takes)."""
        flags = torch.zeros(self._context.n, dtype=torch.long)
        flags[self.members] = 1
        return flags

    def refine(self, *, artifact_labels: Any = None, iterations: int = 2,
               method: str = "mass_mean") -> Refinement:
        """Fit a CAV at the layer on the members vs the rest of their class, score every sample
        of every class (the artifact may sit in other classes too), relabel by the CAV's
        threshold and refit on all samples (``iterations`` fits in all).

        Args:
            artifact_labels: ground truth ``(N,)`` 0/1, only to report ``auroc`` and ``ap``.
            iterations: number of CAV fits (>= 1).
            method: the CAV's method.

        Raises:
            InvalidParameterError: ``iterations`` < 1, ground truth of the wrong length or
                without both values.
        """
        validate_params({"iterations": iterations}, {"iterations": Interval(int, 1, None)},
                        owner="Candidate.refine()")
        truth = _truth(artifact_labels, self._context.n, "artifact_labels")
        acts = self._context.activations()
        in_class = torch.nonzero(self._context.labels == self.class_label).flatten()
        flags = self.artifact_labels()
        cav = CAV(method, "flatten", seed=0).fit(acts[in_class], flags[in_class])
        scores = cav.project(acts).double()
        for _ in range(iterations - 1):
            relabelled = (scores > cav.threshold_).long()
            if relabelled.sum() < 2 or (1 - relabelled).sum() < 2:
                break
            cav = CAV(method, "flatten", seed=0).fit(acts, relabelled)
            scores = cav.project(acts).double()
        labels = (scores > cav.threshold_).long()
        auroc = ap = None
        if truth is not None:
            auroc = float(roc_auc_score(truth.numpy(), scores.numpy()))
            ap = float(average_precision_score(truth.numpy(), scores.numpy()))
        return Refinement(labels, scores, cav, auroc, ap)

    def masks(self, *, refinement: Refinement | None = None, fraction: float = 0.5,
              batch_size: int = 64) -> torch.Tensor:
        """Binary per-sample masks of where the artifact is: the input x gradient of each
        sample's projection on the (refined) CAV, thresholded at ``fraction`` of its maximum;
        all False for samples not labelled as carrying the artifact.

        Returns:
            ``(N, *input_shape)`` bool.
        """
        validate_params({"fraction": fraction, "batch_size": batch_size},
                        {"fraction": Interval(float, 0, 1, closed="neither"),
                         "batch_size": Interval(int, 1, None)}, owner="Candidate.masks()")
        refinement = refinement or self.refine()
        ctx = self._context
        access = ModelAccess(ctx.model, [ctx.layer], head=ctx.head)
        out = torch.zeros(ctx.inputs.shape, dtype=torch.bool)
        flagged = torch.nonzero(refinement.artifact_labels).flatten()
        cav = refinement.cav
        with preserve_model_state(ctx.model), torch.enable_grad():
            ctx.model.eval()
            for rows in index_batches(len(flagged), batch_size):
                idx = flagged[rows]
                x = access.prepare(ctx.inputs[idx]).detach().requires_grad_(True)
                acts = access.forward_to(x, ctx.layer)
                proj = cav.project(acts.to(cav.direction_.dtype)).sum()
                (grad,) = torch.autograd.grad(proj, x)
                heat = check_finite((x.detach() * grad).abs(), "Candidate.masks(): heatmaps")
                peak = heat.flatten(1).max(1).values.clamp_min(1e-30)
                view = peak.reshape(-1, *([1] * (heat.dim() - 1)))
                out[idx] = (heat >= fraction * view).cpu()
        return out


def mask_iou(masks: Any, true_masks: Any) -> float:
    """Mean intersection over union of predicted and true masks over the samples whose true mask
    is not empty (a channel dimension of size 1 is squeezed on either side).

    Raises:
        ShapeMismatchError: the shapes differ; InvalidParameterError: every true mask is empty.
    """
    pred = to_tensor(masks, "masks").bool()
    true = to_tensor(true_masks, "true_masks").bool()
    if pred.dim() == true.dim() + 1 and pred.shape[1] == 1:
        pred = pred[:, 0]
    if true.dim() == pred.dim() + 1 and true.shape[1] == 1:
        true = true[:, 0]
    if pred.shape != true.shape:
        raise ShapeMismatchError(
            f"mask_iou(): masks {tuple(pred.shape)} and true_masks {tuple(true.shape)} differ.")
    pred, true = pred.flatten(1), true.flatten(1)
    has = true.any(1)
    if not bool(has.any()):
        raise InvalidParameterError("mask_iou(): every true mask is empty; nothing to compare.")
    inter = (pred & true).sum(1).double()
    union = (pred | true).sum(1).double()
    return float((inter[has] / union[has]).mean())


def _truth(value: Any, n: int, name: str) -> torch.Tensor | None:
    if value is None:
        return None
    truth = to_tensor(value, name).reshape(-1).long()
    if len(truth) != n:
        raise ShapeMismatchError(f"{name} has {len(truth)} entries for {n} samples.")
    if set(truth.unique().tolist()) != {0, 1}:
        raise InvalidParameterError(
            f"{name} must hold both 0 and 1 (flags); got values {sorted(truth.unique().tolist())}.")
    return truth


@dataclass
class _Context:
    """What a candidate's refinement and masks need: the model, the layer, the data."""

    model: nn.Module
    layer: str
    head: str | int | None
    inputs: torch.Tensor
    labels: torch.Tensor
    batch_size: int
    _acts: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return len(self.labels)

    def activations(self) -> torch.Tensor:
        if self._acts is None:
            self._acts = layer_outputs(self.model, [self.layer], self.inputs,
                                       batch_size=self.batch_size, progress=False)[self.layer]
            self._acts = self._acts.detach().cpu().double()
        return self._acts


def _score(x: torch.Tensor, heat: torch.Tensor, members: torch.Tensor, region_size: int,
           ink: float, tolerance: float) -> tuple[float, float, torch.Tensor]:
    """``(agreement, relevance_share, region)`` of one proposal (module doc); ``x`` and
    ``heat`` are the class's ``(n, D)`` inputs and normalised heatmaps, ``members`` ``(n,)``
    bool."""
    diff = heat[members].mean(0) - heat[~members].mean(0)
    top = torch.argsort(diff, descending=True)[:region_size]
    share = float(heat[members][:, top].sum(1).mean() - heat[~members][:, top].sum(1).mean())
    values = x[members][:, top]
    median = values.median(0).values
    inked = median >= ink
    agreement = 0.0
    if int(inked.sum()) >= 3:
        close = (values[:, inked] - median[inked]).abs().max(1).values <= tolerance
        agreement = float(close.double().mean())
    region = torch.zeros(x.shape[1], dtype=torch.bool)
    region[top] = True
    return agreement, share, region


def discover_shortcuts(
    model: nn.Module,
    data: Any,
    *,
    layer: str,
    labels: Any = None,
    classes: Any = None,
    method: str = "input_x_gradient",
    n_neighbors: int = 10,
    cluster_range: tuple[int, int] = (2, 8),
    min_members: int = 5,
    region_size: int = 9,
    ink: float = 0.25,
    tolerance: float = 0.05,
    n_prototypes: int = 8,
    head: str | int | None = "logits",
    batch_size: int = 64,
    seed: int | None = 0,
    progress: bool = True,
) -> list[Candidate]:
    """Shortcut candidates of ``model`` on its training ``data``, best first (module doc).

    Args:
        model: a classifier (run in eval mode; its state is restored).
        data: the training samples with labels (a split, ``(inputs, labels)``, ...); without
            labels the predicted classes are used.
        layer: the layer of concept relevance, refinement and masks.
        labels: ``(N,)`` class labels overriding the data's.
        classes: the classes to search (default: all that occur).
        method: the input relevance (see :func:`~latentsurgeon.discover.relevance`).
        n_neighbors, cluster_range: SpRAy's.
        min_members: the smallest proposal kept.
        region_size: the number of input elements ``S`` of the score.
        ink, tolerance: the score's input levels (module doc; inputs in ``[0, 1]``).
        n_prototypes: prototypes per candidate.
        head, batch_size, seed, progress: as elsewhere.

    Returns:
        The candidates sorted by ``score`` (then ``relevance_share``), highest first;
        ``candidate.flagged`` marks those at or above :data:`THRESHOLD`.

    Raises:
        InvalidParameterError: a bad option; a class in ``classes`` with no sample.
        NonFiniteError: NaN or Inf in the data or the relevance.
    """
    validate_params(
        {"method": method, "n_neighbors": n_neighbors, "min_members": min_members,
         "region_size": region_size, "ink": ink, "tolerance": tolerance,
         "n_prototypes": n_prototypes, "batch_size": batch_size},
        {"method": Options(RELEVANCE_METHODS), "n_neighbors": Interval(int, 2, None),
         "min_members": Interval(int, 2, None), "region_size": Interval(int, 3, None),
         "ink": Interval(float, 0, None), "tolerance": Interval(float, 0, None),
         "n_prototypes": Interval(int, 1, None), "batch_size": Interval(int, 1, None)},
        owner="discover_shortcuts()")
    SpRAy(n_neighbors, cluster_range, seed=seed)._validate_params()
    samples = as_samples(data, labels, what="data")
    inputs = check_finite(to_tensor(samples.images, "data").float(), "discover_shortcuts(): data")
    rel = relevance(model, (inputs, samples.labels) if samples.labels is not None else inputs,
                    layer=layer, method=method, head=head, batch_size=batch_size,
                    progress=progress)
    y = rel.target
    wanted = sorted(set(y.tolist())) if classes is None else _classes(classes, y)
    ctx = _Context(model, rel.layer, head, inputs, y, batch_size)
    flat_x = inputs.reshape(len(inputs), -1)
    heat_all = rel.input_relevance.abs().reshape(len(inputs), -1).double()
    heat_all = heat_all / heat_all.sum(1, keepdim=True).clamp_min(1e-30)
    found: list[Candidate] = []
    for k in wanted:
        idx = torch.nonzero(y == k).flatten()
        if len(idx) < 2 * min_members:
            continue
        proposals: list[tuple[str, torch.Tensor]] = []
        for source, vectors in (("inputs", rel.input_relevance[idx]), ("concepts", rel.concepts[idx])):
            spray = SpRAy(n_neighbors, cluster_range, seed=seed).fit(vectors)
            splits = [spray.labels_] + ([spray.cluster(2)] if spray.n_clusters_ != 2 else [])
            for labels_of in splits:
                for cluster in labels_of.unique().tolist():
                    members = labels_of == cluster
                    if min_members <= int(members.sum()) <= len(idx) - min_members:
                        proposals.append((source, members))
        found.extend(_candidates(k, idx, proposals, flat_x[idx], heat_all[idx], rel, ctx,
                                 region_size, ink, tolerance, n_prototypes))
    found.sort(key=lambda c: (-c.score, -c.parts["relevance_share"], c.class_label))
    return _distinct(found)


def _classes(classes: Any, y: torch.Tensor) -> list[int]:
    values = [classes] if isinstance(classes, int) else list(classes)
    present = set(y.tolist())
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InvalidParameterError(
                f"discover_shortcuts(): classes must be ints; got {value!r}.")
        if int(value) not in present:
            raise InvalidParameterError(
                f"discover_shortcuts(): classes holds {int(value)}, which no sample has; the "
                f"data's classes are {sorted(present)}.")
    return sorted({int(v) for v in values})


def _candidates(k: int, idx: torch.Tensor, proposals: list[tuple[str, torch.Tensor]],
                x: torch.Tensor, heat: torch.Tensor, rel: Any, ctx: _Context, region_size: int,
                ink: float, tolerance: float, n_prototypes: int) -> list[Candidate]:
    shape = tuple(ctx.inputs.shape[1:])
    concepts = torch.from_numpy(normalised_vectors(rel.concepts[idx]))
    out = []
    for source, members in proposals:
        agreement, share, region = _score(x, heat, members, min(region_size, x.shape[1]),
                                          ink, tolerance)
        inside = concepts[members]
        near = torch.argsort((inside - inside.mean(0)).norm(dim=1), stable=True)[:n_prototypes]
        lift = rel.concepts[idx][members].mean(0) - rel.concepts[idx][~members].mean(0)
        out.append(Candidate(
            class_label=int(k), members=idx[members], score=agreement,
            parts={"agreement": agreement, "relevance_share": share,
                   "size": int(members.sum()), "source": source},
            prototypes=idx[members][near], heatmap=rel.input_relevance[idx][members].mean(0),
            region=region.reshape(shape), channels=torch.argsort(lift, descending=True)[:5],
            flagged=agreement >= THRESHOLD, _context=ctx))
    return out


def _distinct(candidates: list[Candidate], overlap: float = 0.8) -> list[Candidate]:
    """Drop a candidate whose members overlap an earlier (better) one's of the same class by
    more than ``overlap`` (Jaccard)."""
    kept: list[Candidate] = []
    for cand in candidates:
        mine = set(cand.members.tolist())
        if not any(c.class_label == cand.class_label
                   and len(mine & set(c.members.tolist()))
                   / max(1, len(mine | set(c.members.tolist()))) > overlap for c in kept):
            kept.append(cand)
    return kept
