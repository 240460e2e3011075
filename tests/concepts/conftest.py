"""Shared fixtures of the concept tests: one torch thread, a decoy-trained DigitCNN."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch


@contextmanager
def one_thread() -> Iterator[None]:
    # These tests do small matrix work (eigh of 200x200, 16x16 convolutions). On a busy 2-core
    # machine torch's second intra-op thread turns a 20 ms eigh into seconds of spin-waiting.
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


@pytest.fixture(scope="session")
def decoy_model():
    """``(model, data)``: DigitCNN trained 15 epochs on decoy digits with the class-0 watermark
    (seed 0), trained once per test session."""
    data_mod = pytest.importorskip("latentsurgeon.data")
    models = pytest.importorskip("latentsurgeon.models")
    data = data_mod.decoy_digits("watermark", seed=0)
    with one_thread():
        torch.manual_seed(0)
        model = models.DigitCNN()
        models.train_classifier(model, data.train, epochs=15, seed=0, progress=False)
    model.eval()
    return model, data
