"""RRR (ExplanationRegularization): penalty checked analytically, masks of any rank, heads,
shortcut_detect's spellings, state, seeds, criterion, quality goals."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from latentsurgeon.correct import ExplanationRegularization, default_settings
from latentsurgeon.data import decoy_digits
from latentsurgeon.errors import InvalidParameterError, LatentSurgeonError, ShapeMismatchError
from latentsurgeon.hooks import hook_count
from latentsurgeon.metrics import accuracy, artifact_relevance_change, gap_closed, shortcut_gap
from latentsurgeon.models import DigitCNN, train_classifier

N, K = 10, 3


def setup(seed: int = 0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N, 1, 4, 4, generator=g)
    y = torch.randint(0, K, (N,), generator=g)
    masks = torch.zeros(N, 4, 4)
    masks[:, :2, :2] = 1.0
    masks[::2, 3, 3] = 1.0
    return x, y, masks


def analytic_penalty(W, p, y, masks, masking):
    mean_w = p @ W
    if masking == "true_label":
        grad = W[y] - mean_w  # d log p_y / dx
    else:
        grad = W.sum(0) - W.shape[0] * mean_w  # sum_k d log p_k / dx
    return (masks.reshape(len(y), -1) * grad ** 2).sum()


@pytest.mark.parametrize("masking", ["true_label", "sum_log_probs"])
@pytest.mark.parametrize("normalize", [False, True])
def test_penalty_matches_the_analytic_input_gradient(masking, normalize, nets):
    x, y, masks = setup()
    model = nets.Linear2d()
    template = copy.deepcopy(model)
    rrr = ExplanationRegularization(lambda_rrr=2.0, epochs=1, batch_size=N, masking=masking,
                                    normalize=normalize, progress=False).fit(model, x, y, masks)
    p = torch.softmax(template(x).detach(), 1)
    expected = analytic_penalty(template.fc.weight.detach(), p, y, masks, masking)
    if normalize:
        expected = expected / masks.sum()
    assert rrr.history_["penalty"][0] == pytest.approx(float(expected), rel=1e-4)
    ce = nn.functional.cross_entropy(template(x), y).detach()
    assert rrr.history_["loss"][0] == pytest.approx(float(ce + 2.0 * expected), rel=1e-4)
    assert rrr.n_samples_ == N


def test_tabular_rows_and_masks_of_the_inputs_shape():
    """(N, D) inputs with (N, D) or (D,) masks: the penalty of a linear model, analytically."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 6, generator=g), torch.randint(0, K, (20,), generator=g)
    torch.manual_seed(0)
    model = nn.Linear(6, K)
    template = copy.deepcopy(model)
    column = torch.zeros(6)
    column[5] = 1.0
    rrr = ExplanationRegularization(epochs=1, batch_size=20, progress=False).fit(
        model, x, y, column)
    p = torch.softmax(template(x).detach(), 1)
    expected = analytic_penalty(template.weight.detach(), p, y, column.expand(20, 6),
                                "true_label")
    assert rrr.history_["penalty"][0] == pytest.approx(float(expected), rel=1e-4)
    again = ExplanationRegularization(epochs=1, batch_size=20, progress=False).fit(
        copy.deepcopy(template), x, y, column.expand(20, 6).numpy())
    for key, values in rrr.history_.items():
        assert again.history_[key] == pytest.approx(values)
    with pytest.raises(ShapeMismatchError, match=r"RRR: shortcut_masks must have the inputs' "
                                                 r"shape \(20, 6\)"):
        ExplanationRegularization(epochs=1, progress=False).fit(model, x, y, torch.ones(5))


def test_mask_forms_are_equivalent(nets):
    x, y, masks = setup()
    region = masks[1].numpy().astype(bool)  # (H, W), numpy, bool
    full = torch.as_tensor(region, dtype=torch.float32).expand(N, -1, -1)
    runs = []
    # (H, W), (N, H, W), numpy, (N, 1, H, W) and shortcut_detect's (1, H, W)
    for m in (region, full, full.numpy(), full[:, None], region[None]):
        model = nets.Linear2d()
        torch.manual_seed(0)
        model.load_state_dict(nets.Linear2d().state_dict())
        rrr = ExplanationRegularization(epochs=1, batch_size=5, progress=False)
        runs.append(rrr.fit(model, x, y.numpy(), m).history_["penalty"][0])
    assert all(r == pytest.approx(runs[0]) for r in runs)


@pytest.mark.parametrize("wrap,head", [("tuple", "logits"), ("tuple_last", 1), ("dict", "out")])
def test_head_selects_logits(wrap, head, nets):
    """shortcut_detect's ``head="logits"`` on a plain tuple takes element 0."""
    x, y, masks = setup()
    plain, wrapped = nets.Linear2d(), nets.Linear2d(wrap)
    wrapped.load_state_dict(plain.state_dict())
    a = ExplanationRegularization(epochs=1, batch_size=N, progress=False).fit(plain, x, y, masks)
    b = ExplanationRegularization(epochs=1, batch_size=N, head=head, progress=False).fit(
        wrapped, x, y, masks)
    for key, values in a.history_.items():
        assert values == pytest.approx(b.history_[key])
    with pytest.raises(LatentSurgeonError, match="head"):
        ExplanationRegularization(epochs=1, progress=False).fit(nets.Linear2d("dict"), x, y,
                                                                masks)


def test_shortcut_detect_spellings_run_unchanged(nets):
    """Their users' code: ``n_epochs``, ``random_state`` and the positional order, no warning."""
    x, y, masks = setup()
    a, b = nets.Linear2d(), nets.Linear2d()
    b.load_state_dict(a.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        theirs = ExplanationRegularization(1.0, 1e-3, 2, 5, "logits", None, 3, progress=False)
        also = ExplanationRegularization(lambda_rrr=1.0, lr=1e-3, n_epochs=2, batch_size=5,
                                         head="logits", device=None, random_state=3,
                                         progress=False)
        theirs.fit(a, x, y.numpy(), masks.numpy())
        also.fit(b, x, y.numpy(), masks.numpy())
    assert theirs.get_params() == also.get_params()
    assert also.epochs == 2 and also.seed == 3 and theirs.history_ == also.history_
    with pytest.warns(FutureWarning, match="target= is deprecated; use masking="):
        old = ExplanationRegularization(target="sum_log_probs")
    assert old.masking == "sum_log_probs"


def test_criterion_seed_and_validation(nets):
    x, y, masks = setup()
    template = nets.Linear2d()

    def weights_after(**kw):
        model = copy.deepcopy(template)
        ExplanationRegularization(epochs=2, batch_size=5, progress=False, **kw).fit(
            model, x, y, masks)
        return model.fc.weight.detach().clone()

    weighted = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 4.0, 0.5]))
    assert not torch.allclose(weights_after(criterion=weighted), weights_after())
    torch.testing.assert_close(weights_after(seed=1), weights_after(seed=1))
    assert not torch.allclose(weights_after(seed=None), weights_after(seed=None))
    with pytest.raises(InvalidParameterError, match=r"lambda_rrr must be a number in \[0"):
        weights_after(lambda_rrr=-0.5)
    with pytest.raises(InvalidParameterError, match="masking must be one of"):
        weights_after(masking="all")
    with pytest.raises(InvalidParameterError, match=r"labels must lie in \[0, 2\]"):
        ExplanationRegularization(epochs=1, progress=False).fit(template, x, y + 3, masks)


def test_mode_flags_and_batchnorm_stats_restored(watermark):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 14 * 14, 10))
    model[0].bias.requires_grad_(False)
    model.train()
    stats = model[1].running_mean.clone()
    split = watermark.train
    ExplanationRegularization(epochs=1, progress=False).fit(
        model, split.images[:64], split.labels[:64], split.masks[:64])
    assert model.training  # the mode it had
    assert not model[0].bias.requires_grad and model[0].weight.requires_grad
    assert torch.equal(model[1].running_mean, stats)  # BatchNorm ran with frozen statistics
    assert hook_count(model) == 0


def test_errors(nets):
    x, y, masks = setup()
    with pytest.raises(LatentSurgeonError, match="shortcut_masks"):
        ExplanationRegularization().fit(nets.Linear2d(), x, y)
    with pytest.raises(LatentSurgeonError, match="labels"):
        ExplanationRegularization().fit(nets.Linear2d(), x, shortcut_masks=masks)
    with pytest.raises(ShapeMismatchError, match="labels has 3"):
        ExplanationRegularization().fit(nets.Linear2d(), x, y[:3], masks)
    with pytest.raises(ShapeMismatchError, match=r"\(4, 4\), \(1, 4, 4\)"):
        ExplanationRegularization().fit(nets.Linear2d(), x, y, np.zeros((3, 4, 4)))


def test_save_load_and_export(tmp_path, nets):
    x, y, masks = setup()
    model = nets.Linear2d()
    rrr = ExplanationRegularization(epochs=2, batch_size=5, progress=False,
                                    criterion=nn.CrossEntropyLoss()).fit(model, x, y, masks)
    # the criterion is code: refused (nothing written) unless excluded and given back to load
    with pytest.raises(InvalidParameterError, match=r"criterion is a module CrossEntropyLoss"):
        rrr.save(tmp_path / "rrr.pt")
    assert not (tmp_path / "rrr.pt").exists()
    rrr.save(tmp_path / "rrr.pt", exclude=("criterion",))
    criterion = nn.CrossEntropyLoss()
    loaded = ExplanationRegularization.load(tmp_path / "rrr.pt", criterion=criterion)
    assert loaded.history_ == rrr.history_ and loaded.criterion is criterion
    assert {k: v for k, v in loaded.get_params().items() if k != "criterion"} == \
        {k: v for k, v in rrr.get_params().items() if k != "criterion"}
    # the loaded one does what the saved one does: refit on the same start gives the same model
    again = nets.Linear2d()
    refit = copy.deepcopy(again)
    ExplanationRegularization(epochs=2, batch_size=5, progress=False,
                              criterion=nn.CrossEntropyLoss()).fit(again, x, y, masks)
    loaded.fit(refit, x, y, masks)
    torch.testing.assert_close(refit(x), again(x), rtol=0, atol=0)
    with pytest.warns(UserWarning, match="criterion was excluded"):
        assert ExplanationRegularization.load(tmp_path / "rrr.pt").criterion is None
    exported = rrr.export(model)
    assert exported is not model
    torch.testing.assert_close(exported(x), model(x))


def _check_watermark_goals(before, after_model, base_gap, watermark):
    after = shortcut_gap(after_model, watermark.test, watermark.poisoned)
    assert gap_closed(base_gap, after) >= 0.5
    assert base_gap["clean_acc"] - after["clean_acc"] <= 0.03
    poisoned = watermark.poisoned
    change = artifact_relevance_change(before, after_model, poisoned.images, poisoned.masks,
                                       target=watermark.shortcut_class)
    assert change["reduction"] >= 0.5


def test_quality_watermark_finetune(base_model, base_gap, watermark):
    """Fine-tuning the trained model, the watermark's region as every training image's mask."""
    before = copy.deepcopy(base_model)
    region = watermark.poisoned.masks[0]
    ExplanationRegularization(progress=False, **default_settings("rrr_finetune")).fit(
        base_model, watermark.train.images, watermark.train.labels, region)
    _check_watermark_goals(before, base_model, base_gap, watermark)


def test_quality_watermark_from_scratch(base_model, base_gap, watermark):
    """The default recipe: a freshly initialised DigitCNN trained with RRR."""
    region = watermark.poisoned.masks[0]
    torch.manual_seed(0)
    fresh = DigitCNN()
    ExplanationRegularization(progress=False).fit(fresh, watermark.train.images,
                                                  watermark.train.labels, region)
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
