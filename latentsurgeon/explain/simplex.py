"""SimplEx (Crabbe et al., 2021): each test representation as a convex combination of training
representations; the weights are the example importance."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from latentsurgeon._validation import Interval
from latentsurgeon.errors import ShapeMismatchError
from latentsurgeon.explain._base import Block, ExampleExplainer
from latentsurgeon.explain.representations import block_representations, representations

__all__ = ["SimplEx", "simplex_weights"]

logger = logging.getLogger(__name__)

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8


def simplex_weights(test_reps: torch.Tensor, train_reps: torch.Tensor, *, lr: float = 1.0,
                    tol: float = 1e-3, max_iter: int = 2000, check_every: int = 10
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve ``min_w ||w @ train_reps - z||^2`` over the simplex for every row ``z``, at once.

    ``w = softmax(p)``; ``p`` starts at 0 (uniform weights) and follows Adam with the analytic
    gradient ``w * (g - <w, g>)``, ``g = 2 (w H - z) H^T``. Every ``check_every`` steps each
    row's objective is compared with its value at the previous check: a row whose objective
    rose halves its own step size; a row whose objective fell by at most ``tol`` times its
    previous value (relative) has converged and leaves the working set. The best checked
    iterate of each row is returned, so a row's objective never ends above its start.

    Every operation acts on rows independently (its own step size, its own stopping time), so a
    row's weights do not depend on which other rows are solved with it, up to floating-point
    rounding of the matrix products.

    Args:
        test_reps: ``(m, D)`` representations to decompose.
        train_reps: ``(n, D)`` corpus.
        lr: Adam's initial step size on ``p``.
        tol: relative decrease of a row's objective over ``check_every`` steps below which the
            row has converged.
        max_iter: the most steps any row takes.
        check_every: steps between convergence checks.

    Returns:
        ``(weights (m, n), objective (m,), n_iter (m,))``: the weights (rows on the simplex),
        each row's squared error ``||w H - z||^2`` and the steps it took.
    """
    if test_reps.shape[1] != train_reps.shape[1]:
        raise ShapeMismatchError(
            f"Test representations have {test_reps.shape[1]} features, training ones "
            f"{train_reps.shape[1]}; they must come from the same layer.")
    dtype = torch.promote_types(test_reps.dtype, train_reps.dtype)
    H, Z = train_reps.to(dtype), test_reps.to(dtype)
    m, n = len(Z), len(H)
    weights = torch.empty(m, n, dtype=dtype)
    objective = torch.empty(m, dtype=dtype)
    n_iter = torch.full((m,), max_iter, dtype=torch.long)
    HT2 = 2.0 * H.T                             # g = 2 (w H - z) H^T
    rows = torch.arange(m)                      # original index of each working row
    z = Z
    p = torch.zeros(m, n, dtype=dtype)
    mom, vel = torch.zeros_like(p), torch.zeros_like(p)
    step = torch.full((m, 1), float(lr), dtype=dtype)
    best_p = p.clone()
    w = torch.softmax(p, dim=1)
    r = w @ H - z
    previous = (r * r).sum(dim=1)
    best = previous.clone()
    for t in range(1, max_iter + 1):
        g = r @ HT2
        g -= (w * g).sum(dim=1, keepdim=True)
        g *= w                                  # d objective / d p
        mom.mul_(_BETA1).add_(g, alpha=1 - _BETA1)
        vel.mul_(_BETA2).addcmul_(g, g, value=1 - _BETA2)
        # Adam with its bias corrections folded into one scalar per step
        scale = (1 - _BETA2 ** t) ** 0.5 / (1 - _BETA1 ** t)
        p.addcdiv_(mom * (step * -scale), vel.sqrt().add_(_EPS * (1 - _BETA2 ** t) ** 0.5))
        w = torch.softmax(p, dim=1)
        r = w @ H - z
        if t % check_every and t != max_iter:
            continue
        f = (r * r).sum(dim=1)
        improved = f < best
        best = torch.where(improved, f, best)
        best_p[improved] = p[improved]
        rose = f > previous
        step[rose] *= 0.5
        done = ~rose & (previous - f <= tol * previous)
        previous = f
        if t == max_iter:
            done = torch.ones_like(done)
        if bool(done.any()):
            finished = rows[done]
            weights[finished] = torch.softmax(best_p[done], dim=1)
            objective[finished] = best[done]
            n_iter[finished] = t
            keep = ~done
            if not bool(keep.any()):
                break
            rows, z, p, mom, vel, step, best_p, best, previous, w, r = (
                x[keep] for x in (rows, z, p, mom, vel, step, best_p, best, previous, w, r))
    return weights, objective, n_iter


class SimplEx(ExampleExplainer):
    """Example importance as corpus weights: ``f(x) ~ sum_n w_n f(x_n)``, ``w`` on the simplex.

    Solves every test point of a block of ``batch_size`` at once with a convergence criterion
    (see :func:`simplex_weights`), where lfxai runs 1,000 Adam steps at learning rate 1e-3 per
    block of 50 and leaves the last partial block at zero.

    Args:
        layer: the layer whose output represents a sample (the model's output when None), or
            the layer of an :class:`~latentsurgeon.activations.ActivationStore` to read.
        lr: Adam's initial step size on the softmax parameters.
        tol: relative objective decrease (over ``check_every`` steps) at which a row stops.
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
        "lr": Interval(float, 0, None, closed="neither"),
        "tol": Interval(float, 0, None),
        "max_iter": Interval(int, 1, None),
        "check_every": Interval(int, 1, None),
        "batch_size": Interval(int, 1, None),
        "progress": bool,
    }

    def __init__(self, layer: str | None = None, *, lr: float = 1.0, tol: float = 1e-3,
                 max_iter: int = 2000, check_every: int = 10, batch_size: int = 1024,
                 device: str | torch.device | None = None, progress: bool = False) -> None:
        self.layer = layer
        self.lr = lr
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
        test_reps = representations(test, self._model, self.layer, batch_size=self.batch_size,
                                    device=self.device, progress=self.progress)
        parts, objectives, iters = [], [], []
        starts = range(0, len(test_reps), self.batch_size)
        for start in tqdm(starts, desc="SimplEx", unit="block", leave=False,
                          disable=None if self.progress else True):
            w, f, k = simplex_weights(test_reps[start:start + self.batch_size],
                                      self.train_representations_, lr=self.lr, tol=self.tol,
                                      max_iter=self.max_iter, check_every=self.check_every)
            parts.append(w)
            objectives.append(f)
            iters.append(k)
        self.objective_ = torch.cat(objectives)
        self.n_iter_ = torch.cat(iters)
        logger.debug("SimplEx: %d test points, median %d steps", len(test_reps),
                     int(self.n_iter_.median()) if len(self.n_iter_) else 0)
        return torch.cat(parts)
