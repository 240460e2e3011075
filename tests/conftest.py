"""Fixtures every test directory shares: one torch thread, and the decoy digits with the demo's
DigitCNN trained on them, each model trained once per test session.

The session fixtures hold read-only objects: a test that changes a model takes a fresh copy
(``base_model``, ``clean_trained``, or a model loaded from ``digit_cnn_state(...)``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from _threads import one_thread as _one_thread

from latentsurgeon.data import decoy_digits
from latentsurgeon.models import DigitCNN, train_classifier

# The demo's settings for the uncorrected model (the quality goals are stated for these).
BASE_TRAINING = {"epochs": 15, "lr": 1e-3, "batch_size": 64, "seed": 0}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The test runs on one torch thread (tests/_threads.py says why). Directories of small-tensor
    tests request it from an autouse fixture of their conftest."""
    with _one_thread():
        yield


# -- the decoy digits and the demo's DigitCNN ------------------------------------------------------
def _train_digit_cnn(split, seed: int = 0, checkpoint_dir: Path | None = None):
    """``(model, history)``: a DigitCNN trained with the demo's recipe on ``split`` (one thread);
    the model in the mode ``train_classifier`` left it (tests/models checks that mode)."""
    with _one_thread():
        torch.manual_seed(seed)
        model = DigitCNN()
        history = train_classifier(model, split, progress=False, checkpoint_dir=checkpoint_dir,
                                   **{**BASE_TRAINING, "seed": seed})
    return model, history


@pytest.fixture(scope="session")
def watermark():
    """``decoy_digits("watermark", seed=0)``."""
    return decoy_digits("watermark", seed=0)


@pytest.fixture(scope="session")
def digit_cnn_state(watermark) -> Callable[..., dict[str, torch.Tensor]]:
    """``digit_cnn_state(seed=0, **decoy)``: the state of a DigitCNN trained with the demo's recipe
    (15 epochs, seed ``seed``) on ``decoy_digits("watermark", seed=seed, **decoy).train``, trained
    once per session per setting. Read-only: load it into a fresh ``DigitCNN``."""
    states: dict[tuple, dict[str, torch.Tensor]] = {}

    def state(seed: int = 0, **decoy) -> dict[str, torch.Tensor]:
        key = (seed, tuple(sorted(decoy.items())))
        if key not in states:
            data = watermark if key == (0, ()) else decoy_digits("watermark", seed=seed, **decoy)
            model, _ = _train_digit_cnn(data.train, seed)
            states[key] = copy.deepcopy(model.state_dict())
        return states[key]

    return state


@pytest.fixture(scope="session")
def base_state(digit_cnn_state) -> dict[str, torch.Tensor]:
    """The state of the uncorrected DigitCNN (seed 0, 15 epochs on the watermarked train)."""
    return digit_cnn_state()


@pytest.fixture
def base_model(base_state) -> DigitCNN:
    """A fresh copy of the uncorrected DigitCNN (seed 0, 15 epochs on the watermarked train)."""
    model = DigitCNN()
    model.load_state_dict(base_state)
    return model.eval()


@pytest.fixture(scope="session")
def base_gap(base_state, watermark) -> dict[str, float]:
    """``shortcut_gap`` of the uncorrected DigitCNN on the watermark's test and poisoned splits."""
    from latentsurgeon.metrics import shortcut_gap

    model = DigitCNN()
    model.load_state_dict(base_state)
    return shortcut_gap(model.eval(), watermark.test, watermark.poisoned)


@pytest.fixture(scope="session")
def clean_run(watermark, tmp_path_factory):
    """``(model, history, checkpoint_dir)``: the demo's recipe on the training images without any
    watermark, a checkpoint per epoch. The model is shared: read it, never change it."""
    checkpoint_dir = tmp_path_factory.mktemp("clean_ckpt")
    model, history = _train_digit_cnn(watermark.train_clean, checkpoint_dir=checkpoint_dir)
    return model, history, checkpoint_dir


@pytest.fixture
def clean_trained(clean_run) -> DigitCNN:
    """A fresh copy of the DigitCNN trained on the training images without any watermark."""
    model = DigitCNN()
    model.load_state_dict(clean_run[0].state_dict())
    return model.eval()
