"""discover_shortcuts(): the planted watermark comes out on top, its refinement and masks match
the ground truth, and a model trained on clean digits flags nothing.

The default run checks one setting (the hollow square on 20 % of class 3 at the top-left); the grid and the clean-model control over seeds are ``slow`` (their measured
figures are in docs/discover.md)."""

from __future__ import annotations

import pytest
import torch

from latentsurgeon.data import decoy_digits
from latentsurgeon.discover import THRESHOLD, discover_shortcuts, mask_iou
from latentsurgeon.hooks import hook_count
from latentsurgeon.models import DigitCNN
from latentsurgeon.training import train_classifier


def _trained(seed: int, **decoy):
    data = decoy_digits(seed=seed, **decoy)
    torch.manual_seed(seed)
    model = DigitCNN()
    train_classifier(model, data.train, epochs=10, progress=False, seed=seed)
    return model.eval(), data


@pytest.fixture(scope="module")
def planted():
    model, data = _trained(1, fraction=0.2, shortcut_class=3, position=(2, 2))
    return model, data, discover_shortcuts(model, data.train, layer="features.3",
                                           progress=False)


def test_the_planted_watermark_is_the_top_candidate(planted):
    model, data, found = planted
    top = found[0]
    assert top.class_label == 3 and top.flagged and top.score >= THRESHOLD
    assert [c.score for c in found] == sorted((c.score for c in found), reverse=True)
    assert all(c.class_label == 3 for c in found if c.flagged)
    assert hook_count(model) == 0 and not model.training
    flags = top.artifact_labels()
    assert flags.shape == (len(data.train),) and int(flags.sum()) == len(top.members)
    assert set(top.prototypes.tolist()) <= set(top.members.tolist())
    assert top.heatmap.shape == (1, 16, 16) and top.region.shape == (1, 16, 16)


def test_refinement_and_masks_recover_the_ground_truth(planted):
    _, data, found = planted
    truth = data.train.artifact
    refined = found[0].refine(artifact_labels=truth.long())
    assert refined.auroc >= 0.95
    masks = found[0].masks(refinement=refined)
    assert masks.shape == data.train.images.shape
    assert mask_iou(masks[truth], data.train.masks[truth]) >= 0.5


@pytest.mark.slow
@pytest.mark.parametrize("seed", [30, 31, 32, 33, 34])
def test_a_model_trained_on_clean_digits_flags_nothing(seed):
    model, data = _trained(seed, fraction=0.0)
    found = discover_shortcuts(model, data.train, layer="features.3", progress=False)
    assert found[0].score < THRESHOLD


#: The held-out grid of docs/discover.md: (fraction, pattern, position, class, seed).
GRID = [(0.2, "plus", (2, 2), 1, 20), (0.3, "cross", (1, 12), 7, 21),
        (0.5, "square", None, 0, 22), (0.4, "plus", (12, 12), 4, 23),
        (0.3, "square", (2, 2), 9, 24), (0.2, "cross", None, 2, 25),
        (0.5, "plus", (1, 12), 6, 26), (0.4, "cross", (2, 2), 8, 27)]


@pytest.mark.slow
def test_the_held_out_grid_measures_what_docs_discover_reports():
    """The issue's targets (top-1 >= 90 %, AUROC >= 0.95, IoU >= 0.5) are NOT met; this pins
    the measured floor (top-1 1 of 8, mean AUROC 0.76, mean IoU 0.30) so a change that makes
    discovery worse fails, and one that makes it better shows in the numbers."""
    top1, aurocs, ious = 0, [], []
    for fraction, pattern, position, cls, seed in GRID:
        model, data = _trained(seed, fraction=fraction, pattern=pattern, position=position,
                               shortcut_class=cls)
        found = discover_shortcuts(model, data.train, layer="features.3", progress=False)
        top1 += int(found[0].class_label == cls and found[0].flagged)
        best = next((c for c in found if c.class_label == cls), found[0])
        truth = data.train.artifact
        refined = best.refine(artifact_labels=truth.long())
        aurocs.append(refined.auroc)
        ious.append(mask_iou(best.masks(refinement=refined)[truth], data.train.masks[truth]))
    assert top1 >= 1
    assert sum(aurocs) / len(aurocs) >= 0.7
    assert sum(ious) / len(ious) >= 0.25
