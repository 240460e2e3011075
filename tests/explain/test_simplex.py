"""SimplEx: certified convergence to the constrained least-squares optimum (an independent
projected-gradient solver) by both solvers, the active-set weights equal to the reference's
where the optimum is unique, row independence, every test point solved, lfxai's defects."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.explain import SimplEx, simplex_weights

from .conftest import images, make_ae

HAS_LFXAI = importlib.util.find_spec("lfxai") is not None


def problem(seed: int, n: int = 40, m: int = 9, d: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64),
            0.7 * torch.randn(m, d, generator=g, dtype=torch.float64))


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the simplex (sort-based, Held et al.)."""
    u = torch.sort(v, dim=1, descending=True).values
    css = u.cumsum(dim=1) - 1
    index = torch.arange(1, v.shape[1] + 1, dtype=v.dtype)
    rho = ((u - css / index > 0) * index).argmax(dim=1, keepdim=True)
    theta = css.gather(1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp_min(0)


def optimum(train: torch.Tensor, test: torch.Tensor, steps: int = 3000) -> torch.Tensor:
    """min ||w H - z||^2 on the simplex by FISTA with exact projections: the reference."""
    w = optimal_weights(train, test, steps)
    return ((w @ train - test) ** 2).sum(dim=1)


def optimal_weights(train: torch.Tensor, test: torch.Tensor, steps: int = 3000) -> torch.Tensor:
    """The reference's weights (FISTA with exact projections onto the simplex)."""
    lipschitz = 2 * torch.linalg.eigvalsh(train @ train.T).max()
    w = torch.full((len(test), len(train)), 1 / len(train), dtype=torch.float64)
    y, t = w.clone(), 1.0
    for _ in range(steps):
        w_next = project_simplex(y - 2 * (y @ train - test) @ train.T / lipschitz)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = w_next + (t - 1) / t_next * (w_next - w)
        w, t = w_next, t_next
    return w


@pytest.mark.parametrize("solver", ["active-set", "mirror-descent"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tol", [1e-2, 1e-3])
def test_the_tolerance_certifies_the_distance_to_the_optimum(seed, tol, solver):
    train, test = problem(seed)
    weights, objective, n_iter = simplex_weights(test, train, tol=tol, max_iter=20000,
                                                 solver=solver)
    assert torch.allclose(weights.sum(dim=1), torch.ones(len(test), dtype=torch.float64))
    assert bool((weights >= 0).all())
    torch.testing.assert_close(objective, ((weights @ train - test) ** 2).sum(dim=1))
    start = ((train.mean(0) - test) ** 2).sum(dim=1)
    gap = objective - optimum(train, test)
    assert bool((gap >= -1e-9).all())              # nothing beats the optimum
    assert bool((gap <= tol * start).all())        # the promise of tol
    assert bool((n_iter < 20000).all())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_active_set_weights_are_the_unique_optimum(seed):
    # fewer training points than dimensions: affinely independent, so the optimum's weights
    # are unique and the reference (FISTA) must reach the same ones
    train, test = problem(seed, n=8, m=12, d=12)
    weights, _, n_iter = simplex_weights(test, train, tol=1e-12, max_iter=100)
    torch.testing.assert_close(weights, optimal_weights(train, test), rtol=0, atol=1e-9)
    assert bool((n_iter < 100).all())


def test_active_set_and_mirror_descent_reach_the_same_objective():
    # more training points than dimensions (the usual case): the weights may differ where a
    # test point lies inside the hull, the objective may not (both within tol of the optimum);
    # the active-set solver's is never higher and it takes a few steps, not hundreds
    train, test = problem(0, n=200, m=30, d=5)
    start = ((train.mean(0) - test) ** 2).sum(dim=1)
    tol = 1e-4
    sparse, f_sparse, steps = simplex_weights(test, train, tol=tol, max_iter=20000)
    _, f_dense, dense_steps = simplex_weights(test, train, tol=tol, max_iter=20000,
                                              solver="mirror-descent")
    assert bool(((f_sparse - f_dense).abs() <= tol * start).all())
    assert bool((f_sparse <= f_dense + 1e-12).all())
    assert bool(((sparse > 0).sum(dim=1) <= 5 + 1).all())   # at most D + 1 points
    assert int(steps.max()) < int(dense_steps.max())


def test_rows_beyond_the_active_set_bound_are_finished_by_mirror_descent(monkeypatch):
    from latentsurgeon.explain import _simplex_solvers

    train, test = problem(6, n=60, m=8, d=20)
    free, _, _ = simplex_weights(test, train, tol=1e-4, max_iter=20000)
    monkeypatch.setattr(_simplex_solvers, "MAX_ACTIVE", 2)
    weights, objective, _ = simplex_weights(test, train, tol=1e-4, max_iter=20000)
    start = ((train.mean(0) - test) ** 2).sum(dim=1)
    assert bool(((objective - optimum(train, test)) <= 1e-4 * start).all())
    assert bool(((weights > 1e-9).sum(dim=1) > 2).any())   # dense rows: mirror descent's
    assert not torch.equal(weights, free)


def test_duplicated_training_points_are_solved():
    # affinely dependent corpus (every point twice, and a point inside the others' hull)
    train, test = problem(7, n=15, m=10, d=3)
    train = torch.cat([train, train, train[:3].mean(0, keepdim=True)])
    weights, objective, _ = simplex_weights(test, train, tol=1e-6, max_iter=20000)
    assert bool(torch.isfinite(weights).all()) and bool((weights >= 0).all())
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(10, dtype=torch.float64))
    start = ((train.mean(0) - test) ** 2).sum(dim=1)
    assert bool(((objective - optimum(train, test)) <= 1e-6 * start).all())


def test_max_iter_stops_on_the_simplex():
    train, test = problem(8, n=100, m=20, d=30)
    weights, objective, n_iter = simplex_weights(test, train, max_iter=2)
    assert bool((n_iter <= 2).all()) and bool((weights >= 0).all())
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(20, dtype=torch.float64))
    torch.testing.assert_close(objective, ((weights @ train - test) ** 2).sum(dim=1))


def test_an_extreme_training_point_is_recovered():
    # points on a sphere are all vertices of their hull: a vertex's only convex combination is
    # itself
    train, _ = problem(3, n=20, d=5)
    train = train / train.norm(dim=1, keepdim=True)
    weights, objective, _ = simplex_weights(train[[4, 11]], train, tol=1e-6, max_iter=20000)
    assert weights.argmax(dim=1).tolist() == [4, 11]
    assert bool((weights.max(dim=1).values > 0.99).all())
    assert bool((objective < 1e-5).all())


def test_rows_do_not_depend_on_which_rows_are_solved_with_them():
    train, test = problem(0)
    together = SimplEx(batch_size=9).scores(None, train, test)
    for batch_size in (1, 4):
        apart = SimplEx(batch_size=batch_size).scores(None, train, test)
        torch.testing.assert_close(apart, together, rtol=0, atol=1e-12)


def test_every_test_point_is_solved_including_the_last_partial_block():
    """lfxai's attribute solves int(n_test / batch_size) blocks and leaves the rest at zero."""
    train, test = problem(4, m=11)
    explainer = SimplEx(batch_size=4)
    weights = explainer.scores(None, train, test)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(11, dtype=torch.float64))
    assert explainer.objective_.shape == (11,) and explainer.n_iter_.shape == (11,)


@pytest.mark.skipif(not HAS_LFXAI, reason="lfxai is not installed (reference only)")
def test_objective_is_lower_than_lfxais():
    from lfxai.explanations.examples import SimplEx as LfxaiSimplEx

    train, test = problem(5, n=30, m=6)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 1,000 tiny autograd steps: thread hand-offs would dominate
    try:
        theirs = LfxaiSimplEx.compute_weights(test.float(), train.float()).double()
    finally:
        torch.set_num_threads(threads)
    explainer = SimplEx()
    ours = explainer.scores(None, train, test)
    their_objective = ((theirs @ train - test) ** 2).sum(dim=1)
    assert bool((explainer.objective_ <= their_objective + 1e-6).all())
    torch.testing.assert_close(explainer.objective_, ((ours @ train - test) ** 2).sum(dim=1))


def test_representations_of_a_layer():
    ae = make_ae()
    x_train, x_test = images(30), images(5, seed=7)
    with torch.no_grad():
        direct = SimplEx().scores(None, ae.encoder(x_train), ae.encoder(x_test))
    through = SimplEx("encoder").scores(ae, x_train, x_test)
    torch.testing.assert_close(through, direct, rtol=0, atol=1e-12)


def test_bad_parameters_are_refused():
    train, test = problem(0)
    with pytest.raises(InvalidParameterError, match="tol"):
        SimplEx(tol=-1.0).fit(None, train)
    with pytest.raises(InvalidParameterError, match="max_iter"):
        SimplEx(max_iter=0).fit(None, train)
