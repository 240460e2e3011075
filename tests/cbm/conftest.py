"""Shared fixtures of the concept-model tests: one torch thread, small trained models."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch


@contextmanager
def one_thread() -> Iterator[None]:
    # Tiny MLPs: on a busy 2-core machine a second intra-op thread spin-waits far longer than the
    # work takes, so a model that trains in a second single-threaded can take a minute.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_thread():
        yield


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
