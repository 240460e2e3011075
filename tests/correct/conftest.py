"""Shared fixtures: the decoy data and the uncorrected DigitCNN of the quality goals (trained once)."""

from __future__ import annotations

import copy

import pytest
import torch

from latentsurgeon.data import decoy_digits
from latentsurgeon.models import DigitCNN, train_classifier

# The demo's settings for the uncorrected model (the quality goals are stated for these).
BASE_TRAINING = {"epochs": 15, "lr": 1e-3, "batch_size": 64, "seed": 0}


@pytest.fixture(autouse=True)
def _one_thread():
    # Reproducible timings and no oversubscription when tests run in parallel.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def watermark():
    """``decoy_digits("watermark", seed=0)``."""
    return decoy_digits("watermark", seed=0)


@pytest.fixture(scope="session")
def _base_state(watermark):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = DigitCNN()
        train_classifier(model, watermark.train, progress=False, **BASE_TRAINING)
    finally:
        torch.set_num_threads(before)
    return copy.deepcopy(model.state_dict())


@pytest.fixture
def base_model(_base_state):
    """A fresh copy of the uncorrected DigitCNN (seed 0, 15 epochs on the watermarked train)."""
    model = DigitCNN()
    model.load_state_dict(_base_state)
    return model.eval()


@pytest.fixture(scope="session")
def base_gap(_base_state, watermark):
    from latentsurgeon.metrics import shortcut_gap

    model = DigitCNN()
    model.load_state_dict(_base_state)
    return shortcut_gap(model.eval(), watermark.test, watermark.poisoned)


@pytest.fixture(scope="session")
def _clean_state(watermark):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = DigitCNN()
        train_classifier(model, watermark.train_clean, progress=False, **BASE_TRAINING)
    finally:
        torch.set_num_threads(before)
    return copy.deepcopy(model.state_dict())


@pytest.fixture
def clean_trained(_clean_state):
    """The same DigitCNN recipe trained on the training images without any watermark."""
    model = DigitCNN()
    model.load_state_dict(_clean_state)
    return model.eval()
