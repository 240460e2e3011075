"""Each verify test against a model whose reliance is known by construction: a linear classifier
on 1x6x6 images with a weight on the artifact's pixels. The expected outcomes are computed by
hand (numpy) from the weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from latentsurgeon.data import decoy_digits
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.verify import (
    Artifact,
    counterfactual_insertion,
    counterfactual_removal,
    group_metrics,
    neighbour_layers,
    relevance_test,
)
from latentsurgeon.verify.artifact import remove

K, H = 3, 6
SHORTCUT = 2
MASK = torch.zeros(H, H, dtype=torch.bool)
MASK[4:6, 0:2] = True
PATTERN = torch.ones(H, H)


def _linear(reliance: float) -> nn.Module:
    """Class scores from the pixel sums of three regions; class 2 also from the artifact's pixels
    with weight ``reliance``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(H * H, K))
    with torch.no_grad():
        weight = torch.randn(K, H * H) * 0.3
        weight[:, MASK.flatten()] = 0.0
        weight[SHORTCUT, MASK.flatten()] = reliance
        model[1].weight.copy_(weight)
        model[1].bias.zero_()
    return model


def _data(n: int = 90, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, H, H, generator=g) * 0.5
    labels = torch.arange(n) % K
    return images, labels


def _scores(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    weight = model[1].weight.detach().double().numpy()
    return x.reshape(len(x), -1).double().numpy() @ weight.T


@pytest.mark.parametrize("reliance", [0.0, 0.8, 3.0])
def test_insertion_matches_the_hand_computation(reliance):
    model = _linear(reliance)
    images, labels = _data()
    artifact = Artifact(PATTERN, MASK)
    found = counterfactual_insertion(model, (images, labels), artifact, target=SHORTCUT)
    other = (labels != SHORTCUT).numpy()
    x = images[torch.as_tensor(other)]
    pasted = torch.where(MASK, 1.0, x)
    ring = torch.zeros(H, H, dtype=torch.bool)
    ring[3:6, 0:3] = True
    ring &= ~MASK
    local = x[:, :, ring].mean(-1)[..., None, None]          # (n, 1, 1, 1)
    control = torch.where(MASK, local, x)
    before, after, neutral = (_scores(model, v).argmax(1) for v in (x, pasted, control))
    flipped = (before != SHORTCUT) & (after == SHORTCUT)
    control_flipped = (before != SHORTCUT) & (neutral == SHORTCUT)
    assert np.array_equal(found.flipped.astype(bool), flipped)
    assert np.array_equal(found.control_flipped.astype(bool), control_flipped)
    stats = found.statistics()
    ones = np.ones((1, found.n))
    assert stats["flip_rate"](ones)[0] == pytest.approx(flipped.mean() - control_flipped.mean())
    if reliance == 0.0:
        assert stats["flip_rate"](ones)[0] == 0.0
    if reliance == 3.0:  # +3 per pixel on 4 pixels: every other-class image goes to class 2
        assert flipped[before != SHORTCUT].all()
    log_p = lambda s: s[:, SHORTCUT] - np.log(np.exp(s).sum(1))  # noqa: E731
    assert np.allclose(found.shift, log_p(_scores(model, pasted)) - log_p(_scores(model, x)))


@pytest.mark.parametrize("reliance", [0.0, 3.0])
def test_removal_matches_the_hand_computation(reliance):
    model = _linear(reliance)
    images, labels = _data(seed=1)
    carrying = torch.where(MASK, 1.0, images)
    masks = MASK.expand(len(images), H, H)
    found = counterfactual_removal(model, (carrying, labels, torch.ones(len(images)), masks),
                                   target=SHORTCUT)
    mine = (labels == SHORTCUT).numpy()
    x = carrying[torch.as_tensor(mine)]
    cleaned = remove(x, MASK)
    prob = lambda s: np.exp(s[:, SHORTCUT]) / np.exp(s).sum(1)  # noqa: E731
    expected = prob(_scores(model, x)) - prob(_scores(model, cleaned))
    assert np.allclose(found.drop, expected)
    if reliance == 0.0:
        assert np.allclose(found.drop, 0.0)
    else:
        assert found.drop.mean() > 0.1 and (found.drop > 0).all()


def test_local_mean_fill_is_the_ring_mean_and_clean_mean_the_reference_mean():
    x = torch.arange(36, dtype=torch.float32).reshape(1, 1, H, H)
    filled = remove(x, MASK)
    ring = torch.tensor([18.0, 19.0, 20.0, 26.0, 32.0])   # rows 3..5, cols 0..2 minus the mask
    assert torch.allclose(filled[0, 0][MASK], ring.mean().expand(4))
    assert torch.equal(filled[0, 0][~MASK], x[0, 0][~MASK])
    reference = torch.full((5, 1, H, H), 0.25)
    assert torch.allclose(remove(x, MASK, fill="clean_mean", reference=reference)[0, 0][MASK],
                          torch.full((4,), 0.25))
    with pytest.raises(InvalidParameterError, match="clean_mean"):
        remove(torch.rand(4, 36), torch.zeros(36, dtype=torch.bool) | True, fill="local_mean")


def test_the_artifact_estimated_from_examples_is_the_planted_one():
    data = decoy_digits("watermark", seed=0)
    artifact = Artifact.from_examples(data.poisoned.images, data.poisoned.masks)
    assert torch.equal(artifact.mask, data.poisoned.masks[0])
    pasted = artifact.paste(data.test.images)
    assert torch.allclose(pasted, data.poisoned.images)
    swatch = decoy_digits("swatch", seed=0)
    with pytest.raises(InvalidParameterError, match="different place"):
        Artifact.from_examples(swatch.train.images, swatch.train.masks)


def test_relevance_share_of_a_model_that_reads_only_the_artifact_is_one():
    model = _linear(1.0)
    with torch.no_grad():
        model[1].weight[SHORTCUT].zero_()
        model[1].weight[SHORTCUT, MASK.flatten()] = 1.0
    images, labels = _data()
    carrying = torch.where(MASK, 1.0, images)
    found = relevance_test(model, (carrying, labels, torch.ones(len(images)),
                                   MASK.expand(len(images), H, H)), target=SHORTCUT)
    assert np.allclose(found.shares, 1.0)
    assert found.method == "input_x_gradient"


def test_group_metrics_match_a_hand_count():
    model = _linear(3.0)
    images, labels = _data()
    carrying = torch.where(MASK, 1.0, images)
    found = group_metrics(model, (images, labels), (carrying, labels), target=SHORTCUT)
    stats = {k: f(np.ones((1, found.n)))[0] for k, f in found.statistics().items()}
    clean_pred = _scores(model, images).argmax(1)
    art_pred = _scores(model, carrying).argmax(1)
    y = labels.numpy()
    assert stats["clean_acc"] == pytest.approx((clean_pred == y).mean())
    assert stats["poisoned_acc"] == pytest.approx((art_pred == y).mean())
    groups = [(p == y)[y == k].mean() for p in (clean_pred, art_pred) for k in range(K)]
    assert stats["worst_group_acc"] == pytest.approx(min(groups))
    dp = abs((art_pred == SHORTCUT).mean() - (clean_pred == SHORTCUT).mean())
    assert stats["dp_difference"] == pytest.approx(dp)
    fpr = abs((art_pred == SHORTCUT)[y != SHORTCUT].mean()
              - (clean_pred == SHORTCUT)[y != SHORTCUT].mean())
    tpr = abs((art_pred == SHORTCUT)[y == SHORTCUT].mean()
              - (clean_pred == SHORTCUT)[y == SHORTCUT].mean())
    assert stats["eo_difference"] == pytest.approx(max(fpr, tpr))


def test_neighbour_layers_of_the_demo_block():
    from latentsurgeon.models import DigitCNN

    model = DigitCNN()
    assert neighbour_layers(model, "features") == ["features.3", "features", "classifier.1"]
    assert neighbour_layers(model, "features.0") == ["features.0", "features.3"]
