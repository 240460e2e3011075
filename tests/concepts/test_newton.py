"""The batched linear solves under the CAV Newton solver."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentsurgeon.concepts import newton
from latentsurgeon.concepts.newton import solve_batched


def test_matches_one_solve_per_problem():
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(5, 30, 30, generator=gen, dtype=torch.float64) + 30 * torch.eye(30)
    b = torch.randn(5, 30, generator=gen, dtype=torch.float64)
    x = solve_batched(A, b)
    assert x.shape == (5, 30) and x.dtype == torch.float64
    for p in range(5):
        torch.testing.assert_close(A[p] @ x[p], b[p], rtol=0, atol=1e-10)


def test_the_batch_that_breaks_torchs_threaded_cpu_solve():
    # pytorch/pytorch#142815: a batch of 151-square identities with two threads gets wrong pivots
    # from PyTorch's batched CPU solve (and can hang on a loaded machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        A = torch.eye(151, dtype=torch.float64).expand(2, 151, 151).contiguous()
        x = solve_batched(A, torch.ones(2, 151, dtype=torch.float64))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(x, torch.ones(2, 151, dtype=torch.float64))


def test_cpu_batches_never_reach_torchs_batched_solve(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.linalg.solve on a CPU batch")

    monkeypatch.setattr(newton.torch.linalg, "solve", refuse)
    K = torch.rand(3, 6, 4, dtype=torch.float64)
    K = K @ K.transpose(1, 2)
    y = torch.tensor([1.0, -1.0] * 3, dtype=torch.float64).expand(3, 6)
    a, b = newton.newton_dual(K, y, torch.ones(3, 6, dtype=torch.float64))
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    Z = torch.rand(3, 6, 2, dtype=torch.float64)
    coef, b = newton.newton_primal(Z, y, torch.ones(3, 6, dtype=torch.float64))
    assert torch.isfinite(coef).all()


def test_a_singular_system_is_an_error_not_a_result():
    with pytest.raises(np.linalg.LinAlgError, match="(?i)singular"):
        solve_batched(torch.zeros(2, 3, 3, dtype=torch.float64), torch.ones(2, 3,
                                                                            dtype=torch.float64))
