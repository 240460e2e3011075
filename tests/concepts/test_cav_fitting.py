"""Batched CAV fitting: the Newton solve equals scikit-learn's fit of the same problem, batching
and padding change nothing, the held-out direction is the fit on the training rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, RidgeClassifier

from latentsurgeon.concepts import CAV, cav_fitting
from latentsurgeon.concepts.cav_fitting import (
    Problem,
    can_hold_out,
    fit_directions,
    held_out_split,
)
from latentsurgeon.concepts.newton import newton_dual, newton_primal
from latentsurgeon.errors import InvalidParameterError


def _problem_data(n: int, d: int, seed: int, share: float = 0.35):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, size=d) + rng.normal(size=d)
    y = (rng.random(n) < share).astype(int)
    y[:2], y[2:4] = 1, 0
    X[y == 1, : max(1, d // 10)] += 0.8
    return X, y


def _standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sd = X.std(0) + 1e-8
    return (X - X.mean(0)) / sd, sd


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _unit_oriented(w: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    w = w / np.linalg.norm(w)
    return w if (X[y == 1] @ w).mean() >= (X[y == 0] @ w).mean() else -w


# (n, d): more dimensions than rows (the Gram matrix, dual) and fewer (primal)
SHAPES = [(120, 400), (300, 25), (90, 90)]


class TestAgainstScikitLearn:
    @pytest.mark.parametrize("n, d", SHAPES)
    @pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
    def test_logistic(self, n, d, C):
        X, y = _problem_data(n, d, seed=n + d)
        cav = CAV("logistic", C=C).fit(torch.from_numpy(X), torch.from_numpy(y))
        Z, sd = _standardise(X)
        ref = LogisticRegression(C=C, class_weight="balanced", tol=1e-12,
                                 max_iter=100_000).fit(Z, y).coef_[0] / sd
        # scikit-learn's tolerance (not ours: Newton runs to rounding) bounds the agreement
        assert _cos(cav.direction_.double().numpy(), ref) >= 1 - 1e-9
        if C <= 1.0:
            # scikit-learn's defaults (tol=1e-4), what the old CAVs used, are that close too;
            # at C = 100 they stop early (cosine 0.995 with the optimum)
            loose = LogisticRegression(C=C, class_weight="balanced", max_iter=2000).fit(Z, y)
            assert _cos(cav.direction_.double().numpy(), loose.coef_[0] / sd) >= 0.999

    @pytest.mark.parametrize("n, d", SHAPES)
    def test_ridge(self, n, d):
        X, y = _problem_data(n, d, seed=2 * n + d)
        cav = CAV("ridge", C=0.5).fit(torch.from_numpy(X), torch.from_numpy(y))
        Z, sd = _standardise(X)
        ref = RidgeClassifier(alpha=2.0, class_weight="balanced", solver="cholesky").fit(Z, y)
        ref = np.asarray(ref.coef_).reshape(-1) / sd
        assert _cos(cav.direction_.double().numpy(), ref) >= 1 - 1e-10

    def test_pattern_of_the_logistic_filter(self):
        X, y = _problem_data(150, 60, seed=9)
        cav = CAV("pattern").fit(torch.from_numpy(X), torch.from_numpy(y))
        Z, sd = _standardise(X)
        w = LogisticRegression(class_weight="balanced", tol=1e-12, max_iter=100_000).fit(
            Z, y).coef_[0] / sd
        Xc = X - X.mean(0)
        pattern = Xc.T @ (Xc @ w - (Xc @ w).mean()) / (len(X) - 1)  # cov(a, w.a)
        assert _cos(cav.direction_.double().numpy(), pattern) >= 1 - 1e-9

    def test_held_out_score_is_the_fit_on_the_training_rows(self):
        """The held-out direction is fitted on the training rows, standardised (labels unused)
        by all rows of the problem, and scored on the rest."""
        X, y = _problem_data(160, 200, seed=5)
        yt = torch.from_numpy(y)
        train = held_out_split(yt, 0.25, 3).numpy()
        (fitted,) = fit_directions(torch.from_numpy(X), [Problem(torch.arange(160), yt,
                                                                 torch.from_numpy(train))],
                                   method="logistic")
        Z, sd = _standardise(X)
        w = LogisticRegression(class_weight="balanced", tol=1e-12, max_iter=100_000).fit(
            Z[train], y[train]).coef_[0] / sd
        v = _unit_oriented(w, X[train], y[train])
        proj = X @ v
        threshold = 0.5 * (proj[train & (y == 1)].mean() + proj[train & (y == 0)].mean())
        accuracy = ((proj[~train] > threshold) == (y[~train] == 1)).mean()
        assert fitted.scores["accuracy"] == pytest.approx(accuracy, abs=1e-12)
        assert fitted.scores["n_train"] == int(train.sum()) == 120


class TestBatching:
    @pytest.mark.parametrize("memory", ["one batch", "one problem per batch"])
    def test_many_problems_of_different_sizes_equal_one_by_one(self, memory, monkeypatch):
        if memory != "one batch":
            monkeypatch.setattr(cav_fitting, "_SOLVE_BYTES", 1)
        rng = np.random.default_rng(0)
        rows = torch.from_numpy(rng.normal(size=(300, 150)))
        rows[:60, :10] += 1.0
        problems = []
        for i, (n_neg, n_pos) in enumerate([(40, 60), (80, 30), (25, 25), (100, 60)]):
            neg = torch.from_numpy(rng.choice(np.arange(60, 300), n_neg, replace=False))
            pos = torch.arange(n_pos)
            labels = torch.cat([torch.zeros(n_neg), torch.ones(n_pos)]).long()
            problems.append(Problem(torch.cat([neg, pos]), labels,
                                    held_out_split(labels, 0.25, i)))
        for method in ("logistic", "ridge", "pattern", "mass_mean", "signal"):
            together = fit_directions(rows, problems, method=method)
            for p, joint in zip(problems, together, strict=True):
                (alone,) = fit_directions(rows, [p], method=method)
                torch.testing.assert_close(joint.direction, alone.direction, rtol=0, atol=1e-10)
                assert joint.scores == alone.scores
                assert joint.threshold == pytest.approx(alone.threshold, abs=1e-10)

    def test_dual_and_primal_solve_the_same_problem(self):
        X, y = _problem_data(80, 60, seed=1)
        Z = torch.from_numpy(_standardise(X)[0])[None]
        yy = torch.from_numpy(2.0 * y - 1)[None]
        c = torch.from_numpy(np.where(y == 1, 2.0, 0.5))[None]
        a, b_dual = newton_dual(Z @ Z.transpose(1, 2), yy, c)
        w, b_primal = newton_primal(Z, yy, c)
        torch.testing.assert_close(Z[0].T @ a[0], w[0], rtol=0, atol=1e-10)
        torch.testing.assert_close(b_dual, b_primal, rtol=0, atol=1e-10)

    def test_separable_data_with_weak_regularisation_converges(self):
        X, y = _problem_data(60, 500, seed=2)  # separable: 500 dims, 60 rows
        cav = CAV("logistic", C=1e4).fit(torch.from_numpy(X), torch.from_numpy(y))
        assert torch.isfinite(cav.direction_).all()
        assert cav.scores_["accuracy"] > 0.5


def test_roc_auc_equals_scikit_learns_with_ties():
    from sklearn.metrics import roc_auc_score

    from latentsurgeon.concepts.cav_fitting import roc_auc

    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(4, 60))
        y = rng.integers(0, 2, n)
        y[:2] = [0, 1]
        scores = np.round(rng.normal(size=n), 1)  # rounded: many ties
        expected = roc_auc_score(y, scores)
        assert roc_auc(torch.from_numpy(scores), torch.from_numpy(y)) == pytest.approx(
            expected, abs=1e-12)
    assert np.isnan(roc_auc(torch.zeros(3), torch.ones(3)))


@pytest.mark.parametrize("labels, test_size, expected", [
    ([1, 1, 0, 0], 0.25, False),          # one held-out sample cannot hold both classes
    ([1, 1, 0, 0], 0.5, True),            # one sample of each class on each side
    ([1, 0] * 4, 0.25, True),             # 2 held out, 6 trained on, both classes each side
    ([1, 0] * 4, 0.8, False),             # too few left to train on
    ([1, 1, 1, 0, 0, 0, 0, 0], 0.25, True),
    ([1, 0, 0, 0, 0, 0, 0, 0], 0.25, False),  # one concept sample
])
def test_can_hold_out_is_the_condition_held_out_split_refuses(labels, test_size, expected):
    y = torch.tensor(labels)
    assert can_hold_out(y, test_size) is expected
    if expected:
        train = held_out_split(y, test_size, seed=0)
        assert set(y[train].tolist()) == set(y[~train].tolist()) == {0, 1}
    else:
        with pytest.raises(InvalidParameterError, match="test_size"):
            held_out_split(y, test_size, seed=0)


# -- the variance floor ----------------------------------------------------------------------------
def _noise_dimension_data(seed: int, n: int = 200, d: int = 10):
    """The issue's synthetic case: dimension 0 carries the concept (overlapping classes, scale
    0.1); dimension 9 is near-constant (5 + 1e-9 noise) and its tiny noise separates the classes
    perfectly. Without a floor, standardising blows dimension 9 up to unit variance and the
    filter puts all its weight there."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    X = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.1
    X[:, 0] += 0.1 * y
    X[:, 9] = 5.0 + 1e-9 * (y - 0.5) + 1e-10 * torch.randn(n, generator=g, dtype=torch.float64)
    return X, y


@pytest.mark.parametrize("method", ["logistic", "ridge", "svm"])
def test_a_near_constant_dimension_does_not_take_the_direction(method):
    cosines = []
    for seed in range(4):  # seeds not tuned on: the floor is a fixed 1e-3 of the layer's scale
        X, y = _noise_dimension_data(seed)
        cav = CAV(method, "none").fit(X, y)
        cosines.append(cav.mean_difference_cosine_)
        assert int(cav.direction_.abs().argmax()) == 0
        assert abs(float(cav.direction_[9])) < 0.2
    assert float(np.mean(cosines)) > 0.9


def test_without_the_floor_the_noise_dimension_wins_and_the_cav_warns(monkeypatch):
    monkeypatch.setattr(cav_fitting, "SD_FLOOR", 0.0)
    X, y = _noise_dimension_data(0)
    with pytest.warns(UserWarning, match="nearly orthogonal to the difference of the class means"):
        cav = CAV("logistic", "none").fit(X, y)
    assert int(cav.direction_.abs().argmax()) == 9
    assert abs(cav.mean_difference_cosine_) < 1e-3


def test_the_floor_leaves_ordinary_dimensions_bit_identical():
    X = torch.from_numpy(_problem_data(60, 8, 0)[0])
    Z = X.clone()
    mu, sd = cav_fitting._standardise_(Z)
    plain = ((X - X.mean(0)) ** 2).mean(0).sqrt() + 1e-8  # the computation before the floor
    assert torch.equal(sd, plain)
    torch.testing.assert_close(Z, (X - mu) / plain, rtol=0, atol=1e-12)
    # a constant and a near-constant dimension are raised to the floor, not divided by ~0
    X[:, 0], X[:, 1] = 3.0, 3.0 + 1e-12 * torch.arange(60)
    _, sd = cav_fitting._standardise_(X.clone())
    typical = float(X.var(0, unbiased=False).mean().sqrt())
    assert float(sd[0]) == float(sd[1]) == pytest.approx(cav_fitting.SD_FLOOR * typical + 1e-8)
