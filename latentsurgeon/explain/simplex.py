"""SimplEx (Crabbe et al., 2021): each test representation as a convex combination of training
representations; the weights are the example importance."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from latentsurgeon._validation import Interval, Options, check_finite
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError
from latentsurgeon.explain._base import Block, ExampleExplainer
from latentsurgeon.explain._simplex_solvers import active_set, mirror_descent
from latentsurgeon.explain.representations import block_representations, representations

__all__ = ["SimplEx", "simplex_weights"]

logger = logging.getLogger(__name__)

_SOLVERS = ("active-set", "mirror-descent")


def simplex_weights(test_reps: torch.Tensor, train_reps: torch.Tensor, *, tol: float = 1e-3,
                    max_iter: int = 2000, check_every: int = 10, solver: str = "active-set"
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve ``min_w ||w @ H - z||^2`` over the simplex for every row ``z``, at once.

    ``solver="active-set"`` (default): Wolfe's minimum-norm-point algorithm (fully-corrective
    Frank-Wolfe), batched over rows: each step adds the training point of steepest descent to a
    row's active set, or drops the points whose weight the affine minimiser over the set would
    make negative; the affine minimiser is one small KKT solve. A row converges in a finite
    number of steps, typically a few times its support (at most ``D + 1`` points), and the
    weights are sparse. Rows whose active set would outgrow 256 points (or whose KKT system
    rounding makes singular) are finished by mirror descent.

    ``solver="mirror-descent"``: accelerated mirror descent on ``w = softmax(p)`` with per-row
    curvature backtracking and momentum restarts (the solver before the active-set one): dense
    weights, hundreds of cheap steps.

    Convergence, both solvers: each row's Frank-Wolfe gap ``<grad f(w), w> - min_j grad
    f(w)_j``, an upper bound on ``f(w) - min f``, is compared with ``tol`` times the row's
    objective at uniform weights (every step for the active-set solver, every ``check_every``
    steps for mirror descent); a row below it is done and leaves the working set. So ``tol``
    certifies the suboptimality of every returned row. The two solvers reach the same objective
    within that tolerance; the weights agree where the optimum is unique (a test point outside
    the hull of affinely independent nearest training points), not where it lies inside the
    hull, where the active-set solver returns at most ``D + 1`` points.

    Every operation acts on rows independently (own active set or curvature, own stopping
    time): a row's weights do not depend on which other rows are solved with it, up to
    floating-point rounding of the matrix products. Computed in float64.

    Args:
        test_reps: ``(m, D)`` representations to decompose.
        train_reps: ``(n, D)`` corpus.
        tol: certified suboptimality, relative to the objective at uniform weights.
        max_iter: the most steps any row takes (an active-set step is one affine solve).
        check_every: steps between convergence checks of mirror descent.
        solver: ``"active-set"`` or ``"mirror-descent"``.

    Returns:
        ``(weights (m, n), objective (m,), n_iter (m,))``: the weights (rows on the simplex),
        each row's squared error ``||w H - z||^2`` and the steps it took, float64.
    """
    if solver not in _SOLVERS:
        raise InvalidParameterError(
            f"simplex_weights: solver must be one of {', '.join(map(repr, _SOLVERS))}; got "
            f"{solver!r}.")
    for name, reps in (("test_reps", test_reps), ("train_reps", train_reps)):
        if not isinstance(reps, torch.Tensor) or reps.dim() != 2:
            raise ShapeMismatchError(
                f"simplex_weights: {name} must be a 2-D tensor (n, D); got "
                + (f"shape {tuple(reps.shape)}." if isinstance(reps, torch.Tensor)
                   else f"a {type(reps).__name__}."))
        check_finite(reps, f"simplex_weights: {name}")
    if test_reps.shape[1] != train_reps.shape[1]:
        raise ShapeMismatchError(
            f"Test representations have {test_reps.shape[1]} features, training ones "
            f"{train_reps.shape[1]}; they must come from the same layer.")
    if len(train_reps) == 0:
        raise InvalidParameterError(
            "simplex_weights: train_reps holds no samples (got shape "
            f"{tuple(train_reps.shape)}); the corpus needs at least one representation.")
    H, Z = train_reps.to(torch.float64), test_reps.to(torch.float64)
    if solver == "mirror-descent" or len(Z) == 0:
        return mirror_descent(Z, H, tol, max_iter, check_every)
    weights, objective, n_iter, handed_over = active_set(Z, H, tol, max_iter)
    if bool(handed_over.any()):
        logger.debug("SimplEx: %d rows handed to mirror descent", int(handed_over.sum()))
        rest = mirror_descent(Z[handed_over], H, tol, max_iter, check_every)
        weights[handed_over], objective[handed_over], n_iter[handed_over] = rest
    return weights, objective, n_iter


class SimplEx(ExampleExplainer):
    """Example importance as corpus weights: ``f(x) ~ sum_n w_n f(x_n)``, ``w`` on the simplex.

    Solves every test point of a block of ``batch_size`` at once, each to a certified tolerance
    (see :func:`simplex_weights`), where lfxai runs 1,000 Adam steps at learning rate 1e-3 per
    block of 50 (far from converged) and leaves the last partial block at zero.

    Args:
        layer: the layer whose output represents a sample (the model's output when None), or
            the layer of an :class:`~latentsurgeon.activations.ActivationStore` to read.
        tol: certified suboptimality at which a row stops, relative to its objective at
            uniform weights (see :func:`simplex_weights`).
        max_iter: the most steps a row takes.
        check_every: steps between convergence checks of ``solver="mirror-descent"``.
        solver: ``"active-set"`` (Wolfe's minimum-norm-point algorithm: sparse weights, a few
            steps per row) or ``"mirror-descent"`` (dense weights, hundreds of steps); both
            certify ``tol`` (see :func:`simplex_weights`).
        batch_size: samples per forward pass and test points solved together.
        device: None or the model's device.
        progress: tqdm bars.

    ``fit(train, model=None)``: inputs with ``model``, else representations (tensor or store).

    Learned attributes:
        train_representations_: ``(n_train, D)``.
        n_train_: number of training examples.
        objective_: ``(n_test,)`` squared reconstruction error of each test representation by
            its weights, from the last ``explain``.
        n_iter_: ``(n_test,)`` steps each test point took, from the last ``explain``.

    Under a process group the ranks split the *test* set (by whole batches): the weights of one
    test point involve every training example.
    """

    _shard_over = "test"
    _parameter_constraints = {
        "layer": [str, None],
        "tol": Interval(float, 0, None),
        "max_iter": Interval(int, 1, None),
        "check_every": Interval(int, 1, None),
        "solver": Options(_SOLVERS),
        "batch_size": Interval(int, 1, None),
        "progress": bool,
    }

    def __init__(self, layer: str | None = None, *, tol: float = 1e-3,
                 max_iter: int = 2000, check_every: int = 10, solver: str = "active-set",
                 batch_size: int = 1024, device: str | torch.device | None = None,
                 progress: bool = True) -> None:
        self.layer = layer
        self.tol = tol
        self.max_iter = max_iter
        self.check_every = check_every
        self.solver = solver
        self.batch_size = batch_size
        self.device = device
        self.progress = progress

    def _fit(self, train: Any, local: Block, model: nn.Module | None) -> None:
        self.train_representations_ = block_representations(
            local, model, self.layer, batch_size=self.batch_size, device=self.device,
            progress=self.progress)

    def _explain(self, test: Any) -> torch.Tensor:
        test_reps = representations(self._model, self.layer, test, batch_size=self.batch_size,
                                    device=self.device, progress=self.progress)
        parts, objectives, iters = [], [], []
        starts = range(0, len(test_reps), self.batch_size)
        for start in tqdm(starts, desc="SimplEx", unit="block", leave=False,
                          disable=None if self.progress else True):
            w, f, k = simplex_weights(test_reps[start:start + self.batch_size],
                                      self.train_representations_, tol=self.tol,
                                      max_iter=self.max_iter, check_every=self.check_every,
                                      solver=self.solver)
            parts.append(w.to(test_reps.dtype))
            objectives.append(f)
            iters.append(k)
        self.objective_ = torch.cat(objectives)
        self.n_iter_ = torch.cat(iters)
        logger.debug("SimplEx: %d test points, median %d steps", len(test_reps),
                     int(self.n_iter_.median()) if len(self.n_iter_) else 0)
        return torch.cat(parts)
