"""``latentsurgeon.compat.shortcut_detect`` against shortcut_detect's behaviours.

Re-derived from shortcut_detect's tests/test_explanation_regularization.py (every behaviour it
asserts has a test here, written anew) and its documented API
(../shared/reference/shortcut_detect-rrr-api.txt): defaults, the penalty, the mask forms and
their bilinear resizing, the history, reproducibility, tuple outputs.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

# was: from shortcut_detect.mitigation import ExplanationRegularization
from latentsurgeon.compat.shortcut_detect import ExplanationRegularization, resize_masks
from latentsurgeon.errors import InvalidParameterError, ShapeMismatchError

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cnn(seed: int = 0, in_channels: int = 1, n_classes: int = 2) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, n_classes))


def test_defaults_are_shortcut_detects():
    params = inspect.signature(ExplanationRegularization).parameters
    assert {k: p.default for k, p in params.items()} == {
        "lambda_rrr": 1.0, "lr": 1e-4, "n_epochs": 10, "batch_size": 8, "head": "logits",
        "device": None, "random_state": None}
    ExplanationRegularization(lambda_rrr=1.0, n_epochs=5, random_state=42)
    ExplanationRegularization(lambda_rrr=0.5, lr=1e-3, batch_size=4)


def test_fit_updates_every_parameter_in_place():
    model = tiny_cnn()
    before = [p.detach().clone() for p in model.parameters()]
    images = torch.randn(16, 1, 16, 16)
    labels = np.array([0, 1] * 8)
    masks = np.zeros((16, 16, 16), dtype=np.float32)
    masks[:, 8:, :] = 1.0
    rrr = ExplanationRegularization(lambda_rrr=0.1, n_epochs=2, batch_size=4, random_state=42)
    assert rrr.fit(model, images, labels, masks) is rrr
    assert all(not torch.allclose(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_length_mismatches_raise_value_errors_with_shortcut_detects_words():
    model = tiny_cnn()
    rrr = ExplanationRegularization(n_epochs=1, random_state=42)
    with pytest.raises(ValueError, match="labels length"):
        rrr.fit(model, torch.randn(10, 1, 16, 16), np.array([0, 1] * 3),
                np.zeros((10, 16, 16), dtype=np.float32))
    with pytest.raises(ValueError, match="shortcut_masks batch size"):
        rrr.fit(model, torch.randn(10, 1, 16, 16), np.array([0, 1] * 5),
                np.zeros((5, 16, 16), dtype=np.float32))


@pytest.mark.parametrize("shape", [(1, 16, 16), (16, 16)])
def test_one_mask_serves_every_image(shape):
    rrr = ExplanationRegularization(n_epochs=1, batch_size=6, random_state=42)
    masks = np.zeros(shape, dtype=np.float32)
    masks[..., 8:, :] = 1.0
    rrr.fit(tiny_cnn(), torch.randn(6, 1, 16, 16), np.array([0, 1] * 3), masks)
    assert len(rrr._history) == 1


def test_history_has_one_entry_per_epoch():
    rrr = ExplanationRegularization(n_epochs=3, batch_size=4, random_state=42)
    rrr.fit(tiny_cnn(), torch.randn(8, 1, 16, 16), np.array([0, 1] * 4),
            np.zeros((8, 16, 16), dtype=np.float32))
    assert [h["epoch"] for h in rrr._history] == [1, 2, 3]
    assert all({"epoch", "ce_loss", "penalty"} <= set(h) for h in rrr._history)
    assert all(h["penalty"] == 0.0 for h in rrr._history)  # empty masks: nothing penalised


def test_same_random_state_same_model():
    images, labels = torch.randn(8, 1, 16, 16), np.array([0, 1] * 4)
    masks = np.ones((8, 16, 16), dtype=np.float32)
    rrr = ExplanationRegularization(n_epochs=2, random_state=123)
    model1, model2 = tiny_cnn(1), tiny_cnn(1)
    rrr.fit(model1, images, labels, masks)
    rrr.fit(model2, images, labels, masks)
    for p1, p2 in zip(model1.parameters(), model2.parameters(), strict=True):
        torch.testing.assert_close(p1, p2)


def test_a_tuple_output_with_head_0():
    class TupleModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_cnn()

        def forward(self, x):
            return (self.net(x),)

    rrr = ExplanationRegularization(n_epochs=1, head=0, random_state=42)
    rrr.fit(TupleModel(), torch.randn(4, 1, 16, 16), np.array([0, 1, 0, 1]),
            np.zeros((4, 16, 16), dtype=np.float32))
    assert len(rrr._history) == 1


def test_one_step_equals_shortcut_detects_loss_and_adam_step():
    """One batch, one epoch: the update is Adam(lr) on CE + lambda * sum(mask * grad^2) with the
    gradient of the true label's log-probability, exactly as shortcut_detect computes it."""
    images = torch.randn(6, 1, 8, 8)
    labels = np.array([0, 1, 1, 0, 1, 0])
    masks = np.zeros((6, 8, 8), dtype=np.float32)
    masks[:, :3, :3] = 1.0
    reference = tiny_cnn(2)
    x = images.clone().requires_grad_(True)
    y = torch.from_numpy(labels)
    logits = reference(x)
    sel = F.log_softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    (grad,) = torch.autograd.grad(sel.sum(), x, create_graph=True)
    loss = F.cross_entropy(logits, y) + 3.0 * (torch.from_numpy(masks)[:, None] * grad ** 2).sum()
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-3)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

    model = tiny_cnn(2)
    rrr = ExplanationRegularization(lambda_rrr=3.0, lr=1e-3, n_epochs=1, batch_size=6,
                                    random_state=0)
    rrr.fit(model, images, labels, masks)
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_masks_of_another_size_are_resized_bilinearly():
    small = np.zeros((4, 4, 4), dtype=np.float32)
    small[:, :2, :2] = 1.0
    images = torch.randn(4, 1, 8, 8)
    expected = F.interpolate(torch.from_numpy(small)[:, None], size=(8, 8), mode="bilinear",
                             align_corners=False)[:, 0]
    resized = resize_masks(small, images)
    torch.testing.assert_close(resized, expected)
    assert 0 < float(resized[0, 3, 3]) < 1  # bilinear: a soft edge, not nearest's hard one
    labels = np.array([0, 1, 0, 1])
    fits = []
    for masks in (small, expected.numpy()):
        model = tiny_cnn(3)
        ExplanationRegularization(lambda_rrr=5.0, lr=1e-3, n_epochs=2, batch_size=2,
                                  random_state=1).fit(model, images, labels, masks)
        fits.append([p.detach() for p in model.parameters()])
    for p, q in zip(*fits, strict=True):
        torch.testing.assert_close(p, q)


def test_bad_settings_fail_at_construction():
    with pytest.raises(InvalidParameterError, match="lr"):
        ExplanationRegularization(lr=-1.0)
    with pytest.raises(InvalidParameterError, match="batch_size"):
        ExplanationRegularization(batch_size=0)
    with pytest.raises(ShapeMismatchError, match=r"\(N, C, H, W\)"):
        ExplanationRegularization(n_epochs=1).fit(tiny_cnn(), torch.randn(4, 64), np.zeros(4),
                                                  np.zeros((4, 8, 8)))


def test_the_documented_use_on_decoy_digits_reduces_the_penalty():
    """The documented call, on 96 decoy-swatch digits (16x16): the masked input-gradient penalty
    falls while the model trains."""
    from latentsurgeon.data import decoy_digits

    split = decoy_digits("swatch", size=16).train
    images, labels = split.images[:96], split.labels[:96].numpy()
    masks = split.masks[:96].numpy()
    model = tiny_cnn(0, n_classes=10)
    rrr = ExplanationRegularization(lambda_rrr=10.0, lr=1e-3, n_epochs=4, batch_size=16,
                                    random_state=0)
    rrr.fit(model, images, labels, masks)
    penalties = [h["penalty"] for h in rrr._history]
    assert penalties[-1] < penalties[0]


def test_the_docs_example_runs(tmp_path, monkeypatch):
    from ._sections import run_section

    monkeypatch.chdir(tmp_path)
    namespace = run_section("shortcut_detect")
    assert len(namespace["rrr"]._history) == 2
