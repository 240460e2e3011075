"""pool(): each mode against a hand computation; pooled_shape agrees with pool."""

from __future__ import annotations

import pytest
import torch

from latentsurgeon import LatentSurgeonError
from latentsurgeon.activations import POOLINGS, pool
from latentsurgeon.activations.pooling import pooled_shape


@pytest.fixture
def acts() -> torch.Tensor:
    return torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(0))


def test_max_mean_flatten_none_by_hand(acts):
    n, c = acts.shape[:2]
    by_hand_max = torch.empty(n, c)
    by_hand_mean = torch.empty(n, c)
    for i in range(n):
        for j in range(c):
            values = [float(v) for v in acts[i, j].reshape(-1)]
            by_hand_max[i, j] = max(values)
            by_hand_mean[i, j] = sum(values) / len(values)
    assert torch.equal(pool(acts, "max"), by_hand_max)
    torch.testing.assert_close(pool(acts, "mean"), by_hand_mean, rtol=1e-6, atol=1e-6)
    flat = pool(acts, "flatten")
    assert flat.shape == (n, c * 5 * 6)
    for i in range(n):
        assert torch.equal(flat[i], torch.tensor([float(v) for v in acts[i].reshape(-1)]))
    assert pool(acts, "none") is acts


def test_sequences_pool_over_the_last_dim():
    seq = torch.randn(2, 3, 7)
    assert torch.equal(pool(seq, "max"), seq.max(dim=2).values)
    assert torch.equal(pool(seq, "flatten"), seq.reshape(2, 21))


@pytest.mark.parametrize("mode", POOLINGS)
def test_two_dim_activations_are_unchanged(mode):
    vectors = torch.randn(5, 8)
    assert torch.equal(pool(vectors, mode), vectors)


@pytest.mark.parametrize("mode", POOLINGS)
@pytest.mark.parametrize("shape", [(8,), (4, 7), (4, 5, 6), (2, 3, 4, 5)])
def test_pooled_shape_matches_pool(mode, shape):
    assert tuple(pool(torch.zeros(2, *shape), mode).shape[1:]) == pooled_shape(shape, mode)


def test_unknown_pooling():
    with pytest.raises(ValueError, match="max, mean, flatten, none") as info:
        pool(torch.zeros(2, 3, 4, 4), "avg")
    assert isinstance(info.value, LatentSurgeonError)
    with pytest.raises(ValueError):
        pooled_shape((3, 4, 4), "sum")
