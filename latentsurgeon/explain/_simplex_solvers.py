"""The two solvers behind :func:`latentsurgeon.explain.simplex_weights`.

Both minimise ``f(w) = ||w H - z||^2`` over the simplex for every row ``z`` of ``Z`` at once,
stop a row when its Frank-Wolfe gap ``<grad f(w), w> - min_j grad f(w)_j`` (an upper bound on
``f(w) - min f``) is at most ``tol`` times its objective at uniform weights, and act on rows
independently (own step sizes, own stopping time), so a row's weights do not depend on which
other rows are solved with it. Inputs are float64: ``Z (m, D)``, ``H (n, D)``.

* :func:`active_set` (the default): Wolfe's minimum-norm-point algorithm (1976), the
  fully-corrective Frank-Wolfe method, batched over rows with padded active sets. Each step
  either adds the training point of steepest descent to a row's active set or, when the
  affine minimiser over the set leaves the simplex, moves to the boundary and drops the points
  whose weight reached zero. The affine minimiser is one small KKT solve per row, so a row
  converges in a finite number of steps (typically a few times its support, which is at most
  ``D + 1``), and each step costs one ``(m, D) x (D, n)`` product plus ``(m, K, K)`` solves for
  active sets of at most ``K`` points. The weights are sparse.
* :func:`mirror_descent`: accelerated mirror descent on the softmax parametrisation (the
  previous default): dense weights, hundreds of steps, each several ``(m, n)`` passes. Rows
  whose support outgrows the active-set solver's bound are handed to it.
"""

from __future__ import annotations

import torch

__all__ = ["MAX_ACTIVE", "active_set", "mirror_descent"]

MAX_ACTIVE = 256  # largest active set solved by KKT systems; rows needing more: mirror descent
_SHRINK = 0.7  # a row whose step was accepted tries a 30% smaller curvature bound next
_POSITIVE = 1e-12  # an affine weight at or below this leaves the active set


def active_set(Z: torch.Tensor, H: torch.Tensor, tol: float, max_iter: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Wolfe's minimum-norm-point algorithm on the points ``H - z``, every row at once.

    A step is one affine solve per working row. Returns ``(weights (m, n), objective (m,),
    n_iter (m,), handed_over (m,) bool)``; rows marked ``handed_over`` (their active set
    outgrew :data:`MAX_ACTIVE`, or rounding made a KKT system singular) are not solved here and
    their other outputs are meaningless. A row whose newly added point is dropped again at once
    (its gap is at the level of rounding) stops there.
    """
    m, n = len(Z), len(H)
    weights = torch.zeros(m, n, dtype=torch.float64)
    objective = torch.empty(m, dtype=torch.float64)
    n_iter = torch.full((m,), max_iter, dtype=torch.long)
    handed_over = torch.zeros(m, dtype=torch.bool)
    start = ((H.mean(dim=0) - Z) ** 2).sum(dim=1)           # objective at uniform weights
    # Wolfe starts from the one-point active set of the training point nearest each row
    first = ((H * H).sum(dim=1) - 2 * Z @ H.T).argmin(dim=1)
    K = min(4, MAX_ACTIVE)                                  # active-set slots (grown on demand)
    idx = torch.zeros(m, K, dtype=torch.long)               # training index in each slot
    idx[:, 0] = first
    act = torch.zeros(m, K, dtype=torch.bool)               # slot in use
    act[:, 0] = True
    w = torch.zeros(m, K, dtype=torch.float64)              # weight of each slot (0 when unused)
    w[:, 0] = 1.0
    major = torch.ones(m, dtype=torch.bool)    # w is the affine minimiser of its active set
    stuck = torch.zeros(m, dtype=torch.bool)   # the point just added was dropped at once
    added = torch.zeros(m, dtype=torch.long)   # slot of the point added last
    rows = torch.arange(m)                     # original index of each working row

    def finish(mask: torch.Tensor, t: int) -> None:
        finished = rows[mask]
        full = torch.zeros(len(finished), n, dtype=torch.float64)
        full.scatter_add_(1, idx[mask], w[mask])
        weights[finished] = full
        r = torch.einsum("mk,mkd->md", w[mask], H[idx[mask]]) - Z[mask]
        objective[finished] = (r * r).sum(dim=1)
        n_iter[finished] = t

    for t in range(1, max_iter + 1):
        # Major step, for rows at the affine minimiser of their active set: certify, or add
        # the training point of steepest descent.
        done = stuck.clone()
        if bool(major.any()):
            mj = (major & ~stuck).nonzero().squeeze(1)
            r = torch.einsum("mk,mkd->md", w[mj], H[idx[mj]]) - Z[mj]
            c = r @ H.T                                      # half the gradient
            c_min, j = c.min(dim=1)
            gap = 2 * ((w[mj] * c.gather(1, idx[mj])).sum(dim=1) - c_min)
            stalled = ((idx[mj] == j[:, None]) & act[mj]).any(dim=1)
            certified = (gap <= tol * start[mj]) | stalled
            done[mj] = certified
            grow, j_grow = mj[~certified], j[~certified]
            if len(grow):
                full = act[grow].all(dim=1)
                if bool(full.any()) and K >= MAX_ACTIVE:
                    handed_over[rows[grow[full]]] = True
                    done[grow[full]] = True
                    grow, j_grow = grow[~full], j_grow[~full]
                elif bool(full.any()):
                    extra = min(K, MAX_ACTIVE - K)
                    pad = len(rows), extra
                    idx = torch.cat([idx, torch.zeros(pad, dtype=torch.long)], dim=1)
                    act = torch.cat([act, torch.zeros(pad, dtype=torch.bool)], dim=1)
                    w = torch.cat([w, torch.zeros(pad, dtype=torch.float64)], dim=1)
                    K += extra
            if len(grow):
                slot = (~act[grow]).to(torch.int8).argmax(dim=1)   # the first free slot
                idx[grow, slot] = j_grow
                act[grow, slot] = True
                w[grow, slot] = 0.0
                added[grow] = slot
        if t == max_iter:
            done = torch.ones_like(done)
        if bool(done.any()):
            finish(done & ~handed_over[rows], t)
            keep = ~done
            if not bool(keep.any()):
                break
            rows, idx, act, w, major, stuck, added, Z, start = (
                v[keep] for v in (rows, idx, act, w, major, stuck, added, Z, start))
        # The affine minimiser u of each active set: [[G, s 1], [s 1^T, 0]] [u; mu] = [0; s],
        # G the Gram matrix of the points H_S - z, s its mean diagonal (for conditioning);
        # unused slots are decoupled identity rows, so they solve to 0 whatever K is.
        P = H[idx] - Z[:, None, :]                           # (m, K, D)
        a = act.to(torch.float64)
        G = (P @ P.transpose(1, 2)) * (a[:, :, None] * a[:, None, :])
        G = G + torch.diag_embed(1 - a)
        scale = ((G.diagonal(dim1=1, dim2=2) * a).sum(dim=1) / a.sum(dim=1)).clamp_min(
            torch.finfo(torch.float64).tiny)
        kkt = torch.zeros(len(rows), K + 1, K + 1, dtype=torch.float64)
        kkt[:, :K, :K] = G
        kkt[:, :K, K] = a * scale[:, None]
        kkt[:, K, :K] = a * scale[:, None]
        rhs = torch.zeros(len(rows), K + 1, 1, dtype=torch.float64)
        rhs[:, K, 0] = scale
        sol, info = torch.linalg.solve_ex(kkt, rhs)
        u = sol[:, :K, 0] * a
        singular = (info != 0) | ~torch.isfinite(u).all(dim=1)
        u = torch.where(singular[:, None], w, u)
        inside = ((u > _POSITIVE) | ~act).all(dim=1) & ~singular
        # Outside the simplex: move from w towards u until the first weight reaches zero
        # (theta), then drop every point whose weight is zero.
        leaving = act & (u <= _POSITIVE)
        ratio = torch.where(leaving, w / (w - u).clamp_min(1e-300),
                            torch.full_like(w, float("inf")))
        theta = ratio.min(dim=1, keepdim=True).values.clamp(0, 1)
        w_out = (1 - theta) * w + theta * u
        w_out = torch.where(act & (w_out > _POSITIVE), w_out, torch.zeros_like(w_out))
        w_out = w_out / w_out.sum(dim=1, keepdim=True)
        w = torch.where(inside[:, None] | singular[:, None], u, w_out)
        new_act = act & (w > 0)
        stuck = ~inside & ~singular & (theta[:, 0] <= 0) \
            & ~new_act.gather(1, added[:, None])[:, 0]
        act = new_act
        major = inside
        if bool(singular.any()):                             # rounding defeated the KKT system
            handed_over[rows[singular]] = True
            keep = ~singular
            if not bool(keep.any()):
                break
            rows, idx, act, w, major, stuck, added, Z, start = (
                v[keep] for v in (rows, idx, act, w, major, stuck, added, Z, start))
    return weights, objective, n_iter, handed_over


def mirror_descent(Z: torch.Tensor, H: torch.Tensor, tol: float, max_iter: int,
                   check_every: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Accelerated mirror descent on ``w = softmax(p)``, every row at once.

    Steps are taken on ``p`` (mirror descent with the entropy), accelerated as in
    Nesterov/Tseng's accelerated mirror descent: the returned weights are a running convex
    combination of the ``softmax(p)`` iterates. Each row has its own curvature estimate
    (backtracking on the l1-smoothness inequality: doubled on a failed step, shrunk by 30 %
    after an accepted one) and its momentum restarts when its objective rises; rows are checked
    every ``check_every`` steps. Returns ``(weights (m, n), objective (m,), n_iter (m,))``.
    """
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
