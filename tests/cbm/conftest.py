"""Shared fixtures of the concept-model tests: one torch thread, small trained models."""

from __future__ import annotations

import pytest
from _threads import one_thread  # re-exported: the curve and ceiling tests train under it


@pytest.fixture(autouse=True)
def _one_torch_thread(one_thread):
    """Tiny MLPs: one torch thread (tests/_threads.py says why)."""


def small_model(cls, data, **kwargs):
    """A model of ``cls`` fitted on ``data.train`` with one thread (for session fixtures)."""
    with one_thread():
        return cls(data.n_features, data.n_concepts, data.n_classes, **kwargs).fit(data.train)


@pytest.fixture(scope="session")
def xor_small():
    from latentsurgeon.data import toy_concepts

    return toy_concepts("xor", n_train=600, n_test=400, seed=0, noise=0.1)


@pytest.fixture(scope="session")
def xor_cbm(xor_small):
    """An independent CBM with an MLP head on noisy xor (concept errors to correct)."""
    from latentsurgeon.cbm import ConceptBottleneckModel

    return small_model(ConceptBottleneckModel, xor_small, head_kind="mlp", scheme="independent",
                       epochs=40, seed=0)
