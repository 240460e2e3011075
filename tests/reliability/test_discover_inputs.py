"""The bad-input corpus of ``latentsurgeon.discover``: every case raises our exception with a
message naming the argument, what was expected and what was given, and leaves the model as it
was (``_harness.check``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentsurgeon.discover import (
    PrototypeDiscovery,
    SpRAy,
    discover_shortcuts,
    mask_iou,
    relevance,
)
from latentsurgeon.errors import InvalidParameterError, NonFiniteError, ShapeMismatchError

from ._harness import Case, check

G = torch.Generator().manual_seed(0)
IMAGES = torch.rand(24, 1, 6, 6, generator=G)
LABELS = torch.arange(24) % 3


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(144, 3))
    model.train()
    return model


M = _model()
NAN_IMAGES = IMAGES.clone()
NAN_IMAGES[0, 0, 0, 0] = float("nan")

CASES = [
    Case("relevance: unknown method", lambda: relevance(M, (IMAGES, LABELS), method="lrp"),
         InvalidParameterError, ["method", "input_x_gradient", "lrp"], [M]),
    Case("relevance: batch_size 0", lambda: relevance(M, (IMAGES, LABELS), batch_size=0),
         InvalidParameterError, ["batch_size", "0"], [M]),
    Case("relevance: nothing to compute", lambda: relevance(M, IMAGES, at_input=False),
         InvalidParameterError, ["at_input=false", "layer"], [M]),
    Case("relevance: labels out of range", lambda: relevance(M, (IMAGES, LABELS + 5)),
         InvalidParameterError, ["labels", "[0, 2]", "5"], [M]),
    Case("relevance: labels of another length", lambda: relevance(
        M, IMAGES, labels=LABELS[:5]), ShapeMismatchError, ["labels", "5"], [M]),
    Case("relevance: NaN inputs", lambda: relevance(M, (NAN_IMAGES, LABELS)), NonFiniteError,
         ["data"], [M]),
    Case("relevance: unknown layer", lambda: relevance(M, IMAGES, layer="features.9"),
         KeyError, ["features.9"], [M]),
    Case("relevance: integer inputs", lambda: relevance(M, IMAGES.long()),
         InvalidParameterError, ["data"], [M]),
    Case("SpRAy: too few samples", lambda: SpRAy().fit(IMAGES[:3]), InvalidParameterError,
         ["at least 4", "3"]),
    Case("SpRAy: a bad cluster_range", lambda: SpRAy(cluster_range=(4, 2)).fit(IMAGES),
         InvalidParameterError, ["cluster_range", "(4, 2)"]),
    Case("SpRAy: n_neighbors 1", lambda: SpRAy(n_neighbors=1).fit(IMAGES),
         InvalidParameterError, ["n_neighbors", "1"]),
    Case("SpRAy: NaN relevances", lambda: SpRAy().fit(NAN_IMAGES), NonFiniteError,
         ["relevances"]),
    Case("SpRAy: one vector", lambda: SpRAy().fit(torch.ones(5)), InvalidParameterError,
         ["relevances", "(5,)"]),
    Case("SpRAy.cluster: too many clusters", lambda: SpRAy(cluster_range=(2, 3)).fit(
        IMAGES).cluster(9), InvalidParameterError, ["n_clusters", "9"]),
    Case("PrototypeDiscovery: one sample", lambda: PrototypeDiscovery().fit(IMAGES[:1]),
         InvalidParameterError, ["at least 2", "1"]),
    Case("PrototypeDiscovery: unknown covariance", lambda: PrototypeDiscovery(
        covariance_type="round").fit(IMAGES), InvalidParameterError, ["covariance_type",
                                                                       "round"]),
    Case("discover_shortcuts: a class no sample has", lambda: discover_shortcuts(
        M, (IMAGES, LABELS), layer="0", classes=[7]), InvalidParameterError,
         ["classes", "7", "[0, 1, 2]"], [M]),
    Case("discover_shortcuts: region_size 1", lambda: discover_shortcuts(
        M, (IMAGES, LABELS), layer="0", region_size=1), InvalidParameterError,
         ["region_size", "1"], [M]),
    Case("discover_shortcuts: NaN data", lambda: discover_shortcuts(
        M, (NAN_IMAGES, LABELS), layer="0"), NonFiniteError, ["data"], [M]),
    Case("discover_shortcuts: unknown method", lambda: discover_shortcuts(
        M, (IMAGES, LABELS), layer="0", method="lrp"), InvalidParameterError,
         ["method", "lrp"], [M]),
    Case("mask_iou: shapes differ", lambda: mask_iou(torch.ones(3, 6, 6), torch.ones(3, 5, 5)),
         ShapeMismatchError, ["masks", "(3, 6, 6)", "(3, 5, 5)"]),
    Case("mask_iou: every true mask empty", lambda: mask_iou(
        torch.ones(3, 6, 6), torch.zeros(3, 6, 6)), InvalidParameterError, ["true mask",
                                                                            "empty"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case):
    check(case)


@pytest.fixture(scope="module")
def candidate():
    found = discover_shortcuts(M, (IMAGES, LABELS), layer="0", min_members=3, progress=False)
    return found[0]


@pytest.mark.parametrize("call, error, mentions", [
    (lambda c: c.refine(iterations=0), InvalidParameterError, ["iterations", "0"]),
    (lambda c: c.refine(artifact_labels=torch.ones(24)), InvalidParameterError,
     ["artifact_labels", "both 0 and 1"]),
    (lambda c: c.refine(artifact_labels=torch.ones(5)), ShapeMismatchError,
     ["artifact_labels", "5", "24"]),
    (lambda c: c.masks(fraction=1.5), InvalidParameterError, ["fraction", "1.5"]),
])
def test_candidate_methods_refuse_bad_input(candidate, call, error, mentions):
    check(Case("candidate", lambda: call(candidate), error, mentions, [M]))
