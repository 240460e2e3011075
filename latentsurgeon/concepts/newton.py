"""Many small regularised linear fits at once: Newton's method, batched, in float64.

Every problem ``p`` of a batch minimises

    J(coef, b) = sum_i c_i * loss(y_i, z_i . coef + b) + 1/2 ||coef||^2

over the rows ``z_i`` of its (standardised) data, labels ``y_i`` in {-1, +1}, row weights
``c_i >= 0`` (class balance times the inverse regularisation ``C``; a weight of 0 leaves a row out,
which is how a held-out split shares its problem's data) and an unpenalised intercept ``b``.
``loss`` is ``"logistic"`` (``log(1 + exp(-y f))``: scikit-learn's ``LogisticRegression``) or
``"squared"`` (``(y - f)^2``: ``RidgeClassifier``; one Newton step solves it).

Two parametrisations, the cheaper one is used:

* **dual** (more features than rows, e.g. a flattened conv layer): ``coef = Z^T a``. Only the Gram
  matrix ``K = Z Z^T`` (``n x n``) enters; a Newton step solves the ``(n + 1)``-square system
  ``[[W K + I, W 1], [1^T, 0]] [da; db] = [-(g + a); -1^T a]`` (``g``, ``W``: first and second
  derivatives of the weighted loss), a Newton step of ``J`` written in ``a``; at the optimum
  ``a = -g``, which is unique even where ``K`` is singular.
* **primal** (fewer features than rows): the ``(d + 1)``-square Hessian of ``J`` in ``(coef, b)``.

Each step backtracks (Armijo) per problem; iterations run until the Newton decrement stops
falling (machine precision: Newton converges quadratically), so results do not depend on a
solver tolerance and equal scikit-learn's to its own tolerance.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np
import torch

from latentsurgeon.errors import NonFiniteError

logger = logging.getLogger(__name__)

__all__ = ["LOSSES", "newton_dual", "newton_primal", "solve_batched"]

LOSSES = ("logistic", "squared")
_STEPS = 2.0 ** -torch.arange(0, 40, dtype=torch.float64)  # backtracking step sizes


def solve_batched(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``x`` with ``A[p] x[p] = b[p]`` for every problem: ``A`` ``(B, m, m)``, ``b`` ``(B, m)``.

    On the CPU the systems go to NumPy's LAPACK. PyTorch's batched CPU solve runs one MKL
    factorisation per problem on its own thread pool, and MKL then opens nested OpenMP teams: with
    two or more threads that returned wrong pivots (pytorch/pytorch#142815, still in 2.13: "MKL
    ERROR: Parameter 6 was incorrect on entry to SLASWP" for a batch of 151-square identities) or
    spun forever on a loaded machine. Other devices use ``torch.linalg.solve``.

    Systems of up to :data:`_ONE_THREAD_SIDE` unknowns are factorised on one BLAS thread: NumPy
    loops over the batch and each factorisation is too small to split, so extra BLAS threads
    only wake and wait (a batch of 20 201-square systems took 6x longer on two threads of a
    loaded 2-core machine).
    """
    if A.device.type != "cpu":
        return torch.linalg.solve(A, b)
    with _blas_threads(A.shape[-1]):
        x = np.linalg.solve(A.detach().numpy(), b.detach().numpy()[:, :, None])[:, :, 0]
    return torch.from_numpy(x).to(A.dtype)


_ONE_THREAD_SIDE = 1024
_CONTROLLER: Any = None


def _blas_threads(side: int) -> Any:
    """One BLAS thread for systems of at most :data:`_ONE_THREAD_SIDE` unknowns, else as set."""
    global _CONTROLLER
    if side > _ONE_THREAD_SIDE:
        return contextlib.nullcontext()
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


def _loss(loss: str, y: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    if loss == "logistic":
        return torch.nn.functional.softplus(-y * f)
    return (y - f) ** 2


def _derivatives(loss: str, y: torch.Tensor, f: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """First and second derivative of the loss w.r.t. ``f``, elementwise."""
    if loss == "logistic":
        p = torch.sigmoid(-y * f)  # probability of the wrong label
        return -y * p, p * (1.0 - p)
    return 2.0 * (f - y), torch.full_like(f, 2.0)


class _Newton:
    """The shared loop: a step proposal (by the parametrisation), backtracking, stopping."""

    def __init__(self, loss: str, y: torch.Tensor, c: torch.Tensor, max_iter: int) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.loss, self.y, self.c, self.max_iter = loss, y, c, max_iter

    def objective(self, f: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
        return (self.c * _loss(self.loss, self.y, f)).sum(-1) + reg

    def line_search(self, f: torch.Tensor, df: torch.Tensor, reg: tuple[torch.Tensor, ...],
                    slope: torch.Tensor) -> torch.Tensor:
        """Largest step ``t`` in 1, 1/2, 1/4 ... with sufficient decrease, per problem ``(B,)``.

        ``f + t df`` are the margins at step ``t``; ``reg = (r0, r1, r2)`` gives the penalty
        ``r0 + t r1 + t^2 r2``; ``slope`` is the directional derivative of ``J`` at ``t = 0``.
        """
        t = _STEPS.to(f.device)
        margins = f[:, None, :] + t[None, :, None] * df[:, None, :]      # (B, T, n)
        penalty = reg[0][:, None] + t * reg[1][:, None] + t * t * reg[2][:, None]
        values = (self.c[:, None, :] * _loss(self.loss, self.y[:, None, :], margins)).sum(-1)
        values = values + penalty                                           # (B, T)
        start = self.objective(f, reg[0])
        ok = values <= start[:, None] + 1e-4 * t[None, :] * slope[:, None]
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full_like(slope, -1).long())
        return torch.where(first >= 0, t[first.clamp(min=0)], torch.zeros_like(slope))

    @staticmethod
    def converged(decrement: torch.Tensor, value: torch.Tensor,
                  previous: torch.Tensor | None) -> bool:
        """True once every problem's Newton decrement is at the rounding floor of its objective
        (coefficients then agree to ~1e-10 relative), or has stopped shrinking below 1e-12
        (rounding noise, where further steps cannot help)."""
        scale = value.abs().clamp(min=1.0)
        if bool((decrement <= 1e-20 * scale).all()):
            return True
        if previous is None:
            return False
        stalled = (decrement >= previous) & (decrement <= 1e-12 * scale)
        return bool((stalled | (decrement <= 1e-20 * scale)).all())


def newton_dual(K: torch.Tensor, y: torch.Tensor, c: torch.Tensor, *, loss: str = "logistic",
                max_iter: int = 100, start: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve a batch of problems given their Gram matrices.

    Args:
        K: ``(B, n, n)`` Gram matrices ``Z Z^T`` (float64). Padding rows (of problems with fewer
            rows) are zero and get weight 0.
        y: ``(B, n)`` labels in {-1, +1}.
        c: ``(B, n)`` row weights (0 = row not used).
        loss: ``"logistic"`` or ``"squared"``.
        start: ``(a, b)`` to start from (e.g. the solution of a similar problem); default 0.

    Returns:
        ``(a, b)``: ``(B, n)`` dual coefficients (``coef = Z^T a``) and ``(B,)`` intercepts.
    """
    B, n, _ = K.shape
    newton = _Newton(loss, y, c, max_iter)
    if start is None:
        a = torch.zeros(B, n, dtype=K.dtype, device=K.device)
        b = torch.zeros(B, dtype=K.dtype, device=K.device)
    else:
        a, b = start[0].clone(), start[1].clone()
    eye = torch.eye(n, dtype=K.dtype, device=K.device)
    system = torch.zeros(B, n + 1, n + 1, dtype=K.dtype, device=K.device)
    system[:, n, :n] = 1.0
    previous = None
    for _ in range(max_iter):
        Ka = torch.bmm(K, a[:, :, None])[:, :, 0]
        f = Ka + b[:, None]
        g, h = _derivatives(loss, y, f)
        g, W = c * g, c * h
        system[:, :n, :n] = W[:, :, None] * K + eye
        system[:, :n, n] = W
        rhs = torch.cat([-(g + a), -a.sum(1, keepdim=True)], dim=1)
        step = solve_batched(system, rhs)
        da, db = step[:, :n], step[:, n]
        Kda = torch.bmm(K, da[:, :, None])[:, :, 0]
        # gradient of J: (K (g + a), sum g); its product with the step
        slope = ((g + a) * Kda).sum(1) + g.sum(1) * db
        decrement = -slope
        value = newton.objective(f, 0.5 * (a * Ka).sum(1))
        if not torch.isfinite(step).all():
            raise NonFiniteError("The CAV solver produced NaN or Inf (the activations are too "
                                 "large or ill-conditioned for float64).")
        reg = (0.5 * (a * Ka).sum(1), (a * Kda).sum(1), 0.5 * (da * Kda).sum(1))
        t = newton.line_search(f, Kda + db[:, None], reg, slope)
        a = a + t[:, None] * da
        b = b + t * db
        if newton.converged(decrement.clamp(min=0), value, previous):
            break
        previous = decrement.clamp(min=0)
    else:
        logger.debug("newton_dual: %d iterations without reaching the rounding floor", max_iter)
    return a, b


def newton_primal(Z: torch.Tensor, y: torch.Tensor, c: torch.Tensor, *, loss: str = "logistic",
                  max_iter: int = 100, start: tuple[torch.Tensor, torch.Tensor] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve a batch of problems given their data.

    Args:
        Z: ``(B, n, d)`` standardised rows (float64); padding rows are zero with weight 0.
        y, c, loss, start: as :func:`newton_dual` (``start = (coef, b)``).

    Returns:
        ``(coef, b)``: ``(B, d)`` and ``(B,)``.
    """
    B, n, d = Z.shape
    newton = _Newton(loss, y, c, max_iter)
    if start is None:
        w = torch.zeros(B, d, dtype=Z.dtype, device=Z.device)
        b = torch.zeros(B, dtype=Z.dtype, device=Z.device)
    else:
        w, b = start[0].clone(), start[1].clone()
    eye = torch.eye(d, dtype=Z.dtype, device=Z.device)
    ones = torch.ones(B, n, 1, dtype=Z.dtype, device=Z.device)
    Z1 = torch.cat([Z, ones], dim=2)                                       # (B, n, d + 1)
    previous = None
    for _ in range(max_iter):
        f = torch.bmm(Z, w[:, :, None])[:, :, 0] + b[:, None]
        g, h = _derivatives(loss, y, f)
        g, W = c * g, c * h
        hessian = torch.bmm(Z1.transpose(1, 2), W[:, :, None] * Z1)
        hessian[:, :d, :d] += eye
        grad = torch.bmm(Z1.transpose(1, 2), g[:, :, None])[:, :, 0]
        grad[:, :d] += w
        step = -solve_batched(hessian, grad)
        if not torch.isfinite(step).all():
            raise NonFiniteError("The CAV solver produced NaN or Inf (the activations are too "
                                 "large or ill-conditioned for float64).")
        dw, db = step[:, :d], step[:, d]
        slope = (grad * step).sum(1)
        value = newton.objective(f, 0.5 * (w * w).sum(1))
        df = torch.bmm(Z, dw[:, :, None])[:, :, 0] + db[:, None]
        reg = (0.5 * (w * w).sum(1), (w * dw).sum(1), 0.5 * (dw * dw).sum(1))
        t = newton.line_search(f, df, reg, slope)
        w = w + t[:, None] * dw
        b = b + t * db
        if newton.converged((-slope).clamp(min=0), value, previous):
            break
        previous = (-slope).clamp(min=0)
    else:
        logger.debug("newton_primal: %d iterations without reaching the rounding floor",
                     max_iter)
    return w, b
