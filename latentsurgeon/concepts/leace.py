"""LEACE: least-squares concept erasure, as an estimator that also erases inside a running model.

LEACE (Belrose et al. 2023, https://arxiv.org/abs/2306.03819) is the affine map
``x -> x - P (x - mean)`` of smallest mean squared displacement after which no linear classifier
can predict the concept better than a constant ("linear guardedness"). The fitting is done by the
``concept-erasure`` package (:class:`concept_erasure.LeaceFitter`); this module adds the
estimator contract (fit / transform / save / load), the handling of layer shapes, and hooks that
erase a layer's output on the fly.

Two ways to see a layer's activations as samples (``pooling=``):

* ``"flatten"``: one sample per input, ``(N, C, H, W) -> (N, C*H*W)``; the eraser is a
  ``D x D`` map on the flattened vector and :meth:`LeaceEraser.transform` reshapes back.
* ``"channel"``: *channel-wise* erasure. Every position of every input is a sample in channel space:
  ``(N, C, H, W) -> (N*H*W, C)`` (``channel_dim`` names the channel axis; ``-1`` for
  ``(N, T, D)`` token activations). The eraser is ``C x C``, shared by every position, so it also
  applies to inputs of another spatial size. It guarantees that no linear read-out of a *single
  position's* channel vector finds the concept; a classifier over the flattened map may still.

For 2-D activations ``(N, D)`` both modes are the same. ``pooling="none"`` is the deprecated
spelling of ``"channel"`` (elsewhere in the library ``"none"`` means "as is"; a ``FutureWarning``
says so when ``fit`` runs).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import torch
from concept_erasure import LeaceEraser as _PackageEraser
from concept_erasure import LeaceFitter
from torch import nn

from latentsurgeon._estimator import Estimator
from latentsurgeon._validation import Interval, Options, check_finite
from latentsurgeon.activations.store import ActivationStore
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, ShapeMismatchError
from latentsurgeon.hooks import HookGroup, primary_tensor, replace_primary, resolve_layers
from latentsurgeon.hooks.resolve import LayerSelector

logger = logging.getLogger("latentsurgeon")

_POOLINGS = ("flatten", "channel")
_METHODS = ("leace", "orth")


def _labels_array(labels: Any) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        return labels.detach().cpu().numpy()
    return np.asarray(labels)


class LeaceEraser(Estimator):
    """Erase a concept linearly from a layer's activations (LEACE, via ``concept-erasure``).

    Args:
        pooling: ``"flatten"`` (one sample per input) or ``"channel"`` (channel-wise: one
            sample per position; see the module doc). ``"none"``: deprecated for ``"channel"``.
        method: ``"leace"`` (the least-squares optimal eraser) or ``"orth"`` (orthogonal
            projection out of the cross-covariance directions: also erases linearly, but moves
            the activations more when the concept correlates with high-variance nuisance).
        channel_dim: the channel axis of the per-input activation *including* the batch axis
            (``1`` for ``(N, C, H, W)``, ``-1`` for ``(N, T, D)``); used by ``pooling="channel"``.
        affine: subtract the mean before projecting so the mean activation is unchanged.
        shrinkage: shrink the covariance estimate (recommended when samples are few).
        svd_tol: singular values of the whitened cross-covariance below this are dropped.
        constrain_cov_trace: keep the erased covariance's trace at most the original's
            (``concept-erasure``'s default; matters when erasing inside a model).
        batch_size: rows per update when fitting from an :class:`ActivationStore`.

    Learned attributes:
        proj_left_, proj_right_: ``(D, k)`` and ``(k, D)`` float64; the eraser is
            ``x - (x - bias_) @ proj_right_.T @ proj_left_.T``.
        bias_: ``(D,)`` mean activation (zeros when ``affine=False``).
        input_shape_: per-input activation shape seen at fit time.
        n_features_: ``D``, the size of the vectors erased (``C`` for channel-wise erasure).
        classes_: the label values (class labels) or ``[]`` for a given concept matrix.
        n_samples_: number of rows (samples or positions) the statistics came from.

    Raises (in ``fit``):
        InvalidParameterError: a parameter outside what it accepts.
        NonFiniteError: NaN or Inf in the activations or the concept labels.
    """

    _parameter_constraints: ClassVar[dict[str, Any]] = {
        "pooling": Options(_POOLINGS, deprecated=["none"]),
        "method": Options(_METHODS),
        "channel_dim": int,
        "affine": bool,
        "shrinkage": bool,
        "svd_tol": Interval(float, 0, None, closed="left"),
        "constrain_cov_trace": bool,
        "batch_size": Interval(int, 1, None),
    }

    def __init__(
        self,
        pooling: str = "flatten",
        method: str = "leace",
        *,
        channel_dim: int = 1,
        affine: bool = True,
        shrinkage: bool = True,
        svd_tol: float = 0.01,
        constrain_cov_trace: bool = True,
        batch_size: int = 4096,
    ) -> None:
        self.pooling = pooling
        self.method = method
        self.channel_dim = channel_dim
        self.affine = affine
        self.shrinkage = shrinkage
        self.svd_tol = svd_tol
        self.constrain_cov_trace = constrain_cov_trace
        self.batch_size = batch_size

    # -- shapes ----------------------------------------------------------------------------------
    @property
    def _channelwise(self) -> bool:
        return self.pooling in ("channel", "none")

    def _validate(self) -> None:
        if self.pooling in ("max", "mean"):
            raise InvalidParameterError(
                f"LeaceEraser: pooling must be one of 'flatten', 'channel'; got {self.pooling!r}: "
                "an eraser must map activations back to their shape, which 'max'/'mean' pooling "
                "cannot.")
        self._validate_params()
        if self.pooling == "none":
            warnings.warn("LeaceEraser: pooling='none' (channel-wise erasure) is deprecated; use "
                          "pooling='channel' ('none' means 'as is' everywhere else).",
                          FutureWarning, stacklevel=3)

    def _channel_axis(self, ndim: int) -> int:
        axis = self.channel_dim if self.channel_dim >= 0 else ndim + self.channel_dim
        if not 1 <= axis < ndim:
            raise ShapeMismatchError(
                f"channel_dim={self.channel_dim} is not a non-batch axis of {ndim}-D activations.")
        return axis

    def _rows(self, acts: torch.Tensor) -> torch.Tensor:
        """``(N, ...)`` activations -> ``(M, D)`` rows the eraser acts on."""
        if acts.dim() < 2:
            raise ShapeMismatchError(
                f"Activations need a batch axis and features: got shape {tuple(acts.shape)}.")
        if not self._channelwise or acts.dim() == 2:
            return acts.reshape(len(acts), -1)
        axis = self._channel_axis(acts.dim())
        return acts.movedim(axis, -1).reshape(-1, acts.shape[axis])

    def _unrows(self, rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if not self._channelwise or like.dim() == 2:
            return rows.reshape(like.shape)
        axis = self._channel_axis(like.dim())
        moved = like.movedim(axis, -1).shape
        return rows.reshape(moved).movedim(-1, axis)

    def _row_labels(self, z: torch.Tensor, acts_shape: tuple[int, ...]) -> torch.Tensor:
        """Concept matrix per sample ``(N, k)`` -> per row ``(M, k)`` (positions repeat it)."""
        if not self._channelwise or len(acts_shape) == 2:
            return z
        axis = self._channel_axis(len(acts_shape))
        positions = int(np.prod([s for i, s in enumerate(acts_shape) if i not in (0, axis)]))
        return z.repeat_interleave(positions, dim=0)

    def _concept_matrix(self, labels: np.ndarray, n: int,
                        acts_shape: tuple[int, ...]) -> tuple[torch.Tensor, list, bool]:
        """The concept ``z`` LEACE erases: ``(rows, k)`` float64, and whether it is per row.

        ``(N,)`` class labels: one indicator column for two classes, one-hot for more.
        ``(N, k)`` floats: used as given (several or continuous concepts).
        ``(N, *positions)`` with ``pooling="channel"``: a label per position (e.g. a concept mask).
        """
        if labels.shape[:1] != (n,):
            raise ShapeMismatchError(
                f"labels has {labels.shape[0] if labels.ndim else 0} entries but activations "
                f"has {n} samples.")
        if labels.ndim == 1 or (labels.ndim > 1 and self._channelwise
                                and len(acts_shape) > 2 and labels.ndim == len(acts_shape) - 1):
            per_row = labels.ndim > 1
            if per_row:
                axis = self._channel_axis(len(acts_shape))
                spatial = tuple(s for i, s in enumerate(acts_shape) if i != axis)
                if labels.shape != spatial:
                    raise ShapeMismatchError(
                        f"Per-position labels must have shape {spatial}, got {labels.shape}.")
            classes = np.unique(labels)
            if len(classes) < 2:
                raise LatentSurgeonError(
                    "Erasing a concept needs samples of at least two label values; got only "
                    f"{classes.tolist()}.")
            flat = labels.reshape(-1)
            if len(classes) == 2:
                z = (flat == classes[1]).astype(np.float64)[:, None]
            else:
                z = (flat[:, None] == classes[None, :]).astype(np.float64)
            return torch.from_numpy(z), classes.tolist(), per_row
        if labels.ndim == 2:
            return torch.from_numpy(labels.astype(np.float64)), [], False
        raise ShapeMismatchError(
            f"labels must be (N,) class labels or an (N, k) concept matrix, got {labels.shape}.")

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, activations: Any, labels: Any, *, sample_mask: Any = None,
            layer: str | None = None) -> LeaceEraser:
        """Fit the eraser.

        Args:
            activations: ``(N, ...)`` tensor/array, or an :class:`ActivationStore` (read in
                batches of ``batch_size``, so it may be larger than memory; pass ``layer``).
            labels: ``(N,)`` concept labels (binary or several classes), an ``(N, k)`` float
                concept matrix, or, with ``pooling="channel"``, ``(N, *positions)`` labels per
                position.
            sample_mask: ``(N,)`` bool, fit only on these samples.
            layer: the layer the activations come from: the store layer to read when
            ``activations`` is a store (default its only layer), and the layer
            :meth:`attach` erases by default (recorded as ``layer_``).

        Returns:
            self
        """
        self._validate()
        y = check_finite(_labels_array(labels), "labels")
        keep = None
        if sample_mask is not None:
            keep = _labels_array(sample_mask).reshape(-1).astype(bool)
            if len(keep) != len(y):
                raise ShapeMismatchError(
                    f"sample_mask has {len(keep)} entries, labels {len(y)}.")
            y = y[keep]
        batches, shape, n = self._batches(activations, layer, keep)
        z, classes, per_row = self._concept_matrix(y, n, (n, *shape))
        d = int(np.prod(shape)) if not self._channelwise or len(shape) == 1 \
            else shape[self._channel_axis(len(shape) + 1) - 1]
        fitter = LeaceFitter(d, z.shape[1], method=self.method, affine=self.affine,
                             constrain_cov_trace=self.constrain_cov_trace, shrinkage=self.shrinkage,
                             svd_tol=self.svd_tol, dtype=torch.float64)
        rows_seen = 0
        start = 0
        for acts in batches:
            rows = self._rows(check_finite(acts, "activations").double())
            if per_row:
                zb = z[rows_seen:rows_seen + len(rows)]
            else:
                zb = self._row_labels(z[start:start + len(acts)], tuple(acts.shape))
            fitter.update(rows, zb)
            rows_seen += len(rows)
            start += len(acts)
        if rows_seen < 2:
            raise LatentSurgeonError("LEACE needs at least 2 samples.")
        eraser = fitter.eraser
        self.proj_left_ = eraser.proj_left.detach().clone()
        self.proj_right_ = eraser.proj_right.detach().clone()
        self.bias_ = (eraser.bias.detach().clone() if eraser.bias is not None
                      else torch.zeros(d, dtype=torch.float64))
        self.input_shape_ = list(shape)
        self.n_features_ = d
        self.classes_ = classes
        self.n_samples_ = rows_seen
        self.layer_ = layer if layer is not None else (
            activations.layers[0] if isinstance(activations, ActivationStore) else None)
        self._cache: dict[tuple, _PackageEraser] = {}
        logger.debug("LEACE (%s) fitted on %d rows of dimension %d, rank %d", self.method,
                     rows_seen, d, self.proj_left_.shape[1])
        return self

    def _batches(self, activations: Any, layer: str | None,
                 keep: np.ndarray | None) -> tuple[Iterator[torch.Tensor], tuple[int, ...], int]:
        """Activation batches (the masked rows only), the per-input shape and the row count."""
        if isinstance(activations, ActivationStore):
            if layer is None:
                if len(activations.layers) != 1:
                    raise LatentSurgeonError(
                        f"The store holds {len(activations.layers)} layers ({activations.layers}); "
                        "pass layer=... to choose one.")
                layer = activations.layers[0]
            full = activations.shape(layer)
            n_all = full[0]
            if keep is not None and len(keep) != n_all:
                raise ShapeMismatchError(
                    f"sample_mask has {len(keep)} entries, the store {n_all} samples.")
            store, name, size = activations, layer, self.batch_size

            def stream() -> Iterator[torch.Tensor]:
                start = 0
                for batch in store.iter_batches(name, size):
                    part = batch if keep is None else batch[torch.from_numpy(
                        keep[start:start + len(batch)])]
                    start += len(batch)
                    if len(part):
                        yield part

            n = n_all if keep is None else int(keep.sum())
            return stream(), tuple(full[1:]), n
        if isinstance(activations, np.ndarray):
            activations = torch.from_numpy(activations)
        if not isinstance(activations, torch.Tensor):
            raise TypeError("activations must be a tensor, a numpy array or an ActivationStore, "
                            f"got {type(activations).__name__}.")
        acts = activations.detach().cpu()
        if keep is not None:
            if len(keep) != len(acts):
                raise ShapeMismatchError(
                    f"sample_mask has {len(keep)} entries, activations {len(acts)} samples.")
            acts = acts[torch.from_numpy(keep)]
        if acts.dim() < 2:
            raise ShapeMismatchError(
                f"Activations need a batch axis and features: got shape {tuple(acts.shape)}.")
        return iter(acts.split(self.batch_size)), tuple(acts.shape[1:]), len(acts)

    # -- use -------------------------------------------------------------------------------------
    def _eraser(self, device: torch.device, dtype: torch.dtype) -> _PackageEraser:
        """The package's eraser object, converted once per device and dtype."""
        cache = self.__dict__.setdefault("_cache", {})
        key = (str(device), dtype)
        if key not in cache:
            cache[key] = _PackageEraser(
                self.proj_left_.to(device=device, dtype=dtype),
                self.proj_right_.to(device=device, dtype=dtype),
                self.bias_.to(device=device, dtype=dtype) if self.affine else None,
            )
        return cache[key]

    def _check_shape(self, acts: torch.Tensor) -> None:
        shape = list(acts.shape[1:])
        if not self._channelwise or len(self.input_shape_) == 1:
            ok = shape == list(self.input_shape_)
        else:
            axis = self._channel_axis(acts.dim())
            ok = acts.dim() == len(self.input_shape_) + 1 and acts.shape[axis] == self.n_features_
        if not ok:
            expected = (f"per-sample shape {tuple(self.input_shape_)}" if not self._channelwise
                        else f"{self.n_features_} channels on axis {self.channel_dim}")
            raise ShapeMismatchError(
                f"The eraser was fitted on activations with {expected}; got {tuple(acts.shape)}.")

    def transform(self, activations: Any) -> torch.Tensor:
        """Erase the concept: ``(N, ...) -> (N, ...)``, same shape, dtype and device.

        Differentiable (an affine map), so gradients flow through an attached eraser.
        """
        self._check_fitted()
        acts = torch.from_numpy(activations) if isinstance(activations, np.ndarray) else activations
        if not isinstance(acts, torch.Tensor):
            raise TypeError(f"activations must be a tensor, got {type(activations).__name__}.")
        self._check_shape(acts)
        dtype = acts.dtype if acts.is_floating_point() else torch.float32
        rows = self._rows(acts.to(dtype))
        erased = self._eraser(acts.device, dtype)(rows)
        return self._unrows(erased, acts.to(dtype))

    def fit_transform(self, activations: Any, labels: Any, **kwargs: Any) -> torch.Tensor:
        """``fit(activations, labels, **kwargs).transform(activations)`` (tensors only)."""
        return self.fit(activations, labels, **kwargs).transform(activations)

    @property
    def projection_(self) -> torch.Tensor:
        """The ``(D, D)`` matrix ``P`` of the eraser ``x -> x - P (x - bias_)``."""
        self._check_fitted()
        return self.proj_left_ @ self.proj_right_

    def attach(self, model: nn.Module, layer: LayerSelector | None = None) -> HookGroup:
        """Erase ``layer``'s output on every forward pass until the returned handle's
        ``remove()`` (idempotent) is called.

        Args:
            model: the network.
            layer: one layer (name, pattern, class or module) whose output has the shape the
                eraser was fitted on; None (default) = the layer given to :meth:`fit`
                (``layer_``), so ``attach(model)`` works as for every other attachable.
                Tuple/dict outputs get their primary tensor erased.

        Returns:
            A :class:`HookGroup`; also a context manager.

        Raises:
            InvalidParameterError: no ``layer`` given and none recorded at fit.
        """
        self._check_fitted()
        if layer is None:
            layer = self.__dict__.get("layer_")
            if layer is None:
                raise InvalidParameterError(
                    "LeaceEraser.attach: layer is needed: the eraser was fitted on activations "
                    "without a layer name; pass attach(model, layer) or fit(..., layer=name).")
        found = resolve_layers(model, layer)
        if len(found) != 1:
            raise LatentSurgeonError(
                f"A LeaceEraser is attached to one layer; {layer!r} selects {list(found)}.")

        def erase(name: str, module: nn.Module, inputs: tuple, output: Any) -> Any:
            return replace_primary(output, self.transform(primary_tensor(output)))

        return HookGroup().forward(model, list(found), erase)

    @contextmanager
    def applied(self, model: nn.Module, layer: LayerSelector | None = None
                ) -> Iterator[nn.Module]:
        """``with eraser.applied(model, "features") as erased: erased(x)`` runs the model with
        the concept erased at ``layer``; yields the model (as every ``applied`` does; use
        :meth:`attach` for the hook handle). The hook is removed on exit, also after an
        exception."""
        group = self.attach(model, layer)
        try:
            yield model
        finally:
            group.remove()
