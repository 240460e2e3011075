"""spurious_tabular: shapes, pairing, determinism, the planted feature, validation."""

from __future__ import annotations

import pytest
import torch

from latentsurgeon.data.tabular import spurious_tabular
from latentsurgeon.errors import InvalidParameterError


def test_shapes_pairs_and_the_planted_feature():
    data = spurious_tabular(seed=0, n_train=400, n_test=100, n_features=6, n_classes=3,
                            shortcut_class=1, fraction=0.8, strength=4.0)
    train, clean, test, poisoned = data.train, data.train_clean, data.test, data.poisoned
    assert train.inputs.shape == (400, 6) and test.inputs.shape == (100, 6)
    assert train.images is train.inputs  # the name every latentsurgeon function reads
    assert data.shortcut_feature == 5 and data.region.tolist() == [False] * 5 + [True]
    # only the shortcut class carries it, on `fraction` of its rows
    in_class = train.labels == 1
    assert not train.artifact[~in_class].any()
    assert int(train.artifact.sum()) == round(0.8 * int(in_class.sum()))
    assert torch.equal(train.masks[:, 5], train.artifact) and not train.masks[:, :5].any()
    # the clean twin differs exactly by `strength` on the carriers' spurious column
    diff = train.inputs - clean.inputs
    torch.testing.assert_close(diff[:, 5], 4.0 * train.artifact.float())
    assert torch.equal(diff[:, :5], torch.zeros(400, 5))
    torch.testing.assert_close(poisoned.inputs[:, 5] - test.inputs[:, 5], torch.full((100,), 4.0))
    assert poisoned.artifact.all() and not test.artifact.any()
    assert torch.bincount(train.labels).tolist() == [134, 133, 133]


def test_deterministic_in_the_seed():
    a, b, c = spurious_tabular(seed=3), spurious_tabular(seed=3), spurious_tabular(seed=4)
    assert torch.equal(a.train.inputs, b.train.inputs) and torch.equal(a.test.labels,
                                                                        b.test.labels)
    assert not torch.equal(a.train.inputs, c.train.inputs)


def test_the_feature_separates_the_class_only_through_the_shortcut():
    """Without the feature (train_clean), the spurious column carries no class information."""
    data = spurious_tabular(seed=0)
    clean = data.train_clean
    means = [float(clean.inputs[clean.labels == k, -1].mean()) for k in range(4)]
    assert max(abs(m) for m in means) < 0.15
    carriers = data.train.inputs[data.train.artifact, -1]
    assert float(carriers.mean()) > 3.5


def test_validation():
    with pytest.raises(InvalidParameterError, match="fraction"):
        spurious_tabular(fraction=1.5)
    with pytest.raises(InvalidParameterError, match="shortcut_class"):
        spurious_tabular(n_classes=3, shortcut_class=3)
    with pytest.raises(InvalidParameterError, match="n_features"):
        spurious_tabular(n_features=1)
