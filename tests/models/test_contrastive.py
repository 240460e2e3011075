"""NT-Xent against a loop over anchors, the contrastive encoder and its training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from latentsurgeon.data import load_digits16
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError
from latentsurgeon.models import (
    ContrastiveEncoder,
    augment_digits,
    nt_xent,
    pretext_model,
    train_contrastive,
)


@pytest.fixture(scope="module")
def digits():
    images, labels = load_digits16()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return images[order], labels[order]


def _nt_xent_loop(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss written out pair by pair (Chen et al. 2020, Algorithm 1)."""
    n = z1.shape[0]
    views = [F.normalize(v, dim=0) for v in torch.cat([z1, z2])]

    def sim(a: int, b: int) -> torch.Tensor:
        return torch.dot(views[a], views[b]) / temperature

    total = torch.zeros((), dtype=z1.dtype)
    for a in range(2 * n):
        partner = a + n if a < n else a - n
        denominator = sum(torch.exp(sim(a, b)) for b in range(2 * n) if b != a)
        total = total - torch.log(torch.exp(sim(a, partner)) / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 2.0])
def test_nt_xent_matches_a_loop_over_pairs(temperature):
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(7, 5, generator=g, dtype=torch.float64)
    z2 = z1 + 0.5 * torch.randn(7, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(nt_xent(z1, z2, temperature), _nt_xent_loop(z1, z2, temperature))


def test_nt_xent_limits():
    # identical views of orthogonal samples at a low temperature: the partner wins outright
    z = torch.eye(4, dtype=torch.float64)
    assert nt_xent(z, z, temperature=0.01).item() < 1e-10
    # every projection equal: the partner is one of 2N - 1 equally likely candidates
    same = torch.ones(5, 3, dtype=torch.float64)
    assert nt_xent(same, same).item() == pytest.approx(math.log(9))
    # only directions count
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    torch.testing.assert_close(nt_xent(3 * z1, 0.2 * z2), nt_xent(z1, z2))


def test_nt_xent_bad_input():
    with pytest.raises(InvalidParameterError, match="temperature"):
        nt_xent(torch.rand(4, 2), torch.rand(4, 2), temperature=0.0)
    with pytest.raises(ShapeMismatchError):
        nt_xent(torch.rand(4, 2), torch.rand(3, 2))
    with pytest.raises(ShapeMismatchError, match="at least 2"):
        nt_xent(torch.rand(1, 2), torch.rand(1, 2))


def test_contrastive_encoder_layout():
    torch.manual_seed(0)
    model = ContrastiveEncoder(latent_dim=8, projection_dim=6, hidden=12)
    assert [n for n, _ in model.named_children()] == ["encoder", "projector"]
    x = torch.rand(3, 1, 16, 16)
    assert model.encode(x).shape == (3, 8)
    assert model(x).shape == (3, 6)
    torch.testing.assert_close(model(x), model.projector(model.encoder(x)))
    with pytest.raises(ShapeMismatchError):
        model.encode(torch.rand(3, 16, 16))
    with pytest.raises(InvalidParameterError, match="projection_dim"):
        ContrastiveEncoder(projection_dim=0)


def test_training_lowers_the_loss_and_is_seeded(digits, tmp_path):
    images = digits[0][:384]

    def run(seed: int, ckpt=None):
        model = pretext_model("contrastive", latent_dim=8, seed=0)
        history = train_contrastive(model, images, epochs=3, batch_size=64, seed=seed,
                                    progress=False, checkpoint_dir=ckpt)
        return model, history

    model, history = run(0, tmp_path)
    again, _ = run(0)
    other, _ = run(1)
    assert not model.training
    assert history.loss[-1] < history.loss[0] < math.log(2 * 64 - 1) + 0.1
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in again.state_dict().items())
    assert any(not torch.equal(state[k], v) for k, v in other.state_dict().items())
    assert len(history.checkpoints) == 3


def test_a_lone_sample_changes_nothing(digits):
    model = pretext_model("contrastive", latent_dim=8, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = train_contrastive(model, digits[0][:1], epochs=2, progress=False)
    assert history.loss == [0.0, 0.0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_custom_augmentation_receives_the_loop_generator(digits):
    calls = []

    def augment(x, seed=None):
        calls.append(seed)
        return augment_digits(x, seed=seed)

    model = pretext_model("contrastive", latent_dim=4, seed=0)
    train_contrastive(model, digits[0][:32], augment=augment, epochs=1, batch_size=16,
                      progress=False)
    assert len(calls) == 4 and all(c is torch.default_generator for c in calls)
    with pytest.raises(InvalidParameterError, match="augment"):
        train_contrastive(model, digits[0][:32], augment="flip", epochs=1, progress=False)


def _view_retrieval(model, images, seed):
    """Share of augmented views whose nearest other view (cosine, in the representation) is the
    view of the same digit."""
    with torch.no_grad():
        a = F.normalize(model.encode(augment_digits(images, seed=seed)), dim=1)
        b = F.normalize(model.encode(augment_digits(images, seed=seed + 1000)), dim=1)
    return ((a @ b.T).argmax(1) == torch.arange(len(images))).float().mean().item()


@pytest.mark.slow
def test_contrastive_representation_matches_views_of_one_digit(digits):
    # What the loss asks for, measured on held-out digits: two views of a digit are each
    # other's nearest neighbour far more often after training than before; mean over 3 seeds.
    images = digits[0]
    train_x, test_x = images[:1300], images[1300:]
    trained_scores, initial_scores = [], []
    for seed in range(3):
        initial = pretext_model("contrastive", seed=seed)
        trained = pretext_model("contrastive", seed=seed)
        train_contrastive(trained, train_x, epochs=15, seed=seed, progress=False)
        initial_scores.append(_view_retrieval(initial, test_x, seed))
        trained_scores.append(_view_retrieval(trained, test_x, seed))
    assert sum(trained_scores) / 3 > sum(initial_scores) / 3 + 0.1
