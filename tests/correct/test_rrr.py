"""RRR (ExplanationRegularization): penalty checked analytically, masks, heads, state, quality goals."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch
from torch import nn

from latentsurgeon.correct import ExplanationRegularization, default_settings
from latentsurgeon.correct.rrr import prepare_masks
from latentsurgeon.data import decoy_digits
from latentsurgeon.errors import LatentSurgeonError, ShapeMismatchError
from latentsurgeon.hooks import hook_count
from latentsurgeon.metrics import accuracy, artifact_relevance_change, gap_closed, shortcut_gap
from latentsurgeon.models import DigitCNN, train_classifier

N, K = 10, 3


class Linear2d(nn.Module):
    """logits = W vec(x) + b for (N, 1, 4, 4) inputs; optionally a tuple or dict output."""

    def __init__(self, wrap: str = "tensor") -> None:
        super().__init__()
        self.fc = nn.Linear(16, K)
        self.wrap = wrap

    def forward(self, x):
        logits = self.fc(x.flatten(1))
        if self.wrap == "tuple":
            return (logits.sum(1), logits)
        if self.wrap == "dict":
            return {"aux": logits.sum(1), "out": logits}
        return logits


def setup(seed: int = 0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N, 1, 4, 4, generator=g)
    y = torch.randint(0, K, (N,), generator=g)
    masks = torch.zeros(N, 4, 4)
    masks[:, :2, :2] = 1.0
    masks[::2, 3, 3] = 1.0
    return x, y, masks


def analytic_penalty(model, x, y, masks, target):
    W = model.fc.weight.detach()  # (K, 16)
    p = torch.softmax(model(x).detach(), 1)
    mean_w = p @ W
    if target == "true_label":
        grad = W[y] - mean_w  # d log p_y / dx
    else:
        grad = W.sum(0) - K * mean_w  # sum_k d log p_k / dx
    return (masks.reshape(N, -1) * grad ** 2).sum()


@pytest.mark.parametrize("target", ["true_label", "sum_log_probs"])
@pytest.mark.parametrize("normalize", [False, True])
def test_penalty_matches_the_analytic_input_gradient(target, normalize):
    x, y, masks = setup()
    model = Linear2d()
    template = copy.deepcopy(model)
    rrr = ExplanationRegularization(lambda_rrr=2.0, n_epochs=1, batch_size=N, target=target,
                                    normalize=normalize, progress=False).fit(model, x, y, masks)
    expected = analytic_penalty(template, x, y, masks, target)
    if normalize:
        expected = expected / masks.sum()
    assert rrr.history_["penalty"][0] == pytest.approx(float(expected), rel=1e-4)
    ce = nn.functional.cross_entropy(template(x), y)
    assert rrr.history_["loss"][0] == pytest.approx(float(ce + 2.0 * expected), rel=1e-4)
    assert rrr.n_samples_ == N


def test_mask_forms_are_equivalent():
    x, y, masks = setup()
    region = masks[1].numpy().astype(bool)  # (H, W), numpy, bool
    full = torch.as_tensor(region, dtype=torch.float32).expand(N, -1, -1)
    runs = []
    for m in (region, full, full.numpy(), full[:, None]):
        model = Linear2d()
        torch.manual_seed(0)
        model.load_state_dict(Linear2d().state_dict())
        rrr = ExplanationRegularization(n_epochs=1, batch_size=5, progress=False)
        runs.append(rrr.fit(model, x, y.numpy(), m).history_["penalty"][0])
    assert runs[0] == pytest.approx(runs[1]) == pytest.approx(runs[2]) == pytest.approx(runs[3])


def test_masks_are_resized_nearest():
    images = torch.zeros(2, 1, 8, 8)
    small = torch.zeros(4, 4)
    small[0, 0] = 1
    out = prepare_masks(small, images)
    assert out.shape == (2, 1, 8, 8)
    assert out[0, 0, :2, :2].eq(1).all() and out.sum() == 2 * 4
    with pytest.raises(ShapeMismatchError, match=r"\(H, W\), \(N, H, W\)"):
        prepare_masks(np.zeros((3, 8, 8)), images)


@pytest.mark.parametrize("wrap,head", [("tuple", 1), ("dict", "out")])
def test_head_selects_logits(wrap, head):
    x, y, masks = setup()
    plain, wrapped = Linear2d(), Linear2d(wrap)
    wrapped.load_state_dict(plain.state_dict())
    a = ExplanationRegularization(n_epochs=1, batch_size=N, progress=False).fit(plain, x, y, masks)
    b = ExplanationRegularization(n_epochs=1, batch_size=N, head=head, progress=False).fit(
        wrapped, x, y, masks)
    for key, values in a.history_.items():
        assert values == pytest.approx(b.history_[key])
    with pytest.raises(LatentSurgeonError, match="head"):
        ExplanationRegularization(n_epochs=1, progress=False).fit(Linear2d(wrap), x, y, masks)


def test_mode_flags_and_batchnorm_stats_restored(watermark):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 14 * 14, 10))
    model[0].bias.requires_grad_(False)
    model.train()
    stats = model[1].running_mean.clone()
    split = watermark.train
    ExplanationRegularization(n_epochs=1, progress=False).fit(
        model, split.images[:64], split.labels[:64], split.masks[:64])
    assert model.training  # the mode it had
    assert not model[0].bias.requires_grad and model[0].weight.requires_grad
    assert torch.equal(model[1].running_mean, stats)  # BatchNorm ran with frozen statistics
    assert hook_count(model) == 0


def test_errors():
    x, y, masks = setup()
    with pytest.raises(LatentSurgeonError, match="target"):
        ExplanationRegularization(target="all").fit(Linear2d(), x, y, masks)
    with pytest.raises(LatentSurgeonError, match="shortcut_masks"):
        ExplanationRegularization().fit(Linear2d(), x, y)
    with pytest.raises(LatentSurgeonError, match="labels"):
        ExplanationRegularization().fit(Linear2d(), x, shortcut_masks=masks)
    with pytest.raises(ShapeMismatchError, match="labels has 3"):
        ExplanationRegularization().fit(Linear2d(), x, y[:3], masks)


def test_save_load_and_export(tmp_path):
    x, y, masks = setup()
    model = Linear2d()
    rrr = ExplanationRegularization(n_epochs=2, batch_size=5, progress=False).fit(model, x, y, masks)
    rrr.save(tmp_path / "rrr.pt")
    loaded = ExplanationRegularization.load(tmp_path / "rrr.pt")
    assert loaded.history_ == rrr.history_ and loaded.get_params() == rrr.get_params()
    exported = rrr.export(model)
    assert exported is not model
    torch.testing.assert_close(exported(x), model(x))


def _check_watermark_goals(before, after_model, base_gap, watermark):
    after = shortcut_gap(after_model, watermark.test, watermark.poisoned)
    assert gap_closed(base_gap, after) >= 0.5
    assert base_gap["clean_acc"] - after["clean_acc"] <= 0.03
    poisoned = watermark.poisoned
    change = artifact_relevance_change(before, after_model, poisoned.images, poisoned.masks,
                                       targets=watermark.shortcut_class)
    assert change["reduction"] >= 0.5


def test_quality_watermark_finetune(base_model, base_gap, watermark):
    """Fine-tuning the trained model, the watermark's region as every training image's mask."""
    before = copy.deepcopy(base_model)
    region = watermark.poisoned.masks[0]
    start = time.perf_counter()
    ExplanationRegularization(progress=False, **default_settings("rrr_finetune")).fit(
        base_model, watermark.train.images, watermark.train.labels, region)
    assert time.perf_counter() - start < 30
    _check_watermark_goals(before, base_model, base_gap, watermark)


def test_quality_watermark_from_scratch(base_model, base_gap, watermark):
    """The default recipe: a freshly initialised DigitCNN trained with RRR."""
    region = watermark.poisoned.masks[0]
    torch.manual_seed(0)
    fresh = DigitCNN()
    start = time.perf_counter()
    ExplanationRegularization(progress=False).fit(fresh, watermark.train.images,
                                                  watermark.train.labels, region)
    assert time.perf_counter() - start < 30
    _check_watermark_goals(base_model, fresh, base_gap, watermark)


def test_quality_swatch_from_scratch():
    """Within 5 points of a model trained on the same images without swatches."""
    data = decoy_digits("swatch", seed=0)
    torch.manual_seed(0)
    reference = DigitCNN()
    train_classifier(reference, data.train_clean, epochs=15, seed=0, progress=False)
    torch.manual_seed(0)
    model = DigitCNN()
    ExplanationRegularization(progress=False, **default_settings("rrr")).fit(model, data.train)
    # random swatches at test time against the clean-trained model on clean test images
    assert accuracy(model, data.poisoned) >= accuracy(reference, data.test) - 0.05


@pytest.mark.slow
def test_quality_swatch_finetune():
    """Fine-tuning the swatch-trained model also lands within 5 points of the clean-trained one."""
    data = decoy_digits("swatch", seed=0)
    torch.manual_seed(0)
    reference = DigitCNN()
    train_classifier(reference, data.train_clean, epochs=15, seed=0, progress=False)
    torch.manual_seed(0)
    model = DigitCNN()
    train_classifier(model, data.train, epochs=15, seed=0, progress=False)
    plain = accuracy(model, data.poisoned)
    ExplanationRegularization(progress=False, **default_settings("rrr_finetune")).fit(
        model, data.train)
    corrected = accuracy(model, data.poisoned)
    assert corrected >= accuracy(reference, data.test) - 0.05
    assert corrected > plain
