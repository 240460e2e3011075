"""Fitting concept directions: many CAVs of one call together, each fitted once per split.

A *problem* is a set of rows of one shared activation matrix ``rows (M, D)`` (float64) with
binary labels (1 = concept) and a training part for the held-out score. TCAV fits 2 x ``n_runs``
problems whose rows overlap (the same concept and random sets); :meth:`CAV.fit` fits one.

For every problem two directions are computed: one from all its rows (the CAV) and one from its
training part only (scored on the rest: ``scores_``). How:

* ``"mass_mean"``: ``mean(a | y = 1) - mean(a | y = 0)``; ``"signal"``: ``cov(a, y) / var(y)``
  (detoxai's label-covariance pattern; for 0/1 labels the same direction as mass-mean up to
  rounding). Closed forms.
* ``"logistic"`` (scikit-learn's ``LogisticRegression(C, class_weight="balanced")``) and
  ``"ridge"`` (``RidgeClassifier(alpha=1/C, class_weight="balanced")``): one batched Newton solve
  in float64 for every problem and split of the call (:mod:`latentsurgeon.concepts.newton`), on
  the Gram matrix of each problem's standardised rows when the layer has more dimensions than the
  problem has rows. The held-out fit reuses its problem's Gram matrix with zero weight on the
  held-out rows, so each problem's data are standardised once, by all its rows (labels unused).
* ``"svm"``, ``"lasso"`` and a grid of ``C`` (a list, or ``"grid"``: detoxai's search over
  ``10^-5 .. 10^4`` with balanced sample weights, 5-fold): scikit-learn, one problem at a time.
* ``"pattern"``: the filter of ``filter_method``, then its activation pattern ``cov(a, w.a)``
  (Haufe et al. 2014).

A ``"mass_mean"`` CAV of a set too small to split (2 + 2 samples; see :func:`can_hold_out`) has
its training part spanning every row and its held-out scores NaN ("unavailable"). A zero
direction (coinciding class means) raises unless ``zero_direction="keep"``.

Filters are fitted on standardised activations (``(a - mean) / (max(std, floor) + 1e-8)``) and
mapped back to activation coordinates. The **variance floor** is ``SD_FLOOR`` (1e-3) times the
layer's typical scale (the root mean variance over its dimensions): a dimension that is nearly
constant (a standard deviation of 1e-9 beside dimensions of 1e-1) is not blown up to unit variance,
where its tiny noise could separate the classes and take the whole direction while the real
concept dimension gets none (mapped back, such a weight is divided by that 1e-9 once more).
Dimensions above the floor are standardised exactly as before. Every direction is normalised to
unit length and oriented so that the concept's rows project higher.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso, LogisticRegression, RidgeClassifier
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.svm import LinearSVC

from latentsurgeon.concepts.newton import newton_dual, newton_primal
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, NonFiniteError

__all__ = ["FILTERS", "GRID", "METHODS", "SD_FLOOR", "ZERO_DIRECTION", "FittedDirection", "Problem",
           "can_hold_out", "fit_directions", "held_out_split", "paired_split"]

METHODS = ("svm", "logistic", "ridge", "lasso", "pattern", "signal", "mass_mean")
#: What a fit does when a direction comes out zero (e.g. coinciding class means): ``"raise"``
#: (default) or ``"keep"`` it as a documented result (tdhook's mean-difference classifier).
ZERO_DIRECTION = ("raise", "keep")
FILTERS = ("svm", "logistic", "ridge", "lasso")
#: detoxai's grid of the regularisation (``C="grid"``).
GRID = tuple(10.0 ** k for k in range(-5, 5))
_NEWTON_LOSS = {"logistic": "logistic", "ridge": "squared"}
_EPS = 1e-8  # added to the standard deviation, as the scikit-learn path always did
#: Standard deviations below this share of the layer's typical scale (root mean variance) are
#: raised to it before standardising (see the module doc).
SD_FLOOR = 1e-3
#: Newton is used while the smaller side of a problem (rows or dimensions) is at most this; its
#: cost grows with that side squared (Gram or Hessian) and cubed (the solve).
NEWTON_MAX_SIDE = 2048
_SOLVE_BYTES = 512 * 2**20  # memory of one batched solve


@dataclass
class Problem:
    """One CAV to fit.

    Attributes:
        index: ``(n,)`` rows of the shared activation matrix.
        labels: ``(n,)`` 0/1 concept labels.
        train: ``(n,)`` bool, the rows the held-out score's direction is fitted on.
    """

    index: torch.Tensor
    labels: torch.Tensor
    train: torch.Tensor


@dataclass
class FittedDirection:
    """A fitted CAV's learned state (see :class:`~latentsurgeon.concepts.CAV`)."""

    direction: torch.Tensor      # (D,) unit, float64
    threshold: float
    mean_clean: torch.Tensor     # (D,) float64
    mean_concept: torch.Tensor   # (D,) float64
    scores: dict[str, float]


def can_hold_out(labels: torch.Tensor, test_size: float) -> bool:
    """Whether a stratified split with ``test_size`` leaves both classes on both of its sides
    (``labels``: ``(n,)`` 0/1)."""
    y = labels.numpy()
    n_test = int(np.ceil(test_size * len(y)))
    counts = np.bincount(y.astype(np.int64), minlength=2)
    return bool(counts.min() >= 2 and n_test >= 2 and len(y) - n_test >= 2)


def held_out_split(labels: torch.Tensor, test_size: float, seed: int | None) -> torch.Tensor:
    """Stratified train mask ``(n,)`` (scikit-learn's ``train_test_split``).

    Raises:
        InvalidParameterError: when the sets are too small for both sides of the split to hold
            a sample of each class (scikit-learn would fail with its own message).
    """
    y = labels.numpy()
    counts = np.bincount(y.astype(np.int64), minlength=2)
    if not can_hold_out(labels, test_size):
        raise InvalidParameterError(
            f"test_size={test_size} on {counts[1]} concept and {counts[0]} negative samples "
            "leaves a side of the held-out split without both classes; give at least 2 "
            "samples of each (more for a meaningful score) or change test_size")
    train, _ = train_test_split(np.arange(len(y)), test_size=test_size, random_state=seed,
                                stratify=y)
    mask = torch.zeros(len(y), dtype=torch.bool)
    mask[torch.from_numpy(train)] = True
    return mask


def paired_split(n_pairs: int, test_size: float, seed: int | None) -> torch.Tensor:
    """Train mask over ``[without (n), with (n)]`` rows that keeps each pair on one side."""
    n_test = int(np.ceil(test_size * n_pairs))
    if n_test < 1 or n_pairs - n_test < 1:
        raise InvalidParameterError(
            f"test_size={test_size} on {n_pairs} pairs leaves a side of the held-out split "
            "empty; give at least 2 pairs or change test_size")
    train, _ = train_test_split(np.arange(n_pairs), test_size=test_size, random_state=seed)
    mask = torch.zeros(n_pairs, dtype=torch.bool)
    mask[torch.from_numpy(train)] = True
    return torch.cat([mask, mask])


# -- filters ---------------------------------------------------------------------------------------
def _balanced(y: torch.Tensor, use: torch.Tensor) -> torch.Tensor:
    """scikit-learn's ``class_weight="balanced"`` over the rows in ``use`` (0 elsewhere)."""
    n1 = float((y[use] == 1).sum())
    n0 = float(use.sum()) - n1
    n = n0 + n1
    return torch.where(use, torch.where(y == 1, n / (2 * n1), n / (2 * n0)), 0.0).double()


def _standardise_(X: torch.Tensor, scratch: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardise ``X`` by its own rows, in place: ``(X - mu) / (max(sd, floor) + 1e-8)`` with
    the population ``sd`` and ``floor = SD_FLOOR * sqrt(mean(sd^2))`` (the layer's typical
    scale); returns ``(mu, max(sd, floor) + 1e-8)``. ``scratch``: a buffer of ``X``'s shape."""
    mu = X.mean(0)
    X.sub_(mu)
    squares = torch.mul(X, X, out=scratch) if scratch is not None else X * X
    variance = squares.mean(0)
    floor = SD_FLOOR * float(variance.mean().sqrt())
    sd = variance.sqrt_().clamp_(min=floor).add_(_EPS)
    X.div_(sd)
    return mu, sd


class _Rows:
    """Gathers each problem's rows into one reused buffer (a fresh 10-100 MB tensor per problem
    would cost page faults comparable to the arithmetic)."""

    def __init__(self, rows: torch.Tensor, problems: Sequence[Problem]) -> None:
        self.rows = rows
        n_max = max(len(p.index) for p in problems)
        self.buffer = torch.empty(n_max, rows.shape[1], dtype=rows.dtype)
        self.scratch: torch.Tensor | None = None

    def __call__(self, p: Problem) -> torch.Tensor:
        return torch.index_select(self.rows, 0, p.index, out=self.buffer[:len(p.index)])

    def standardise_(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`_standardise_` of a gathered problem, with a reused scratch buffer."""
        if self.scratch is None:
            self.scratch = torch.empty_like(self.buffer)
        return _standardise_(X, self.scratch[:len(X)])


class _NewtonFilters:
    """Logistic or ridge filters of every problem and split: batched Newton solves.

    Each problem's rows are standardised by all of them; its two fits (all rows, training part)
    share that data, the second with zero weight on the held-out rows and started from the
    first's solution (a few Newton steps away). With more dimensions than rows the solve works
    on the Gram matrices (dual), else on the standardised rows (primal). Problems are solved
    together, in as few batches as ``_SOLVE_BYTES`` allows (problems are independent: the
    batching changes nothing but the memory).
    """

    def __init__(self, rows: torch.Tensor, problems: Sequence[Problem], kind: str,
                 C: float) -> None:
        n_max = max(len(p.index) for p in problems)
        dim = rows.shape[1]
        self.dual = dim >= n_max
        width = n_max if self.dual else dim
        # the data, the Newton system and temporaries: ~4 (n_max x width) matrices per fit
        per_problem = 4 * 8 * n_max * max(width, n_max + 1)
        chunk = max(1, _SOLVE_BYTES // per_problem)
        scale = C if kind == "logistic" else C / 2.0  # ridge: sum s (y - f)^2 + ||w||^2 / C
        solve = newton_dual if self.dual else newton_primal
        gather = _Rows(rows, problems)
        self.stats: list[tuple[torch.Tensor, torch.Tensor]] = []
        solutions = []
        for start in range(0, len(problems), chunk):
            part = problems[start:start + chunk]
            B = len(part)
            data = torch.zeros(B, n_max, width, dtype=torch.float64)
            y = torch.ones(B, n_max, dtype=torch.float64)
            c_all = torch.zeros(B, n_max, dtype=torch.float64)
            c_train = torch.zeros(B, n_max, dtype=torch.float64)
            for i, p in enumerate(part):
                n = len(p.index)
                Z = gather(p)
                self.stats.append(gather.standardise_(Z))
                if self.dual:
                    torch.mm(Z, Z.T, out=data[i, :n, :n])
                else:
                    data[i, :n] = Z
                y[i, :n] = 2.0 * p.labels.double() - 1.0
                c_all[i, :n] = scale * _balanced(p.labels, torch.ones(n, dtype=torch.bool))
                c_train[i, :n] = scale * _balanced(p.labels, p.train)
            full = solve(data, y, c_all, loss=_NEWTON_LOSS[kind])
            if self.dual:  # held-out rows carry no dual weight in the training-part fit
                first = (full[0] * (c_train > 0), full[1])
            else:
                first = full
            train = solve(data, y, c_train, loss=_NEWTON_LOSS[kind], start=first)
            solutions.append(torch.stack([full[0], train[0]], dim=1))   # (B, 2, ...)
            del data
        self.solution = torch.cat(solutions)

    def filters(self, i: int, X: torch.Tensor) -> torch.Tensor:
        """``(2, D)`` filters (all rows, training part) of problem ``i`` in activation
        coordinates; ``X`` is the problem's rows."""
        mu, sd = self.stats[i]
        pair = self.solution[i]
        if self.dual:
            # coef = Z^T a; sum(a) = 0 at the optimum, so the centring drops out.
            pair = pair[:, :len(X)]
            coefs = (pair @ X - pair.sum(1, keepdim=True) * mu) / sd
        else:
            coefs = pair
        return coefs / sd


def _sklearn_estimator(kind: str, C: Any, n: int, seed: int | None) -> tuple[Any, bool]:
    """The estimator of a filter and whether it takes balanced ``sample_weight`` in ``fit``."""
    grid = GRID if C == "grid" else (None if isinstance(C, (int, float)) else tuple(C))
    value = 1.0 if grid is not None else float(C)
    detox = C == "grid"  # detoxai: balanced sample weights instead of class weights
    weight = None if detox else "balanced"
    if kind == "svm":
        est: Any = LinearSVC(C=value, class_weight=weight, random_state=seed, max_iter=5000)
        space = {"C": list(grid or ())}
    elif kind == "logistic":
        est = LogisticRegression(C=value, class_weight=weight, max_iter=2000)
        space = {"C": list(grid or ())}
    elif kind == "ridge":
        est = RidgeClassifier(alpha=1.0 / value, class_weight=weight)
        space = {"alpha": [1.0 / g for g in grid or ()]}
    else:  # lasso: C weighs the summed squared loss against ||w||_1, alpha = 1 / (C n)
        est = Lasso(alpha=1.0 / (value * n), max_iter=10_000, random_state=seed)
        space = {"alpha": [1.0 / (g * n) for g in grid or ()]}
    if grid is None:
        return est, kind == "lasso"
    return GridSearchCV(est, space, cv=5 if detox else 3), detox or kind == "lasso"


def _sklearn_filter(Z: np.ndarray, y: np.ndarray, kind: str, C: Any,
                    seed: int | None) -> np.ndarray:
    est, weighted = _sklearn_estimator(kind, C, len(y), seed)
    target = 2.0 * y - 1.0 if kind == "lasso" else y
    kwargs = {}
    if weighted:
        counts = np.bincount(y, minlength=2).astype(np.float64)
        w = (1.0 / counts)[y]
        kwargs["sample_weight"] = w / w.max() if C == "grid" else w * len(y) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = est.fit(Z, target, **kwargs)
    est = getattr(est, "best_estimator_", est)
    return np.asarray(est.coef_, dtype=np.float64).reshape(-1)


def _sklearn_filters(X: torch.Tensor, p: Problem, kind: str, C: Any,
                     seed: int | None) -> torch.Tensor:
    """``(2, D)`` filters (all rows, training part) of one problem, by scikit-learn."""
    Z = X.clone()
    _, sd = _standardise_(Z)
    Z, y, train = Z.numpy(), p.labels.numpy(), p.train.numpy()
    with _one_blas_thread(Z):
        full = _sklearn_filter(Z, y, kind, C, seed)
        part = _sklearn_filter(Z[train], y[train], kind, C, seed)
    return torch.from_numpy(np.stack([full, part])) / sd


_CONTROLLER: Any = None


def _one_blas_thread(X: np.ndarray) -> Any:
    """scikit-learn's solvers do thousands of small matrix-vector products; waking BLAS worker
    threads for each costs more than it saves (10-20x on a busy machine), so problems below ~4M
    entries run on one thread."""
    global _CONTROLLER
    if X.size > 4_000_000:
        return contextlib.nullcontext()
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


# -- directions ------------------------------------------------------------------------------------
def _class_means(y: torch.Tensor, use: torch.Tensor) -> torch.Tensor:
    """``(2, n)`` row weights whose product with ``X`` gives the class means over ``use``."""
    weights = torch.stack([(y == 0) & use, (y == 1) & use]).double()
    return weights / weights.sum(1, keepdim=True)


def _raw_directions(X: torch.Tensor, y: torch.Tensor, train: torch.Tensor, method: str,
                    filters: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(2, D)`` unnormalised directions (all rows, training part) and ``(2, D)`` class means
    over all rows; ``X`` is read a few times, never copied."""
    every = torch.ones(len(y), dtype=torch.bool)
    uses = (every, train)
    if method in ("mass_mean", "signal"):
        weights = [_class_means(y, use) for use in uses]
        if method == "signal":
            # cov(a, y) / var(y), both with n - 1, as detoxai computes its "signal" CAV:
            # sum_i (y_i - mean y) a_i / sum_i (y_i - mean y)^2 over the rows used.
            for use in uses:
                yc = torch.where(use, y.double() - y[use].double().mean(), 0.0)
                weights.append((yc / (yc @ yc))[None])
        sums = torch.cat(weights) @ X
        means = sums[0:2]
        if method == "mass_mean":
            return torch.stack([sums[1] - sums[0], sums[3] - sums[2]]), means
        return sums[4:6], means
    means = _class_means(y, every) @ X
    if method != "pattern":
        return filters, means
    # cov(a, w.a) over the rows used (Haufe et al. 2014): centring a drops out of the product
    # because the weights (s - mean s) sum to zero.
    s = X @ filters.T                                                    # (n, 2)
    weights = torch.zeros(2, len(y), dtype=torch.float64)
    for j, use in enumerate(uses):
        sj = s[use, j]
        weights[j, use] = (sj - sj.mean()) / max(int(use.sum()) - 1, 1)
    return weights @ X, means


def _check_direction(v: torch.Tensor, zero_direction: str = "raise") -> torch.Tensor:
    """``v`` at unit length; a zero ``v`` raises, or stays zero with ``zero_direction="keep"``."""
    norm = torch.linalg.vector_norm(v)
    if not torch.isfinite(norm):
        raise NonFiniteError("The concept direction holds NaN or Inf; the activations it was "
                             "fitted on are too large for float64.")
    if norm == 0:
        if zero_direction == "keep":
            return torch.zeros_like(v)
        raise LatentSurgeonError("The concept direction is zero: the two groups' activations "
                                 "are indistinguishable at this layer (zero_direction='keep' "
                                 "returns it as a zero direction with chance-level scores).")
    return v / norm


def roc_auc(scores: torch.Tensor, y: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for 0/1 labels ``y``: the Mann-Whitney statistic
    ``P(score | 1 > score | 0) + P(tie) / 2`` from average ranks (scikit-learn's
    ``roc_auc_score`` for binary labels, without its per-call validation, which costs more than
    the AUC of a held-out split). NaN unless both labels occur."""
    positive = (y == 1).numpy()
    n1 = int(positive.sum())
    n0 = len(positive) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(scores.numpy())
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _midpoint(proj: torch.Tensor, y: torch.Tensor) -> float:
    return float(0.5 * (proj[y == 1].mean() + proj[y == 0].mean()))


def _finish(X: torch.Tensor, p: Problem, raw: torch.Tensor, means: torch.Tensor,
            zero_direction: str = "raise") -> FittedDirection:
    """Unit, oriented direction; threshold; held-out scores of the training part's direction.

    A training part of every row (no held-out rows: the set was too small to split) gives
    ``accuracy`` and ``auc`` NaN, "unavailable", with ``n_test`` 0. A zero direction kept with
    ``zero_direction="keep"`` projects every sample on the threshold: no sample is predicted to
    carry the concept and the AUC is 0.5 (chance)."""
    y, train = p.labels, p.train
    V = torch.stack([_check_direction(raw[0], zero_direction),
                     _check_direction(raw[1], zero_direction)])
    proj = X @ V.T                                                       # (n, 2)
    for j, use in enumerate((torch.ones(len(y), dtype=torch.bool), train)):
        if proj[use & (y == 1), j].mean() < proj[use & (y == 0), j].mean():
            V[j], proj[:, j] = -V[j], -proj[:, j]
    threshold = _midpoint(proj[train, 1], y[train])
    held, yte = proj[~train, 1], y[~train]
    if len(yte) == 0:  # nothing held out: no score to report
        accuracy, auc = math.nan, math.nan
    else:
        accuracy = float(((held > threshold) == (yte == 1)).double().mean())
        auc = roc_auc(held, yte)
    scores = {"accuracy": accuracy, "auc": auc,
              "n_train": int(train.sum()), "n_test": int((~train).sum())}
    return FittedDirection(direction=V[0], threshold=_midpoint(proj[:, 0], y),
                           mean_clean=means[0], mean_concept=means[1], scores=scores)


def fit_directions(rows: torch.Tensor, problems: Sequence[Problem], *, method: str,
                   filter_method: str = "logistic", C: Any = 1.0,
                   seeds: Sequence[int | None] | None = None,
                   zero_direction: str = "raise") -> list[FittedDirection]:
    """Fit the CAV of every problem (see the module doc).

    Args:
        rows: ``(M, D)`` float64 pooled activations shared by the problems (finite).
        problems: what to fit; labels must hold both classes in each problem and in its
            training part.
        method, filter_method, C: as :class:`~latentsurgeon.concepts.CAV`.
        seeds: per problem, the ``random_state`` of scikit-learn estimators that take one.
        zero_direction: ``"raise"`` on a zero direction (default) or ``"keep"`` it.

    Returns:
        One :class:`FittedDirection` per problem, in order.
    """
    seeds = list(seeds) if seeds is not None else [0] * len(problems)
    kind = method if method in FILTERS else filter_method
    needs_filter = method in FILTERS or method == "pattern"
    newton = None
    if needs_filter and kind in _NEWTON_LOSS and not isinstance(C, (str, list, tuple)):
        n_max = max(len(p.index) for p in problems)
        if min(n_max, rows.shape[1]) <= NEWTON_MAX_SIDE:
            newton = _NewtonFilters(rows, problems, kind, float(C))
    out = []
    gather = _Rows(rows, problems)
    for i, p in enumerate(problems):
        X = gather(p)
        filters = None
        if needs_filter:
            filters = (newton.filters(i, X) if newton is not None
                       else _sklearn_filters(X, p, kind, C, seeds[i]))
        raw, means = _raw_directions(X, p.labels, p.train, method, filters)
        out.append(_finish(X, p, raw, means, zero_direction))
    return out
