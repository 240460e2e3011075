"""Concept activation vectors: a direction in a layer's activation space for a binary concept.

Methods (``CAV(method=...)``):

* ``"svm"``, ``"logistic"``, ``"ridge"``, ``"lasso"``: *filter* directions, the weight vector of a
  linear classifier (logistic and ridge by a batched Newton solve that equals scikit-learn's
  ``LogisticRegression``/``RidgeClassifier``; svm and lasso by scikit-learn). A filter also cancels
  distractors, so it need not point along the concept's signal.
* ``"pattern"``: the *activation pattern* of that linear model, ``cov(a, w.a)`` (Haufe et al.
  2014): the direction along which the concept actually moves the activations. Robust to
  distractors; the variant the ClArC papers prefer.
* ``"signal"``: detoxai's label-covariance pattern ``cov(a, y) / var(y)``. For 0/1 labels it is
  the difference of the class means, the same direction as ``"mass_mean"`` up to rounding.
* ``"mass_mean"``: difference of the class means.

Which samples the direction is fitted on matters as much as the method. When the concept co-occurs
with a class, fit within that class (``sample_mask=labels == k``) or on paired samples
(:meth:`CAV.fit_paired`: the same inputs with and without the concept).

How the directions and their held-out scores are computed: :mod:`latentsurgeon.concepts.cav_fitting`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, ClassVar

import numpy as np
import torch

from latentsurgeon._estimator import Estimator
from latentsurgeon._validation import Interval, Options, check_finite
from latentsurgeon.activations.batching import _binary_labels
from latentsurgeon.activations.pooling import PoolingOption, pool, same_pooled_space
from latentsurgeon.concepts.cav_fitting import (
    FILTERS,
    METHODS,
    ZERO_DIRECTION,
    FittedDirection,
    Problem,
    can_hold_out,
    fit_directions,
    held_out_split,
    paired_split,
)
from latentsurgeon.errors import LatentSurgeonError, ShapeMismatchError

__all__ = ["ALIGNMENT_WARNING", "CAV", "FILTERS", "METHODS", "mean_difference_cosine"]

#: A fitted direction whose |cosine| with the class-mean difference is below this warns: it is
#: nearly orthogonal to how the concept moves the activations (often a near-constant dimension
#: whose noise separated the classes); a filter that only cancels distractors stays far above it.
ALIGNMENT_WARNING = 0.05


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.asarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or numpy array, got {type(x).__name__}.")
    return x.detach().to("cpu")


def _load_activations(activations: Any, layer: str | None) -> torch.Tensor:
    from latentsurgeon.activations.store import ActivationStore

    if isinstance(activations, ActivationStore):
        if layer is None:
            if len(activations.layers) != 1:
                raise LatentSurgeonError(
                    f"The store holds {len(activations.layers)} layers ({activations.layers}); "
                    "pass layer=... to choose one."
                )
            layer = activations.layers[0]
        return activations.tensor(layer)
    return _as_tensor(activations, "activations")


class _PositiveNumbers:
    """A positive finite number, or a non-empty list/tuple of them (a grid)."""

    @staticmethod
    def _one(value: Any) -> bool:
        return (isinstance(value, numbers.Real) and not isinstance(value, bool)
                and math.isfinite(float(value)) and float(value) > 0)

    def accepts(self, value: Any) -> bool:
        if isinstance(value, (list, tuple)):
            return bool(value) and all(self._one(v) for v in value)
        return self._one(value)

    def __str__(self) -> str:
        return "a positive finite number, a list of them (grid-searched)"


def _state_dtype(activations: torch.Tensor) -> torch.dtype:
    """Learned vectors are float32, or float64 when the activations are (no precision lost)."""
    return torch.float64 if activations.dtype == torch.float64 else torch.float32


def mean_difference_cosine(direction: torch.Tensor, mean_clean: torch.Tensor,
                           mean_concept: torch.Tensor) -> float:
    """Cosine of ``direction`` with ``mean_concept - mean_clean`` (NaN when either is zero)."""
    diff = (mean_concept - mean_clean).double().reshape(-1)
    v = direction.double().reshape(-1)
    norms = float(torch.linalg.vector_norm(diff) * torch.linalg.vector_norm(v))
    return float(diff @ v) / norms if norms > 0 else math.nan


def warn_if_orthogonal(cosine: float, method: str, what: str = "The CAV", *,
                       stacklevel: int = 4) -> None:
    """The warning of :data:`ALIGNMENT_WARNING` (nothing for a NaN cosine)."""
    if math.isnan(cosine) or abs(cosine) >= ALIGNMENT_WARNING:
        return
    warnings.warn(
        f"{what}'s direction (method={method!r}) is nearly orthogonal to the difference of the "
        f"class means (cosine {cosine:.2g}): it does not point where the concept moves the "
        "activations, and its TCAV scores and corrections will not act on the concept. This "
        "often means a near-constant dimension whose tiny noise separates the classes. Check "
        "cav.mean_difference_cosine_, or use method='mass_mean' or 'pattern'.",
        UserWarning, stacklevel=stacklevel)


def fitted_cav(params: dict[str, Any], fitted: FittedDirection, input_shape: tuple[int, ...],
               dtype: torch.dtype = torch.float32) -> CAV:
    """A :class:`CAV` with parameters ``params`` and the learned state ``fitted`` (its vectors
    in ``dtype``)."""
    cav = CAV(**params)
    cav._set_state(fitted, input_shape, dtype)
    return cav


class CAV(Estimator):
    """A unit concept direction fitted from activations.

    Args:
        method: one of ``"svm"``, ``"logistic"``, ``"ridge"``, ``"lasso"``, ``"pattern"``,
            ``"signal"``, ``"mass_mean"`` (see module doc).
        pooling: how ``(N, C, H, W)`` activations become vectors before fitting: ``"flatten"``
            (default, ``C*H*W``), ``"max"`` or ``"mean"`` (per channel, ``C``), ``"none"`` (as is:
            the activations must already be ``(N, D)``); for token activations ``(N, T, D)``
            the token modes ``"cls"``, ``"last"``, ``"position:K"``, ``"token_mean"``,
            ``"token_max"``, or ``"mean"``/``"max"`` with an ``attention_mask`` (over unmasked
            tokens; :mod:`~latentsurgeon.activations.pooling` has the rule). Recorded with the
            direction and applied again by :meth:`project`.
        filter_method: the linear model whose pattern ``"pattern"`` computes (a filter method).
        C: regularisation of the filters: the weight of the summed loss against the penalty
            (``C`` of svm/logistic, ``1/alpha`` of ridge, ``alpha = 1/(C n)`` of lasso). A list
            grid-searches it with 3-fold cross-validation; ``"grid"`` is detoxai's search
            (``10^-5 .. 10^4``, 5-fold, balanced sample weights).
        test_size: share of samples held out to measure ``scores_``. A ``"mass_mean"`` CAV
            fits sets too small for that split (2 + 2 samples) on all of them; its held-out
            ``accuracy`` and ``auc`` are then NaN ("unavailable") and ``n_test`` is 0. Other
            methods refuse such sets.
        seed: seeds the held-out split and the scikit-learn estimators (None: fresh randomness).
        zero_direction: what a fit does when the direction comes out zero (the class means
            coincide): ``"raise"`` (default, a ``LatentSurgeonError``) or ``"keep"``: the
            result is the zero direction, every sample projects to 0 = ``threshold_``, nothing
            is predicted to carry the concept, and the held-out AUC is 0.5 (chance): tdhook's
            mean-difference classifier does this.

    Learned attributes:
        direction_: ``(D,)`` unit vector, oriented so that concept samples project higher
            (float32; float64 when fitted on float64 activations, like the mean vectors).
        mean_clean_, mean_concept_: ``(D,)`` mean pooled activations without / with the concept.
        scores_: held-out ``{"accuracy", "auc", "n_train", "n_test"}`` of a direction fitted on
            the other samples (``accuracy``/``auc`` NaN with ``n_test`` 0 when nothing could be
            held out: see ``test_size``).
        input_shape_: per-sample shape of the activations before pooling.
        threshold_: projection value separating the classes (midpoint of the projected means).
        mean_difference_cosine_: cosine of ``direction_`` with ``mean_concept_ - mean_clean_``
            (1 for ``"mass_mean"``); a fit below :data:`ALIGNMENT_WARNING` in absolute value
            warns (``UserWarning``): such a direction does not follow the concept. Filters are
            fitted on activations standardised with a variance floor (see
            :mod:`~latentsurgeon.concepts.cav_fitting`), so a near-constant dimension cannot take
            the direction.

    Raises (in ``fit``):
        InvalidParameterError: a parameter outside what it accepts; labels other than 0/1.
        NonFiniteError: NaN or Inf in the activations.
    """

    _parameter_constraints: ClassVar[dict[str, Any]] = {
        "method": Options(METHODS),
        "pooling": PoolingOption(),
        "filter_method": Options(FILTERS),
        "C": [_PositiveNumbers(), Options(["grid"])],
        "test_size": Interval(float, 0, 1, closed="neither"),
        "seed": [None, Interval(int, 0, None)],
        "zero_direction": Options(ZERO_DIRECTION),
    }

    def __init__(
        self,
        method: str = "mass_mean",
        pooling: str = "flatten",
        *,
        filter_method: str = "logistic",
        C: float | list[float] | str = 1.0,
        test_size: float = 0.25,
        seed: int | None = 0,
        zero_direction: str = "raise",
    ) -> None:
        self.method = method
        self.pooling = pooling
        self.filter_method = filter_method
        self.C = C
        self.test_size = test_size
        self.seed = seed
        self.zero_direction = zero_direction

    # -- fitting ---------------------------------------------------------------------------------
    def _vectors(self, activations: torch.Tensor,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, ...)`` activations -> ``(N, D)`` float64 pooled vectors (the pooling rule of
        :mod:`~latentsurgeon.activations.pooling`, with ``attention_mask`` for tokens)."""
        if self.pooling == "none" and activations.dim() > 2:
            raise ShapeMismatchError(
                "A CAV needs one vector per sample: use pooling='flatten', 'max' or 'mean' for "
                f"activations of shape {tuple(activations.shape)}.")
        mask = None if attention_mask is None else _as_tensor(attention_mask, "attention_mask")
        return pool(activations.double(), self.pooling, mask).reshape(len(activations), -1)

    def _set_state(self, fitted: FittedDirection, input_shape: tuple[int, ...],
                   dtype: torch.dtype) -> None:
        self.direction_ = fitted.direction.to(dtype)
        self.mean_clean_ = fitted.mean_clean.to(dtype)
        self.mean_concept_ = fitted.mean_concept.to(dtype)
        self.threshold_ = fitted.threshold
        self.scores_ = fitted.scores
        self.input_shape_ = list(input_shape)
        self.mean_difference_cosine_ = mean_difference_cosine(
            fitted.direction, fitted.mean_clean, fitted.mean_concept)

    def _fit_rows(self, X: torch.Tensor, y: torch.Tensor, train: torch.Tensor,
                  input_shape: tuple[int, ...], dtype: torch.dtype) -> CAV:
        (fitted,) = fit_directions(X, [Problem(torch.arange(len(y)), y, train)],
                                   method=self.method, filter_method=self.filter_method,
                                   C=self.C, seeds=[self.seed],
                                   zero_direction=self.zero_direction)
        self._set_state(fitted, input_shape, dtype)
        warn_if_orthogonal(self.mean_difference_cosine_, self.method)
        return self

    def fit(self, activations: Any, labels: Any, *, sample_mask: Any = None,
            layer: str | None = None, attention_mask: Any = None) -> CAV:
        """Fit the direction.

        Args:
            activations: ``(N, ...)`` tensor/array, or an :class:`ActivationStore`; then
                ``layer`` names the store layer to read (optional when it holds one layer).
            labels: ``(N,)`` concept labels, 1/True = concept present (0/1 or bool only: soft
                labels are refused).
            sample_mask: ``(N,)`` bool, fit only on these samples (e.g. ``class_labels == k`` to
                fit within the class the concept co-occurs with).
            layer: the store layer to read when ``activations`` is a store.
            attention_mask: ``(N, T)`` token mask of ``(N, T, D)`` activations (1 = token, 0 =
                padding): ``"mean"``/``"max"`` then pool over the unmasked tokens, ``"last"``
                reads the last unmasked one (see :mod:`~latentsurgeon.activations.pooling`).

        Returns:
            self
        """
        self._validate_params()
        acts = _load_activations(activations, layer)
        y = _binary_labels(labels, "labels").long()
        if len(y) != len(acts):
            raise ShapeMismatchError(
                f"labels has {len(y)} entries but activations has {len(acts)} samples.")
        if sample_mask is not None:
            keep = _as_tensor(sample_mask, "sample_mask").reshape(-1).bool()
            if len(keep) != len(acts):
                raise ShapeMismatchError(
                    f"sample_mask has {len(keep)} entries, activations {len(acts)} samples.")
            acts, y = acts[keep], y[keep]
            if attention_mask is not None:
                attention_mask = _as_tensor(attention_mask, "attention_mask")[keep]
        check_finite(acts, "activations")
        present = sorted(set(torch.unique(y).tolist()))
        if present != [0, 1]:
            raise LatentSurgeonError(
                f"A CAV needs both concept (1) and concept-free (0) samples; got labels {present}.")
        if min(int((y == 0).sum()), int((y == 1).sum())) < 2:
            raise LatentSurgeonError("Each group needs at least 2 samples to fit a CAV.")
        X = self._vectors(acts, attention_mask)
        if self.method == "mass_mean" and not can_hold_out(y, self.test_size):
            # A closed form needs no validation split to exist: fit on every sample and report
            # the held-out score as unavailable rather than refusing a tiny set.
            train = torch.ones(len(y), dtype=torch.bool)
        else:
            train = held_out_split(y, self.test_size, self.seed)
        return self._fit_rows(X, y, train, tuple(acts.shape[1:]), _state_dtype(acts))

    def fit_paired(self, with_concept: Any, without_concept: Any) -> CAV:
        """Fit on paired activations: row ``i`` of both comes from the same input, once with the
        concept pasted in and once without. Held-out pairs never straddle the split.

        Args:
            with_concept, without_concept: ``(N, ...)`` activations of the same N inputs.
        """
        self._validate_params()
        a1 = _as_tensor(with_concept, "with_concept")
        a0 = _as_tensor(without_concept, "without_concept")
        if a1.shape != a0.shape:
            raise ShapeMismatchError(
                f"Paired activations must have equal shapes; got {tuple(a1.shape)} and "
                f"{tuple(a0.shape)}.")
        check_finite(a1, "with_concept")
        check_finite(a0, "without_concept")
        n = len(a1)
        if n < 2:
            raise LatentSurgeonError("Fitting on pairs needs at least 2 pairs.")
        X = torch.cat([self._vectors(a0), self._vectors(a1)])
        y = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
        return self._fit_rows(X, y, paired_split(n, self.test_size, self.seed),
                              tuple(a1.shape[1:]), _state_dtype(a1))

    # -- use -------------------------------------------------------------------------------------
    def pooled(self, activations: Any, *, attention_mask: Any = None) -> torch.Tensor:
        """Pool activations ``(N, *input_shape_)`` as at fit time -> ``(N, D)`` in the dtype of
        ``direction_`` (token activations of another length ``T`` pool into the same space)."""
        self._check_fitted()
        acts = _as_tensor(activations, "activations") if not isinstance(activations, torch.Tensor) \
            else activations
        mask = None if attention_mask is None else _as_tensor(attention_mask, "attention_mask")
        x = None
        if same_pooled_space(acts.shape[1:], self.input_shape_, self.pooling):
            x = pool(acts.to(self.direction_.dtype), self.pooling, mask).reshape(len(acts), -1)
        if x is None or x.shape[1] != self.direction_.numel():
            raise ShapeMismatchError(
                f"The CAV was fitted on activations of per-sample shape {tuple(self.input_shape_)}, "
                f"got {tuple(acts.shape[1:])}.")
        return x

    def project(self, activations: Any, *, attention_mask: Any = None) -> torch.Tensor:
        """Scalar projection of each sample on the direction: ``(N, ...) -> (N,)``."""
        x = self.pooled(activations, attention_mask=attention_mask)
        return x @ self.direction_.to(x.device)

    def predict(self, activations: Any, *, attention_mask: Any = None) -> torch.Tensor:
        """Concept present (True) where the projection exceeds ``threshold_``: ``(N,)`` bool."""
        return self.project(activations, attention_mask=attention_mask) > self.threshold_

    def cosine(self, other: Any) -> float:
        """Cosine similarity of ``direction_`` with another CAV or a vector ``(D,)``."""
        self._check_fitted()
        v = other.direction_ if isinstance(other, CAV) else _as_tensor(other, "other")
        v = v.reshape(-1).to(self.direction_.dtype)
        if v.numel() != self.direction_.numel():
            raise ShapeMismatchError(
                f"Cannot compare a direction of {self.direction_.numel()} dimensions with one of "
                f"{v.numel()}: fit both at the same layer with the same pooling.")
        return float(torch.dot(self.direction_, v) / (v.norm() + 1e-12))
