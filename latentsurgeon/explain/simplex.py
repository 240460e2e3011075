"""SimplEx (Crabbe et al., 2021): each test representation as a convex combination of training
representations; the weights are the example importance."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from latentsurgeon._validation import Interval, check_finite
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError
from latentsurgeon.explain._base import Block, ExampleExplainer
from latentsurgeon.explain.representations import block_representations, representations

__all__ = ["SimplEx", "simplex_weights"]

logger = logging.getLogger(__name__)

_SHRINK = 0.7  # a row whose step was accepted tries a 30% smaller curvature bound next


def simplex_weights(test_reps: torch.Tensor, train_reps: torch.Tensor, *, tol: float = 1e-3,
                    max_iter: int = 2000, check_every: int = 10
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve ``min_w ||w @ H - z||^2`` over the simplex for every row ``z``, at once.

    The weights are softmax-parametrised: the mirror iterate is ``softmax(p)`` and steps are
    taken on ``p`` (mirror descent with the entropy, the geometry of the softmax
    parametrisation), accelerated as in Nesterov/Tseng's accelerated mirror descent: ``x`` (the
    returned weights) is a running convex combination of the ``softmax(p)`` iterates. Each row
    has its own curvature estimate (backtracking on the l1-smoothness inequality: doubled on a
    failed step, shrunk by 30% after an accepted one) and its momentum restarts when its
    objective rises.

    Convergence: every ``check_every`` steps each row's Frank-Wolfe gap
    ``<grad f(x), x> - min_j grad f(x)_j``, an upper bound on ``f(x) - min f``, is compared with
    ``tol`` times the row's objective at uniform weights; a row below it is done and leaves the
    working set. So ``tol`` certifies the suboptimality of every returned row.

    Every operation acts on rows independently (own curvature, own stopping time): a row's
    weights do not depend on which other rows are solved with it, up to floating-point
    rounding of the matrix products. Computed in float64.

    Args:
        test_reps: ``(m, D)`` representations to decompose.
        train_reps: ``(n, D)`` corpus.
        tol: certified suboptimality, relative to the objective at uniform weights.
        max_iter: the most steps any row takes.
        check_every: steps between convergence checks.

    Returns:
        ``(weights (m, n), objective (m,), n_iter (m,))``: the weights (rows on the simplex),
        each row's squared error ``||w H - z||^2`` and the steps it took, float64.
    """
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
    m, n = len(Z), len(H)
    weights = torch.empty(m, n, dtype=torch.float64)
    objective = torch.empty(m, dtype=torch.float64)
    n_iter = torch.full((m,), max_iter, dtype=torch.long)
    if m == 0:
        return weights, objective, n_iter
    HT2 = 2.0 * H.T                                    # grad f(w) = 2 (w H - z) H^T
    tiny = torch.finfo(torch.float64).tiny
    rows = torch.arange(m)                             # original index of each working row
    pz = torch.zeros(m, n, dtype=torch.float64)        # mirror iterate z = softmax(pz)
    z = torch.softmax(pz, dim=1)
    x = z.clone()                                      # the weights returned
    zH = z @ H
    xH = zH.clone()
    fx = ((xH - Z) ** 2).sum(dim=1, keepdim=True)
    start = fx.clone()                                 # objective at uniform weights
    L = torch.full((m, 1), 2.0 * float((H * H).sum(dim=1).max()) + tiny, dtype=torch.float64)
    A = torch.zeros(m, 1, dtype=torch.float64)         # L_k theta_k^2; 0 = (re)start
    for t in range(1, max_iter + 1):
        theta = torch.where(A > 0, (torch.sqrt(A * A + 4 * L * A) - A) / (2 * L),
                            torch.ones_like(A))
        ry = (1 - theta) * xH + theta * zH - Z          # y = (1 - theta) x + theta z
        fy = (ry * ry).sum(dim=1, keepdim=True)
        g = ry @ HT2
        pz_new = pz - g / (theta * L)
        pz_new -= pz_new.max(dim=1, keepdim=True).values
        z_new = torch.softmax(pz_new, dim=1)
        zH_new = z_new @ H
        step = z_new - z                                # x_new - y = theta * (z_new - z)
        xH_new = (1 - theta) * xH + theta * zH_new
        f_new = ((xH_new - Z) ** 2).sum(dim=1, keepdim=True)
        bound = fy + theta * (g * step).sum(dim=1, keepdim=True) \
            + 0.5 * L * (theta * step.abs().sum(dim=1, keepdim=True)) ** 2
        ok = f_new <= bound + 1e-12 * fy + tiny
        accept = ok & (f_new <= fx)
        rose = ok & ~accept
        x_new = (1 - theta) * x + theta * z_new
        if bool(rose.any()):                            # restart the momentum at x
            pz = torch.where(rose, torch.log(x.clamp_min(tiny)), pz)
            z = torch.where(rose, x, z)
            zH = torch.where(rose, xH, zH)
            A = torch.where(rose, torch.zeros_like(A), A)
        pz = torch.where(accept, pz_new, pz)
        z = torch.where(accept, z_new, z)
        zH = torch.where(accept, zH_new, zH)
        x = torch.where(accept, x_new, x)
        xH = torch.where(accept, xH_new, xH)
        fx = torch.where(accept, f_new, fx)
        A = torch.where(accept, L * theta * theta, A)
        L = torch.where(accept, L * _SHRINK, torch.where(ok, L, 2 * L))
        if t % check_every and t != max_iter:
            continue
        gx = (xH - Z) @ HT2
        gap = (gx * x).sum(dim=1) - gx.min(dim=1).values
        done = gap <= tol * start[:, 0]
        if t == max_iter:
            done = torch.ones_like(done)
        if bool(done.any()):
            finished = rows[done]
            weights[finished] = x[done]
            objective[finished] = fx[done, 0]
            n_iter[finished] = t
            keep = ~done
            if not bool(keep.any()):
                break
            rows, Z, pz, z, zH, x, xH, fx, start, L, A = (
                v[keep] for v in (rows, Z, pz, z, zH, x, xH, fx, start, L, A))
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
        check_every: steps between convergence checks.
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
        "batch_size": Interval(int, 1, None),
        "progress": bool,
    }

    def __init__(self, layer: str | None = None, *, tol: float = 1e-3,
                 max_iter: int = 2000, check_every: int = 10, batch_size: int = 1024,
                 device: str | torch.device | None = None, progress: bool = True) -> None:
        self.layer = layer
        self.tol = tol
        self.max_iter = max_iter
        self.check_every = check_every
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
                                      max_iter=self.max_iter, check_every=self.check_every)
            parts.append(w.to(test_reps.dtype))
            objectives.append(f)
            iters.append(k)
        self.objective_ = torch.cat(objectives)
        self.n_iter_ = torch.cat(iters)
        logger.debug("SimplEx: %d test points, median %d steps", len(test_reps),
                     int(self.n_iter_.median()) if len(self.n_iter_) else 0)
        return torch.cat(parts)
