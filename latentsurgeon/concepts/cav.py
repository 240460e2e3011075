"""Concept activation vectors: a direction in a layer's activation space for a binary concept.

Methods (``CAV(method=...)``):

* ``"svm"``, ``"logistic"``, ``"ridge"``: *filter* directions, the weight vector of a linear
  classifier (scikit-learn). A filter also cancels distractors, so it need not point along the
  concept's signal.
* ``"pattern"`` (alias ``"signal"``): the *activation pattern* of that linear model,
  ``cov(a, w.a)`` (Haufe et al. 2014): the direction along which the concept actually moves the
  activations. Robust to distractors; the variant the ClArC papers prefer. (The label-covariance
  form ``cov(a, y) / var(y)`` used by some tools equals ``mass_mean`` for binary labels.)
* ``"mass_mean"``: difference of the class means.

Which samples the direction is fitted on matters as much as the method. When the concept co-occurs
with a class, fit within that class (``sample_mask=labels == k``) or on paired samples
(:meth:`CAV.fit_paired`: the same inputs with and without the concept).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, RidgeClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.svm import LinearSVC

from latentsurgeon._estimator import Estimator
from latentsurgeon.activations.pooling import check_pooling, pool
from latentsurgeon.errors import LatentSurgeonError, ShapeMismatchError

METHODS = ("svm", "logistic", "ridge", "pattern", "signal", "mass_mean")
_FILTERS = ("svm", "logistic", "ridge")


_CONTROLLER: Any = None


def blas_threads(X: np.ndarray) -> Any:
    """A context that runs BLAS single-threaded for small problems.

    A CAV fit is thousands of small matrix-vector products; waking BLAS worker threads for each
    costs more than it saves (on a busy machine, 10-20x more), so problems below ~4M entries run
    on one thread. Larger ones keep the library's default.
    """
    global _CONTROLLER
    if X.size > 4_000_000:
        return contextlib.nullcontext()
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


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


class CAV(Estimator):
    """A unit concept direction fitted from activations.

    Args:
        method: one of ``"svm"``, ``"logistic"``, ``"ridge"``, ``"pattern"``/``"signal"``,
            ``"mass_mean"`` (see module doc).
        pooling: how ``(N, C, H, W)`` activations become vectors before fitting: ``"flatten"``
            (default, ``C*H*W``), ``"max"`` or ``"mean"`` (per channel, ``C``). Recorded with the
            direction and applied again by :meth:`project`.
        filter_method: the linear model whose pattern ``"pattern"`` computes.
        C: regularisation of svm/logistic (inverse strength) and ``1/alpha`` of ridge; a sequence
            grid-searches it with 3-fold cross-validation.
        test_size: share of samples held out to measure ``scores_``.
        seed: seeds the held-out split and the estimators.

    Learned attributes:
        direction_: ``(D,)`` unit vector, oriented so that concept samples project higher.
        mean_clean_, mean_concept_: ``(D,)`` mean pooled activations without / with the concept.
        scores_: held-out ``{"accuracy", "auc", "n_train", "n_test"}``.
        input_shape_: per-sample shape of the activations before pooling.
        threshold_: projection value separating the classes (midpoint of the projected means).
    """

    def __init__(
        self,
        method: str = "mass_mean",
        pooling: str = "flatten",
        *,
        filter_method: str = "logistic",
        C: float | Sequence[float] = 1.0,
        test_size: float = 0.25,
        seed: int = 0,
    ) -> None:
        self.method = method
        self.pooling = pooling
        self.filter_method = filter_method
        self.C = C
        self.test_size = test_size
        self.seed = seed

    # -- fitting ---------------------------------------------------------------------------------
    def _validate(self) -> None:
        if self.method not in METHODS:
            raise LatentSurgeonError(f"Unknown CAV method {self.method!r}; expected one of {METHODS}.")
        if self.filter_method not in _FILTERS:
            raise LatentSurgeonError(
                f"filter_method must be one of {_FILTERS}, got {self.filter_method!r}.")
        check_pooling(self.pooling)
        if not 0.0 < self.test_size < 1.0:
            raise LatentSurgeonError(f"test_size must lie in (0, 1), got {self.test_size}.")

    def _vectors(self, activations: torch.Tensor) -> torch.Tensor:
        if self.pooling == "none" and activations.dim() > 2:
            raise ShapeMismatchError(
                "A CAV needs one vector per sample: use pooling='flatten', 'max' or 'mean' for "
                f"activations of shape {tuple(activations.shape)}.")
        return pool(activations.float(), self.pooling).reshape(len(activations), -1).double()

    def _estimator(self, kind: str) -> Any:
        C = self.C if isinstance(self.C, (int, float)) else 1.0
        if kind == "svm":
            est = LinearSVC(C=C, class_weight="balanced", random_state=self.seed, max_iter=5000)
        elif kind == "logistic":
            est = LogisticRegression(C=C, class_weight="balanced", max_iter=2000)
        else:
            est = RidgeClassifier(alpha=1.0 / C, class_weight="balanced")
        if isinstance(self.C, (int, float)):
            return est
        grid = {"alpha": [1.0 / c for c in self.C]} if kind == "ridge" else {"C": list(self.C)}
        return GridSearchCV(est, grid, cv=3)

    def _direction(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.method == "mass_mean":
            return X[y == 1].mean(0) - X[y == 0].mean(0)
        kind = self.method if self.method in _FILTERS else self.filter_method
        # Centre and scale for the solver; map the filter back to activation coordinates.
        mu, sd = X.mean(0), X.std(0) + 1e-8
        with blas_threads(X):
            est = self._estimator(kind).fit((X - mu) / sd, y)
        est = getattr(est, "best_estimator_", est)
        w = np.asarray(est.coef_, dtype=np.float64).reshape(-1) / sd
        if self.method in _FILTERS:
            return w
        Xc = X - mu
        s = Xc @ w
        return Xc.T @ (s - s.mean()) / max(len(X) - 1, 1)  # cov(a, w.a): the Haufe pattern

    @staticmethod
    def _unit(v: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(v)
        if not np.isfinite(norm) or norm == 0:
            raise LatentSurgeonError("The concept direction is zero: the two groups' activations "
                                     "are indistinguishable at this layer.")
        v = v / norm
        if (X[y == 1] @ v).mean() < (X[y == 0] @ v).mean():
            v = -v
        return v

    def _scores(self, Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray,
                yte: np.ndarray) -> dict[str, float]:
        v = self._unit(self._direction(Xtr, ytr), Xtr, ytr)
        threshold = 0.5 * ((Xtr[ytr == 1] @ v).mean() + (Xtr[ytr == 0] @ v).mean())
        proj = Xte @ v
        auc = float(roc_auc_score(yte, proj)) if len(np.unique(yte)) == 2 else float("nan")
        return {"accuracy": float(((proj > threshold) == (yte == 1)).mean()), "auc": auc,
                "n_train": int(len(ytr)), "n_test": int(len(yte))}

    def _finish(self, X: np.ndarray, y: np.ndarray, shape: tuple[int, ...],
                scores: dict[str, float], direction: np.ndarray | None = None) -> CAV:
        v = self._unit(self._direction(X, y) if direction is None else direction, X, y)
        self.direction_ = torch.from_numpy(v).float()
        self.mean_clean_ = torch.from_numpy(X[y == 0].mean(0)).float()
        self.mean_concept_ = torch.from_numpy(X[y == 1].mean(0)).float()
        self.threshold_ = float(0.5 * ((X[y == 1] @ v).mean() + (X[y == 0] @ v).mean()))
        self.scores_ = scores
        self.input_shape_ = list(shape)
        return self

    def fit(self, activations: Any, labels: Any, *, sample_mask: Any = None,
            layer: str | None = None) -> CAV:
        """Fit the direction.

        Args:
            activations: ``(N, ...)`` tensor/array, or an :class:`ActivationStore` (with ``layer``).
            labels: ``(N,)`` concept labels, 1/True = concept present.
            sample_mask: ``(N,)`` bool, fit only on these samples (e.g. ``class_labels == k`` to
                fit within the class the concept co-occurs with).
            layer: the store layer to read when ``activations`` is a store.

        Returns:
            self
        """
        self._validate()
        acts = _load_activations(activations, layer)
        y = _as_tensor(labels, "labels").reshape(-1).long().numpy()
        if len(y) != len(acts):
            raise ShapeMismatchError(
                f"labels has {len(y)} entries but activations has {len(acts)} samples.")
        if sample_mask is not None:
            keep = _as_tensor(sample_mask, "sample_mask").reshape(-1).bool().numpy()
            if len(keep) != len(acts):
                raise ShapeMismatchError(
                    f"sample_mask has {len(keep)} entries, activations {len(acts)} samples.")
            acts, y = acts[torch.from_numpy(keep)], y[keep]
        if set(np.unique(y)) != {0, 1}:
            raise LatentSurgeonError(
                "A CAV needs both concept (1) and concept-free (0) samples; got labels "
                f"{sorted(set(np.unique(y).tolist()))}.")
        if min((y == 0).sum(), (y == 1).sum()) < 2:
            raise LatentSurgeonError("Each group needs at least 2 samples to fit a CAV.")
        return self._fit_vectors(self._vectors(acts).numpy(), y, tuple(acts.shape[1:]))

    def _fit_vectors(self, X: np.ndarray, y: np.ndarray, input_shape: tuple[int, ...]) -> CAV:
        """Fit on vectors that are already pooled: ``X (N, D)`` float64, ``y (N,)`` in {0, 1}.

        ``input_shape`` is the per-sample shape *before* pooling, so that the fitted CAV applies
        to raw layer activations (TCAV pools once per input set and fits many CAVs on it).
        """
        self._validate()
        idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=self.test_size,
                                          random_state=self.seed, stratify=y)
        scores = self._scores(X[idx_tr], y[idx_tr], X[idx_te], y[idx_te])
        return self._finish(X, y, input_shape, scores)

    def fit_paired(self, with_concept: Any, without_concept: Any) -> CAV:
        """Fit on paired activations: row ``i`` of both comes from the same input, once with the
        concept pasted in and once without. Held-out pairs never straddle the split.

        Args:
            with_concept, without_concept: ``(N, ...)`` activations of the same N inputs.
        """
        self._validate()
        a1 = _as_tensor(with_concept, "with_concept")
        a0 = _as_tensor(without_concept, "without_concept")
        if a1.shape != a0.shape:
            raise ShapeMismatchError(
                f"Paired activations must have equal shapes; got {tuple(a1.shape)} and "
                f"{tuple(a0.shape)}.")
        X1, X0 = self._vectors(a1).numpy(), self._vectors(a0).numpy()
        n = len(X1)
        pairs_tr, pairs_te = train_test_split(np.arange(n), test_size=self.test_size,
                                              random_state=self.seed)

        def stack(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return (np.concatenate([X0[idx], X1[idx]]),
                    np.concatenate([np.zeros(len(idx), int), np.ones(len(idx), int)]))

        scores = self._scores(*stack(pairs_tr), *stack(pairs_te))
        X, y = stack(np.arange(n))
        direction = (X1 - X0).mean(0) if self.method == "mass_mean" else None
        return self._finish(X, y, tuple(a1.shape[1:]), scores, direction)

    # -- use -------------------------------------------------------------------------------------
    def pooled(self, activations: Any) -> torch.Tensor:
        """Pool activations ``(N, *input_shape_)`` as at fit time -> ``(N, D)`` float32."""
        self._check_fitted()
        acts = _as_tensor(activations, "activations") if not isinstance(activations, torch.Tensor) \
            else activations
        if list(acts.shape[1:]) != list(self.input_shape_):
            raise ShapeMismatchError(
                f"The CAV was fitted on activations of per-sample shape {tuple(self.input_shape_)}, "
                f"got {tuple(acts.shape[1:])}.")
        return pool(acts.float(), self.pooling).reshape(len(acts), -1)

    def project(self, activations: Any) -> torch.Tensor:
        """Scalar projection of each sample on the direction: ``(N, ...) -> (N,)``."""
        x = self.pooled(activations)
        return x @ self.direction_.to(x.device)

    def predict(self, activations: Any) -> torch.Tensor:
        """Concept present (True) where the projection exceeds ``threshold_``: ``(N,)`` bool."""
        return self.project(activations) > self.threshold_

    def cosine(self, other: Any) -> float:
        """Cosine similarity of ``direction_`` with another CAV or a vector ``(D,)``."""
        self._check_fitted()
        v = other.direction_ if isinstance(other, CAV) else _as_tensor(other, "other").float()
        v = v.reshape(-1)
        if v.numel() != self.direction_.numel():
            raise ShapeMismatchError(
                f"Cannot compare a direction of {self.direction_.numel()} dimensions with one of "
                f"{v.numel()}: fit both at the same layer with the same pooling.")
        return float(torch.dot(self.direction_, v) / (v.norm() + 1e-12))
