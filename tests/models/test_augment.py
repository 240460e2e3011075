"""Digit augmentations: deterministic per seed, geometric bounds, and the digit survives."""

from __future__ import annotations

import math

import pytest
import torch

from latentsurgeon.data import load_digits16
from latentsurgeon.errors import InvalidParameterError, NonFiniteError, ShapeMismatchError
from latentsurgeon.models import DigitAugment, DigitCNN, augment_digits, evaluate_accuracy
from latentsurgeon.training import train_classifier


@pytest.fixture(scope="module")
def digits():
    images, labels = load_digits16()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return images[order], labels[order]


def _centroid_and_mass(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = images.shape[-2:]
    rows = torch.arange(h, dtype=images.dtype).view(1, h, 1)
    cols = torch.arange(w, dtype=images.dtype).view(1, 1, w)
    ink = images[:, 0]
    mass = ink.sum((1, 2))
    centre = torch.stack([(ink * rows).sum((1, 2)), (ink * cols).sum((1, 2))], 1) / mass[:, None]
    return centre, mass


def test_deterministic_per_seed(digits):
    x = digits[0][:32]
    assert torch.equal(augment_digits(x, seed=3), augment_digits(x, seed=3))
    assert not torch.equal(augment_digits(x, seed=3), augment_digits(x, seed=4))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    first = augment_digits(x, seed=g1)
    assert torch.equal(first, augment_digits(x, seed=g2))
    assert not torch.equal(augment_digits(x, seed=g1), first), "a generator's state advances"
    assert torch.equal(DigitAugment()(x, seed=3), augment_digits(x, seed=3))
    # the global RNG is neither used nor moved by a seeded call
    state = torch.random.get_rng_state()
    augment_digits(x, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_vectorised_draws_do_not_depend_on_the_batch_dtype(digits):
    x = digits[0][:16]
    out32 = augment_digits(x, seed=0)
    out64 = augment_digits(x.double(), seed=0)
    assert out64.dtype == torch.float64 and out32.dtype == torch.float32
    torch.testing.assert_close(out64.float(), out32, atol=1e-5, rtol=0)


def test_zero_settings_are_the_identity(digits):
    x = digits[0][:16]
    out = augment_digits(x, max_shift=0, max_rotation=0, noise_std=0, seed=0)
    torch.testing.assert_close(out, x, atol=1e-6, rtol=0)


def test_values_stay_in_range_and_noise_has_its_scale(digits):
    x = digits[0][:64]
    out = augment_digits(x, seed=0)
    assert out.min() >= 0 and out.max() <= 1
    geometric = augment_digits(x, seed=0, noise_std=0.0)
    # the same draws: the unclipped result differs from the noise-free one by the noise alone
    noisy = augment_digits(x, seed=0, noise_std=0.2, clip=False)
    assert (noisy - geometric).std().item() == pytest.approx(0.2, rel=0.05)


def test_shifts_and_rotations_stay_small(digits):
    # The ink's centroid moves by at most the shift (sqrt(2) * max_shift) plus the rotation's
    # arc about the image centre; the ink stays mostly inside the frame.
    x = digits[0]
    centre0, mass0 = _centroid_and_mass(x)
    for seed in range(3):
        centre1, mass1 = _centroid_and_mass(augment_digits(x, seed=seed, noise_std=0.0))
        radius = (centre0 - 7.5).norm(dim=1)
        bound = math.sqrt(2) * 2.0 + radius * math.radians(15.0) + 0.25  # bilinear slack
        assert bool(((centre1 - centre0).norm(dim=1) <= bound).all())
        assert (mass1 / mass0).median().item() > 0.9
        assert (mass1 / mass0).min().item() > 0.6
    # the bound is not vacuous: larger settings break it
    moved, _ = _centroid_and_mass(augment_digits(x, seed=0, max_shift=5.0, noise_std=0.0))
    assert bool(((moved - centre0).norm(dim=1) > math.sqrt(2) * 2.0 + 2.5).any())


def test_augmented_digits_keep_their_class(digits):
    # A classifier trained on augmented digits classifies augmented held-out digits almost as
    # well as clean ones: the augmentations keep the digit. Turning digits upside down (a 6
    # becomes a 9) does not, which shows the check can fail.
    images, labels = digits
    train_x, train_y, test_x, test_y = images[:1300], labels[:1300], images[1300:], labels[1300:]
    views = torch.cat([augment_digits(train_x, seed=s) for s in range(3)])
    torch.manual_seed(0)
    model = DigitCNN()
    train_classifier(model, (views, train_y.repeat(3)), epochs=10, seed=0, progress=False)
    clean = evaluate_accuracy(model, (test_x, test_y))
    augmented = [evaluate_accuracy(model, (augment_digits(test_x, seed=10 + s), test_y))
                 for s in range(3)]
    upside_down = evaluate_accuracy(
        model, (augment_digits(test_x, seed=0, max_rotation=180.0), test_y))
    assert clean > 0.9
    assert sum(augmented) / 3 > 0.88
    assert upside_down < 0.65


def test_bad_input():
    with pytest.raises(ShapeMismatchError):
        augment_digits(torch.rand(4, 16, 16))
    with pytest.raises(InvalidParameterError, match="max_rotation"):
        augment_digits(torch.rand(2, 1, 16, 16), max_rotation=-1.0)
    with pytest.raises(InvalidParameterError, match="seed"):
        augment_digits(torch.rand(2, 1, 16, 16), seed=-1)
    bad = torch.rand(2, 1, 16, 16)
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(NonFiniteError):
        augment_digits(bad, seed=0)
