"""What every correction shares: the estimator contract, the artifact direction, attach/export."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from latentsurgeon._estimator import Estimator
from latentsurgeon.activations import capture
from latentsurgeon.activations.batching import (
    Samples,
    as_samples,
    index_batches,
    model_device,
    to_tensor,
)
from latentsurgeon.concepts import CAV
from latentsurgeon.correct.modules import copy_without_hooks
from latentsurgeon.errors import LatentSurgeonError, ShapeMismatchError
from latentsurgeon.hooks import HookGroup, get_layer, preserve_model_state

logger = logging.getLogger(__name__)

CAV_SAMPLES = ("artifact_classes", "all")


def training_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """Where a correction trains: ``device``, or the model's device when None. The model itself
    is moved there only for the training and back afterwards (by the training loop)."""
    return model_device(model) if device is None else torch.device(device)


def layer_activations(model: nn.Module, layer: str, images: torch.Tensor, *, batch_size: int,
                      device: torch.device, progress: bool = False) -> torch.Tensor:
    """Output of ``layer`` for every image, in eval mode without gradients: ``(N, ...)`` on CPU."""
    device = model_device(model)  # an analysis pass: where the model is
    parts = []
    with preserve_model_state(model), torch.no_grad(), \
            capture(model, layer, copy=True) as cap:
        model.eval()
        batches = list(index_batches(len(images), batch_size))
        for idx in tqdm(batches, desc=f"activations at {layer}", leave=False,
                        disable=True if not progress else None):
            model(images[idx].to(device))
            parts.append(cap[layer].cpu())  # one batch on the device at a time
    return torch.cat(parts)


class Correction(Estimator):
    """Base of the corrections: ``fit`` returns self, ``attach``/``applied`` put the correction on
    a model (hook-based corrections) and ``export`` returns a corrected, hook-free copy.

    Corrections that fine-tune weights (A-ClArC, RR-ClArC, RRR) change the model in ``fit``; for
    them ``attach`` returns an empty :class:`HookGroup` and ``applied`` does nothing, so code can
    treat every correction alike.
    """

    def attach(self, model: nn.Module) -> HookGroup:
        """Register the correction on ``model``; returns the removable handle group."""
        self._check_fitted()
        return HookGroup()

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """``with correction.applied(model): ...`` runs the model corrected inside the block."""
        with self.attach(model):
            yield model

    def export(self, model: nn.Module) -> nn.Module:
        """A deep copy of ``model`` (eval mode, no hooks) that carries the correction."""
        self._check_fitted()
        return copy_without_hooks(model)


class ClarcCorrection(Correction):
    """Shared by the ClArC family: the artifact direction at one layer, from a CAV or fitted here.

    Subclasses define ``__init__`` (with at least ``layer``, ``cav``, ``cav_method``, ``pooling``,
    ``cav_samples``, ``batch_size``, ``device``, ``progress``, ``seed``).
    """

    layer: str
    cav: Any
    cav_method: str
    pooling: str
    cav_samples: str | int
    batch_size: int
    device: str | torch.device | None
    progress: bool

    def save(self, path: str | Path) -> None:
        """Save parameters and learned state. A CAV given to the constructor is stored through
        its vectors (``direction_``, ``mean_clean_``, ``mean_concept_``), not as an object, so
        the loaded correction has ``cav=None`` and the same learned state."""
        cav, self.cav = self.cav, None
        try:
            super().save(path)
        finally:
            self.cav = cav

    # -- the artifact direction ------------------------------------------------------------------
    def _sample_mask(self, samples: Samples | None, labels: Any, artifact: torch.Tensor
                     ) -> torch.Tensor | None:
        """Which samples the CAV is fitted on (see ``cav_samples``)."""
        spec = self.cav_samples
        if isinstance(spec, str) and spec not in CAV_SAMPLES:
            raise LatentSurgeonError(
                f"cav_samples must be one of {CAV_SAMPLES} or a class index, got {spec!r}.")
        if spec == "all":
            return None
        y = to_tensor(labels, "labels").reshape(-1).long() if labels is not None else (
            samples.labels if samples is not None else None)
        if y is None:
            if isinstance(spec, str):
                logger.info("no class labels given: the CAV is fitted on all samples")
                return None
            raise LatentSurgeonError(
                f"cav_samples={spec} needs class labels; pass data with labels or labels=...")
        if len(y) != len(artifact):
            raise ShapeMismatchError(
                f"labels has {len(y)} entries, artifact labels {len(artifact)}.")
        if isinstance(spec, str):  # "artifact_classes": the classes the artifact co-occurs with
            classes = torch.unique(y[artifact])
            return torch.isin(y, classes)
        return y == int(spec)

    def _fit_direction(self, model: nn.Module | None, samples: Samples | None,
                       artifact_labels: Any, labels: Any, activations: Any,
                       device: torch.device | None, *, cav: Any = None) -> None:
        """Set ``direction_``, ``mean_clean_``, ``mean_concept_``, ``pooling_``, ``input_shape_``
        and ``cav_scores_`` from ``cav`` (default: the constructor's), or fit a CAV on the
        layer's activations."""
        cav = self.cav if cav is None else cav
        acts: Any = None
        artifact: torch.Tensor | None = None
        mask: torch.Tensor | None = None
        if cav is None:
            if activations is None:
                if samples is None or model is None:
                    raise LatentSurgeonError(
                        "Without a fitted cav=..., fit() needs the model and data (images with "
                        "artifact labels), or activations=... with artifact_labels=....")
                acts = layer_activations(model, self.layer, samples.images,
                                              batch_size=self.batch_size, device=device,
                                              progress=self.progress)
            else:
                acts = activations
            artifact = artifact_labels if artifact_labels is not None else (
                samples.artifact if samples is not None else None)
            if artifact is None:
                raise LatentSurgeonError(
                    "Fitting the artifact direction needs artifact labels (1 = artifact present): "
                    "pass artifact_labels=... or data with an .artifact attribute.")
            artifact = to_tensor(artifact, "artifact_labels").reshape(-1).bool()
            mask = self._sample_mask(samples, labels, artifact)
            cav = CAV(method=self.cav_method, pooling=self.pooling,
                      seed=getattr(self, "seed", 0) or 0)
            cav.fit(acts, artifact, sample_mask=mask)
            logger.info("%s: CAV at %s fitted on %d samples, held-out accuracy %.3f",
                        type(self).__name__, self.layer,
                        len(artifact) if mask is None else int(mask.sum()),
                        cav.scores_.get("accuracy", float("nan")))
        for attr in ("direction_", "mean_clean_", "mean_concept_"):
            if not isinstance(getattr(cav, attr, None), torch.Tensor):
                raise LatentSurgeonError(
                    f"cav must be a fitted latentsurgeon CAV (with {attr}); call cav.fit(...) "
                    "first.")
        self.direction_ = cav.direction_.detach().float().cpu().clone()
        self.mean_clean_ = cav.mean_clean_.detach().float().cpu().clone()
        self.mean_concept_ = cav.mean_concept_.detach().float().cpu().clone()
        self.pooling_ = str(getattr(cav, "pooling", "flatten"))
        self.input_shape_ = [int(s) for s in getattr(cav, "input_shape_", [])]
        scores = getattr(cav, "scores_", {}) or {}
        self.cav_scores_ = {k: float(v) for k, v in scores.items()
                            if isinstance(v, (int, float, np.floating))}
        if self.pooling_ == "max":
            self._per_position_means(acts, artifact, mask)

    def _per_position_means(self, acts: Any, artifact: torch.Tensor | None,
                            mask: torch.Tensor | None) -> None:
        """A max-pooled direction is applied at every spatial position, so the reference points
        must be means over samples *and positions*: the mean of per-channel maxima would push
        every position up to maximum level and insert the artifact instead of removing it."""
        if acts is None or artifact is None:
            raise LatentSurgeonError(
                "A CAV fitted with pooling='max' is applied at every spatial position and needs "
                "per-position reference means: let fit() fit the CAV from data (or pass "
                "activations= and artifact_labels=), or use a CAV with pooling='mean' or "
                "'flatten'.")
        from latentsurgeon.concepts.cav import _load_activations

        raw = _load_activations(acts, None).float()
        if raw.dim() < 3:
            raise ShapeMismatchError(
                f"pooling='max' needs (N, C, *spatial) activations, got {tuple(raw.shape)}.")
        keep = torch.ones(len(raw), dtype=torch.bool) if mask is None else mask.cpu()
        spatial = tuple(range(2, raw.dim()))
        per_sample = raw.mean(dim=spatial)  # (N, C): spatial means
        self.mean_clean_ = per_sample[keep & ~artifact].mean(0)
        self.mean_concept_ = per_sample[keep & artifact].mean(0)

    def _prepare(self, model: nn.Module | None) -> torch.device | None:
        if model is None:
            return None
        get_layer(model, self.layer)  # one exact layer name, close matches in the error
        return training_device(model, self.device)

    @staticmethod
    def _samples(data: Any, artifact_labels: Any, *, need_labels: bool) -> Samples | None:
        if data is None:
            if need_labels:
                raise LatentSurgeonError("fit() needs training data: (images, labels) or a split.")
            return None
        return as_samples(data, artifact=artifact_labels, need_labels=need_labels)
