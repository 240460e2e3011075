"""pool(): each mode against a hand computation; pooled_shape agrees with pool."""

from __future__ import annotations

import pytest
import torch

from latentsurgeon import LatentSurgeonError
from latentsurgeon.activations import POOLINGS, layer_outputs, pool
from latentsurgeon.activations.batching import attention_mask_of
from latentsurgeon.activations.pooling import (
    ALL_POOLINGS,
    TOKEN_POOLINGS,
    is_sequence,
    lift,
    pooled_dim,
    pooled_shape,
    same_pooled_space,
)
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError

CHANNEL_POOLINGS = POOLINGS


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


@pytest.mark.parametrize("mode", ALL_POOLINGS)
def test_two_dim_activations_are_unchanged(mode):
    vectors = torch.randn(5, 8)
    assert torch.equal(pool(vectors, mode), vectors)


@pytest.mark.parametrize("mode", CHANNEL_POOLINGS)
@pytest.mark.parametrize("shape", [(8,), (4, 7), (4, 5, 6), (2, 3, 4, 5)])
def test_pooled_shape_matches_pool(mode, shape):
    assert tuple(pool(torch.zeros(2, *shape), mode).shape[1:]) == pooled_shape(shape, mode)


@pytest.mark.parametrize("mode", [*TOKEN_POOLINGS, "position:2", "position:-1"])
def test_token_modes_shapes(mode):
    assert tuple(pool(torch.zeros(2, 4, 7), mode).shape[1:]) == pooled_shape((4, 7), mode) == (7,)
    assert pooled_shape((8,), mode) == (8,)
    with pytest.raises(ShapeMismatchError, match="token axis"):
        pool(torch.zeros(2, 3, 4, 5), mode)
    with pytest.raises(ShapeMismatchError, match="token axis"):
        pooled_shape((3, 4, 5), mode)


def test_unknown_pooling():
    with pytest.raises(ValueError, match="max, mean, flatten, none") as info:
        pool(torch.zeros(2, 3, 4, 4), "avg")
    assert isinstance(info.value, LatentSurgeonError)
    with pytest.raises(ValueError):
        pooled_shape((3, 4, 4), "sum")
    for bad in ("position:", "position:x", "position:1.5", 3, None):
        with pytest.raises(InvalidParameterError, match="position:K"):
            pool(torch.zeros(2, 3, 4), bad)


# -- tokens (N, T, D) ------------------------------------------------------------------------------
def _padded() -> tuple[torch.Tensor, torch.Tensor]:
    """(3, 5, 4) activations; sample 0 has 5 tokens, 1 has 3 (right padding), 2 has 2 (left
    padding). Padding positions hold huge values: a pooling that counts them is visibly wrong."""
    g = torch.Generator().manual_seed(1)
    acts = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 1, 1]])
    acts[mask == 0] = 1e6
    return acts, mask


def test_mean_with_a_mask_is_over_unmasked_tokens():
    acts, mask = _padded()
    by_hand = torch.stack([acts[0].mean(0), acts[1, :3].mean(0), acts[2, 3:].mean(0)])
    for mode in ("mean", "token_mean"):
        torch.testing.assert_close(pool(acts, mode, mask), by_hand)
    by_hand_max = torch.stack([acts[0].amax(0), acts[1, :3].amax(0), acts[2, 3:].amax(0)])
    for mode in ("max", "token_max"):
        assert torch.equal(pool(acts, mode, mask), by_hand_max)
    # a bool or float mask means the same
    torch.testing.assert_close(pool(acts, "mean", mask.bool()), by_hand)
    torch.testing.assert_close(pool(acts, "mean", mask.float()), by_hand)


def test_cls_last_position():
    acts, mask = _padded()
    assert torch.equal(pool(acts, "cls", mask), acts[:, 0])
    # the last *unmasked* token, with right and with left padding
    assert torch.equal(pool(acts, "last", mask), torch.stack([acts[0, 4], acts[1, 2], acts[2, 4]]))
    assert torch.equal(pool(acts, "last"), acts[:, -1])  # no mask: token T - 1
    assert torch.equal(pool(acts, "position:3", mask), acts[:, 3])
    assert torch.equal(pool(acts, "position:-2"), acts[:, -2])
    with pytest.raises(ShapeMismatchError, match="token 5"):
        pool(acts, "position:5")


def test_without_a_mask_3d_stays_channels_first_unless_a_token_mode_says_tokens():
    seq = torch.randn(2, 3, 7)
    assert torch.equal(pool(seq, "mean"), seq.mean(dim=2))           # (N, C, L): as always
    torch.testing.assert_close(pool(seq, "token_mean"), seq.mean(dim=1))  # (N, T, D)
    assert not is_sequence(seq, "mean")
    assert is_sequence(seq, "mean", torch.ones(2, 3))
    assert is_sequence(seq, "cls")
    # a mask that does not fit (N, T) leaves "mean" channels-first, and is refused by token modes
    assert torch.equal(pool(seq, "mean", torch.ones(2, 5)), seq.mean(dim=2))
    with pytest.raises(ShapeMismatchError, match="attention mask has shape"):
        pool(seq, "cls", torch.ones(2, 5))


def test_images_ignore_a_mask_bit_identically():
    img = torch.randn(3, 4, 5, 6)
    mask = torch.ones(3, 4)
    for mode in CHANNEL_POOLINGS:
        assert torch.equal(pool(img, mode, mask), pool(img, mode))


def test_empty_mask_row_is_refused():
    acts, mask = _padded()
    mask[1] = 0
    for mode in ("mean", "max", "last"):
        with pytest.raises(InvalidParameterError, match=r"no unmasked token in rows \[1\]"):
            pool(acts, mode, mask)


@pytest.mark.parametrize("mode", ["mean", "max", "cls", "last", "position:1", "token_mean",
                                  "flatten"])
def test_lift_moves_the_pooled_vector_by_delta(mode):
    acts, mask = _padded()
    acts[mask == 0] = 0.0  # finite padding, so the max lift is tested on real ties too
    delta = 1e-3 * torch.randn(3, pooled_dim(acts, mode, mask), dtype=torch.float64,
                               generator=torch.Generator().manual_seed(2))
    step = lift(acts, delta, mode, mask)
    assert step.shape == acts.shape
    moved = pool(acts + step, mode, mask).reshape(3, -1) - pool(acts, mode, mask).reshape(3, -1)
    torch.testing.assert_close(moved, delta)
    if mode in ("mean", "last", "max"):
        assert bool((step[mask == 0] == 0).all())  # padding never moves


def test_same_pooled_space():
    assert same_pooled_space((5, 8), (9, 8), "mean")       # padded batches of another length
    assert not same_pooled_space((5, 8), (9, 8), "flatten")
    assert not same_pooled_space((8,), (5, 8), "mean")
    assert not same_pooled_space((4, 5, 5), (4, 6, 6), "max")  # images keep their shape


class _TokenModel(torch.nn.Module):
    """input_ids (N, T) + attention_mask -> (N, T, D) -> masked mean -> 2 logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(20, 6)
        self.block = torch.nn.Linear(6, 6)
        self.head = torch.nn.Linear(6, 2)

    def forward(self, input_ids, attention_mask):
        h = torch.tanh(self.block(self.embed(input_ids)))
        m = attention_mask.unsqueeze(-1).float()
        return self.head((h * m).sum(1) / m.sum(1))


def test_dict_batches_hand_their_mask_to_pooling():
    model = _TokenModel()
    ids = torch.tensor([[3, 4, 5, 0, 0], [6, 7, 8, 9, 1]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    short = {"input_ids": ids[:1, :3], "attention_mask": mask[:1, :3]}
    batch = {"input_ids": ids, "attention_mask": mask}
    assert attention_mask_of(batch) is mask
    assert attention_mask_of(ids) is None
    for mode in ("mean", "max", "last", "cls"):
        out = layer_outputs(model, "block", batch, pooling=mode, progress=False)["block"]
        alone = layer_outputs(model, "block", short, pooling=mode, progress=False)["block"]
        assert out.shape == (2, 6)
        # padding changes nothing: the padded sample pools as the unpadded one
        torch.testing.assert_close(out[:1], alone)
