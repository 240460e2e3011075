"""SpRAy and PrototypeDiscovery on relevance vectors whose groups are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.metrics import adjusted_rand_score

from latentsurgeon.discover import PrototypeDiscovery, SpRAy
from latentsurgeon.errors import InvalidParameterError


def _groups(sizes=(40, 30, 20), dim=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(sizes), dim, generator=g) * 3
    rows, truth = [], []
    for k, n in enumerate(sizes):
        rows.append(centres[k] + 0.3 * torch.randn(n, dim, generator=g))
        truth += [k] * n
    return torch.cat(rows), np.array(truth)


def test_spray_finds_the_groups_and_their_number_by_the_eigengap():
    x, truth = _groups()
    spray = SpRAy().fit(x.reshape(len(x), 1, 8, 8))
    assert spray.n_clusters_ == 3
    assert adjusted_rand_score(truth, spray.labels_.numpy()) == 1.0
    assert spray.eigenvalues_[0] < 1e-6 and int(torch.argmax(spray.eigengaps_)) == 1


def test_spray_is_an_estimator_and_deterministic():
    x, _ = _groups(seed=2)
    spray = SpRAy(n_neighbors=8, cluster_range=(2, 5), seed=3)
    assert spray.fit(x) is spray
    twin = clone(spray)
    assert not twin.is_fitted() and twin.get_params() == spray.get_params()
    assert torch.equal(twin.fit(x).labels_, spray.labels_)


@pytest.mark.parametrize("params", [{"cluster_range": (1, 4)}, {"cluster_range": (5, 3)},
                                    {"n_neighbors": 1}])
def test_spray_refuses_bad_parameters(params):
    x, _ = _groups()
    with pytest.raises(InvalidParameterError):
        SpRAy(**params).fit(x)


def test_prototypes_are_members_nearest_their_component():
    x, truth = _groups(sizes=(30, 30), dim=16)
    pcx = PrototypeDiscovery(n_components=2, n_prototypes=5).fit(x)
    assert adjusted_rand_score(truth, pcx.labels_.numpy()) == 1.0
    for j in range(2):
        assert (pcx.labels_[pcx.prototypes_[j]] == j).all()
    assert pcx.log_likelihood_.shape == (60,)
    assert not clone(pcx).is_fitted()
