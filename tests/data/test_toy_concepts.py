"""Concept data sets: the toy generators follow their formulas, are deterministic per seed and
balanced (dot included); the digits' pixel concepts are computed per image and vary in a class."""

from __future__ import annotations

import pytest
import torch

from latentsurgeon.data import (
    DIGIT_CONCEPT_NAMES,
    TOY_CONCEPT_SETS,
    concept_digits,
    count_holes,
    digit_concepts,
    load_digits16,
    toy_concepts,
)
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError

# small tensor work: one torch thread (tests/_threads.py says why)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", TOY_CONCEPT_SETS)
def test_deterministic_per_seed_with_the_documented_shapes(name):
    a = toy_concepts(name, n_train=300, n_test=100, seed=4)
    b = toy_concepts(name, n_train=300, n_test=100, seed=4)
    c = toy_concepts(name, n_train=300, n_test=100, seed=5)
    for split_a, split_b in ((a.train, b.train), (a.test, b.test)):
        assert all(torch.equal(u, v) for u, v in zip(split_a, split_b, strict=True))
    assert not torch.equal(a.train.inputs, c.train.inputs)
    assert a.train.inputs.dtype == torch.float32 and a.train.labels.dtype == torch.int64
    assert a.train.concepts.shape == (300, a.n_concepts) and len(a.test.labels) == 100
    assert set(a.train.concepts.unique().tolist()) <= {0.0, 1.0}
    assert set(a.train.labels.unique().tolist()) == {0, 1}
    # train and test are different draws of the same stream
    assert not torch.equal(a.train.inputs[:100], a.test.inputs)


def test_xor_formula():
    d = toy_concepts("xor", n_train=2000, n_test=10)
    x, y, c = d.train
    assert torch.equal(c, (x > 0.5).float())
    assert torch.equal(y, (c[:, 0] != c[:, 1]).long())
    assert bool(((x >= 0) & (x <= 1)).all())


def _invert_sin_plus_identity(v: torch.Tensor) -> torch.Tensor:
    """Solve h + sin(h) = v (increasing in h) by bisection, vectorised."""
    low, high = v - 1.0, v + 1.0
    for _ in range(60):
        mid = (low + high) / 2
        too_big = (mid + torch.sin(mid)) > v
        high = torch.where(too_big, mid, high)
        low = torch.where(too_big, low, mid)
    return (low + high) / 2


def test_trigonometry_formula():
    d = toy_concepts("trigonometry", n_train=2000, n_test=10)
    x, y, c = d.train
    # h + sin(h) is flat at odd multiples of pi, where float32 inputs pin h down to about 1e-2
    h = _invert_sin_plus_identity(x[:, [0, 2, 4]].double())
    assert torch.allclose((torch.cos(h) + h).float(), x[:, [1, 3, 5]], atol=2e-2)
    assert torch.allclose((h ** 2).sum(1).float(), x[:, 6], rtol=1e-2, atol=5e-2)
    assert torch.equal(c, (h > 0).float())
    near = (h.sum(1) - 1).abs() < 5e-2  # only there can the recovered h blur the task boundary
    assert torch.equal(y[~near], (h.sum(1) > 1).long()[~near])


def test_dot_formula_and_balance():
    d = toy_concepts("dot", n_train=4000, n_test=10)
    x, y, c = d.train
    v1, v3 = (x[:, :2] + x[:, 2:]) / 2, (x[:, :2] - x[:, 2:]) / 2
    assert torch.equal(c, torch.stack([v1.sum(1) > 0, -v3.sum(1) > 0], 1).float())
    assert torch.equal(y, ((v1 * v3).sum(1) > 0).long())
    # v1 and v3 are independent draws (pytorch_concepts' re-seeding makes them equal, so every
    # label is 1): labels and both concepts are balanced, and v1 . v3 takes both signs
    assert not torch.allclose(v1, v3)
    assert 0.45 < float(y.float().mean()) < 0.55
    assert bool(((c.mean(0) > 0.45) & (c.mean(0) < 0.55)).all())
    assert abs(float(torch.corrcoef(torch.stack([v1[:, 0], v3[:, 0]]))[0, 1])) < 0.05


def test_checkmark_formula_and_noise():
    d = toy_concepts("checkmark", n_train=2000, n_test=10)
    x, y, c = d.train
    assert torch.equal(c[:, 2], 1 - c[:, 1])
    assert torch.equal(y, (c[:, 0].bool() & c[:, 2].bool()).long())
    residual = x - (2 * c - 1)
    assert abs(float(residual.std()) - 0.1) < 0.01  # the reference's default noise
    noisy = toy_concepts("checkmark", n_train=2000, n_test=10, noise=1.0)
    assert torch.equal(noisy.train.concepts, c) and torch.equal(noisy.train.labels, y)
    assert abs(float((noisy.train.inputs - (2 * c - 1)).std()) - 1.0) < 0.05


def test_bad_parameters():
    with pytest.raises(InvalidParameterError, match="name"):
        toy_concepts("circles")
    with pytest.raises(InvalidParameterError, match="noise"):
        toy_concepts("xor", noise=-1.0)
    with pytest.raises(InvalidParameterError, match="n_train"):
        toy_concepts("xor", n_train=0)


# -- digits with pixel concepts ------------------------------------------------------------------
def _canvas(*boxes):
    image = torch.zeros(1, 1, 16, 16)
    for top, left, bottom, right, value in boxes:
        image[0, 0, top:bottom, left:right] = value
    return image


def test_count_holes_on_drawn_shapes():
    ring = _canvas((3, 3, 13, 13, 1.0), (5, 5, 11, 11, 0.0))
    eight = _canvas((1, 4, 15, 12, 1.0), (3, 6, 7, 10, 0.0), (9, 6, 13, 10, 0.0))
    bar = _canvas((2, 7, 14, 9, 1.0))
    open_ring = _canvas((3, 3, 13, 13, 1.0), (5, 5, 11, 11, 0.0), (7, 11, 9, 13, 0.0))
    edge_hole = _canvas((0, 0, 6, 6, 1.0), (0, 2, 4, 4, 0.0))  # the hole touches the border
    diagonal = _canvas((3, 3, 13, 13, 1.0), (5, 5, 8, 8, 0.0), (8, 8, 11, 11, 0.0))
    images = torch.cat([ring, eight, bar, open_ring, edge_hole, diagonal])
    # two holes meeting only at a corner are two holes (background is 4-connected)
    assert count_holes(images).tolist() == [1, 2, 0, 0, 0, 2]


def test_digit_concepts_follow_the_pixels_and_vary_within_a_class():
    images, labels = load_digits16()
    concepts = digit_concepts(images)
    assert concepts.shape == (1797, len(DIGIT_CONCEPT_NAMES)) == (1797, 18)
    # the ink concepts split the digits about in half
    assert bool(((concepts[:, :16].mean(0) > 0.4) & (concepts[:, :16].mean(0) < 0.6)).all())
    # zeros mostly have a loop, ones never; eights are the ones with two loops
    loop, two = concepts[:, 16], concepts[:, 17]
    assert float(loop[labels == 0].mean()) > 0.7 and float(loop[labels == 1].mean()) == 0.0
    assert int(torch.bincount(labels[two == 1]).argmax()) == 8
    # every class has concepts that vary between its images
    for digit in range(10):
        rate = concepts[labels == digit].mean(0)
        assert int(((rate > 0.1) & (rate < 0.9)).sum()) >= 3
    # per image: a concept of one image does not depend on the others
    assert torch.equal(digit_concepts(images[:5]), concepts[:5])
    with pytest.raises(ShapeMismatchError):
        digit_concepts(images[:, :, :8, :8])


def test_concept_digits_split_is_seeded_and_stratified():
    a, b, c = concept_digits(seed=0), concept_digits(seed=0), concept_digits(seed=1)
    assert torch.equal(a.test.inputs, b.test.inputs)
    assert not torch.equal(a.test.inputs, c.test.inputs)
    assert len(a.test.labels) == 360 and len(a.train.labels) == 1437
    assert bool((torch.bincount(a.test.labels, minlength=10) >= 35).all())
    assert torch.equal(a.test.concepts, digit_concepts(a.test.inputs))
    assert a.n_features == 256 and a.n_classes == 10 and a.concept_names == DIGIT_CONCEPT_NAMES
