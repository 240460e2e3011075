"""Influence functions: against an explicit Hessian built independently, Koh & Liang's sign and
scale checked by re-solving a ridge regression with an upweighted sample, both solvers."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentsurgeon.errors import LatentSurgeonError
from latentsurgeon.explain import InfluenceFunctions

from .conftest import images, make_ae, make_classifier, tabular


def flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def classifier_loss(model: nn.Module, flat: torch.Tensor, x: torch.Tensor,
                    y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``model`` with its parameters replaced by ``flat``."""
    params, offset = {}, 0
    for name, p in model.named_parameters():
        params[name] = flat[offset:offset + p.numel()].reshape(p.shape)
        offset += p.numel()
    return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)


def explicit_influence(model, train, test, damping, *, hessian_rows=None):
    """-g_test^T (H + damping I)^-1 g_train with H from torch.autograd.functional.hessian."""
    x, y = train
    flat = flat_parameters(model)
    hx, hy = (x, y) if hessian_rows is None else (x[hessian_rows], y[hessian_rows])
    hessian = torch.autograd.functional.hessian(
        lambda v: classifier_loss(model, v, hx, hy), flat)

    def grads(xs, ys):
        return torch.stack([torch.autograd.functional.jacobian(
            lambda v, a=a, b=b: classifier_loss(model, v, a[None], b[None]), flat)
            for a, b in zip(xs, ys, strict=True)])

    system = hessian + damping * torch.eye(len(flat), dtype=torch.float64)
    scores = -grads(*test) @ torch.linalg.solve(system, grads(x, y).T)
    return scores, hessian


@pytest.mark.parametrize(("solver", "batch_size"),
                         [("exact", 1), ("exact", 7), ("exact", 31), ("cg", 7), ("cg", 31)])
def test_scores_equal_an_explicit_hessian_solve(solver, batch_size):
    model = make_classifier()
    train, test = tabular(31), tabular(6, seed=4)
    expected, hessian = explicit_influence(model, train, test, damping=1.0)
    explainer = InfluenceFunctions("cross_entropy", damping=1.0, solver=solver,
                                   batch_size=batch_size, cg_tol=1e-12)
    scores = explainer.scores(model, train, test)
    assert scores.shape == (6, 31) and scores.dtype == torch.float64
    torch.testing.assert_close(scores, expected, rtol=1e-8, atol=1e-12)
    assert explainer.solver_ == solver
    if solver == "exact":
        torch.testing.assert_close(explainer.hessian_, hessian, rtol=1e-10, atol=1e-13)


def test_sign_and_scale_are_koh_and_liangs():
    """Ridge regression trained to its exact optimum: the score is d L_test / d eps for the
    objective mean loss + eps * loss_j + damping/2 |w|^2 (checked by re-solving it)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(25, 3, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) \
        + 0.3 * torch.randn(25, generator=g, dtype=torch.float64)
    x_test = torch.randn(4, 3, generator=g, dtype=torch.float64)
    y_test = torch.randn(4, generator=g, dtype=torch.float64)
    lam = 0.1

    def solve(weights: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(X.T @ (weights[:, None] * X) + lam * torch.eye(3,
                                  dtype=torch.float64), X.T @ (weights * y))

    model = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(solve(torch.full((25,), 1 / 25, dtype=torch.float64))[None])

    def squared(output, batch):
        return 0.5 * ((output.reshape(-1) - batch[1].reshape(-1)) ** 2).sum()

    scores = InfluenceFunctions(squared, damping=lam).scores(model, (X, y), (x_test, y_test))
    eps = 1e-6
    for j in (0, 7, 19):
        up, down = torch.full((25,), 1 / 25, dtype=torch.float64), None
        down = up.clone()
        up[j] += eps
        down[j] -= eps

        def test_loss(w: torch.Tensor) -> torch.Tensor:
            return 0.5 * (x_test @ w - y_test) ** 2

        derivative = (test_loss(solve(up)) - test_loss(solve(down))) / (2 * eps)
        torch.testing.assert_close(scores[:, j], derivative, rtol=1e-5, atol=1e-9)


def test_an_autoencoder_on_plain_tensors():
    """lfxai's tensor API crashes here (a list where a tensor is expected)."""
    ae = make_ae()
    x = images(12)
    scores = InfluenceFunctions("reconstruction", params="encoder", damping=0.1).scores(
        ae, x, x[:3])
    assert scores.shape == (3, 12)
    # an example is helpful to itself: its own score is among the most negative in its row
    assert all(int(scores[i].argsort()[:3].eq(i).sum()) == 1 for i in range(3))


def test_an_indefinite_system_falls_back_to_lu_exact_and_is_refused_by_cg(caplog):
    model = make_classifier()
    train, test = tabular(31), tabular(3, seed=4)
    expected, hessian = explicit_influence(model, train, test, damping=0.01)
    assert float(torch.linalg.eigvalsh(hessian)[0]) < -0.01  # the system is indefinite
    with caplog.at_level(logging.WARNING, logger="latentsurgeon.explain.influence"):
        scores = InfluenceFunctions("cross_entropy", damping=0.01, solver="exact").scores(
            model, train, test)
    assert "not positive definite" in caplog.text
    torch.testing.assert_close(scores, expected, rtol=1e-8, atol=1e-10)
    with pytest.raises(LatentSurgeonError, match="non-positive curvature"):
        InfluenceFunctions("cross_entropy", damping=0.01, solver="cg").scores(model, train, test)


def test_hessian_on_a_seeded_subset_and_uncached_training_gradients():
    model = make_classifier()
    train, test = tabular(31), tabular(4, seed=4)
    chosen = torch.randperm(31, generator=torch.Generator().manual_seed(3))[:12].sort().values
    expected, _ = explicit_influence(model, train, test, damping=1.0, hessian_rows=chosen)
    explainer = InfluenceFunctions("cross_entropy", damping=1.0, hessian_samples=12, seed=3,
                                   cache_mb=0.0)
    scores = explainer.scores(model, train, test)
    assert not explainer.gradients_cached_
    torch.testing.assert_close(scores, expected, rtol=1e-8, atol=1e-12)


def test_saved_exact_solver_reloads_its_hessian(tmp_path):
    model = make_classifier()
    train, test = tabular(20), tabular(3, seed=4)
    explainer = InfluenceFunctions("cross_entropy", damping=1.0).fit(model, train)
    explainer.save(tmp_path / "if.pt")
    loaded = InfluenceFunctions.load(tmp_path / "if.pt")
    torch.testing.assert_close(loaded.hessian_, explainer.hessian_)
    g = torch.randn(2, explainer.n_params_, dtype=torch.float64)
    torch.testing.assert_close(loaded.inverse_hvp(g), explainer.inverse_hvp(g))
    with pytest.raises(LatentSurgeonError, match=r"without the model .* model=model"):
        loaded.explain(test)
    again = InfluenceFunctions.load(tmp_path / "if.pt", model=model)
    torch.testing.assert_close(again.explain(test), explainer.explain(test), rtol=0, atol=0)
    # the CG solver reads the training data at every explain: a saved one could not explain
    cg = InfluenceFunctions("cross_entropy", damping=1.0, solver="cg").fit(model, train)
    with pytest.raises(LatentSurgeonError, match="conjugate-gradient"):
        cg.save(tmp_path / "cg.pt")
    assert not (tmp_path / "cg.pt").exists()
