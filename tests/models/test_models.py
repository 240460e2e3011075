"""Reference models and training loops: shapes, names, learning, checkpoints, the shortcut."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from latentsurgeon.errors import ShapeMismatchError
from latentsurgeon.models import (
    DigitAutoencoder,
    DigitCNN,
    TrainingHistory,
    evaluate_accuracy,
    train_autoencoder,
    train_classifier,
)

EXPECTED_NAMES = [
    "",
    "features",
    "features.0",
    "features.1",
    "features.2",
    "features.3",
    "features.4",
    "features.5",
    "classifier",
    "classifier.0",
    "classifier.1",
    "classifier.2",
    "classifier.3",
]


# ``watermark`` (the decoy digits) and ``clean_run`` (the demo's recipe on the clean training
# images, a checkpoint per epoch) are session fixtures of tests/conftest.py.


# --- architecture --------------------------------------------------------------------------------


def test_cnn_shapes_and_module_names():
    torch.manual_seed(0)
    model = DigitCNN()
    assert [name for name, _ in model.named_modules()] == EXPECTED_NAMES
    x = torch.rand(5, 1, 16, 16)
    assert model(x).shape == (5, 10)
    assert model.features(x).shape == (5, 32, 4, 4)
    kinds = [type(m) for m in model.features] + [type(m) for m in model.classifier]
    assert kinds == [
        nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Conv2d, nn.ReLU, nn.MaxPool2d,
        nn.Flatten, nn.Linear, nn.ReLU, nn.Linear,
    ]  # fmt: skip
    assert all(not m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    assert model.classifier[1].in_features == 32 * 4 * 4
    assert model.classifier[1].out_features == 64
    assert DigitCNN(n_classes=3, channels=(4, 8), hidden=7)(x).shape == (5, 3)


@pytest.mark.parametrize("shape", [(5, 16, 16), (5, 3, 16, 16), (5, 1, 28, 28), (1, 256)])
def test_cnn_rejects_wrong_shapes(shape):
    with pytest.raises(ShapeMismatchError, match=r"\(N, 1, 16, 16\)"):
        DigitCNN()(torch.rand(shape))


def test_cnn_wrong_shape_is_also_value_error():
    with pytest.raises(ValueError, match="unsqueeze"):
        DigitCNN()(torch.rand(2, 16, 16))


def test_autoencoder_shapes():
    torch.manual_seed(0)
    ae = DigitAutoencoder(latent_dim=6)
    x = torch.rand(4, 1, 16, 16)
    z = ae.encode(x)
    assert z.shape == (4, 6)
    recon = ae.decode(z)
    assert recon.shape == (4, 1, 16, 16)
    assert recon.min() >= 0 and recon.max() <= 1
    assert torch.equal(ae(x), recon)
    assert isinstance(ae.decoder[-1], nn.Sigmoid)
    assert {"encoder", "decoder"} <= {n for n, _ in ae.named_children()}
    with pytest.raises(ShapeMismatchError):
        ae.decode(torch.rand(4, 5))
    with pytest.raises(ShapeMismatchError):
        ae.encode(torch.rand(4, 16, 16))


# --- training ------------------------------------------------------------------------------------


def test_classifier_learns_clean_digits(clean_run, watermark):
    model, history, _ = clean_run
    assert isinstance(history, TrainingHistory)
    assert history.epochs == 15 and len(history.acc) == 15
    assert history.loss[-1] < history.loss[0] / 3
    assert not model.training, "train_classifier must leave the model in eval mode"
    assert evaluate_accuracy(model, watermark.test) > 0.9


def test_checkpoints_per_epoch_loadable_and_atomic(clean_run, watermark):
    model, history, ckpt_dir = clean_run
    expected = [f"epoch_{k:03d}.pt" for k in range(1, 16)]
    # Only the final files: no temporary file left behind by the atomic writes.
    assert sorted(p.name for p in Path(ckpt_dir).iterdir()) == expected
    assert [p.name for p in history.checkpoints] == expected
    ckpt = torch.load(history.checkpoints[4], weights_only=True)
    assert ckpt["epoch"] == 5 and ckpt["lr"] == pytest.approx(1e-3)
    assert ckpt["loss"] == pytest.approx(history.loss[4])
    last = torch.load(history.checkpoints[-1], weights_only=True)
    restored = DigitCNN()
    restored.load_state_dict(last["state_dict"])
    restored.eval()
    x = watermark.test.images[:32]
    with torch.no_grad():
        assert torch.equal(restored(x), model(x))
    # Earlier checkpoints hold earlier weights.
    assert not torch.equal(
        ckpt["state_dict"]["features.0.weight"], last["state_dict"]["features.0.weight"]
    )


def test_failed_checkpoint_write_leaves_no_partial_file(tmp_path, monkeypatch, watermark):
    def broken_save(obj, fh, *args, **kwargs):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    model = DigitCNN().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = (watermark.train.images[:64], watermark.train.labels[:64])
    with pytest.raises(OSError, match="disk full"):
        train_classifier(model, data, epochs=1, progress=False, checkpoint_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    # A failed call leaves the model as it found it: mode and weights.
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_watermark_shortcut_costs_ten_points(base_model, watermark):
    model = base_model  # DigitCNN, seed 0, trained 15 epochs on watermark.train (tests/conftest.py)
    clean = evaluate_accuracy(model, watermark.test)
    poisoned = evaluate_accuracy(model, watermark.poisoned)
    assert clean > 0.9
    assert clean - poisoned >= 0.10, (clean, poisoned)
    # The loss is the shortcut at work: poisoned digits are pulled to the shortcut class.
    with torch.no_grad():
        pred = model(watermark.poisoned.images).argmax(dim=1)
    flipped = (
        (
            (pred == watermark.shortcut_class)
            & (watermark.poisoned.labels != watermark.shortcut_class)
        )
        .float()
        .mean()
    )
    assert flipped > 0.05


def test_training_is_deterministic_and_restores_global_rng(watermark):
    data = (watermark.train.images[:256], watermark.train.labels[:256])
    params = []
    for _ in range(2):
        torch.manual_seed(1)
        model = DigitCNN()
        before = torch.get_rng_state()
        train_classifier(model, data, epochs=2, seed=5, progress=False)
        assert torch.equal(torch.get_rng_state(), before), "global RNG state changed"
        params.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(params[0], params[1])
    torch.manual_seed(1)
    other = DigitCNN()
    train_classifier(other, data, epochs=2, seed=6, progress=False)
    assert not torch.equal(params[0], torch.cat([p.flatten() for p in other.parameters()]))


def test_accepts_every_data_form(watermark):
    images, labels = watermark.train.images[:128], watermark.train.labels[:128]
    torch.manual_seed(0)
    reference = DigitCNN()
    forms = [
        (images, labels),
        TensorDataset(images, labels),
        DataLoader(TensorDataset(images, labels), batch_size=32),
        watermark.train,
    ]
    for data in forms:
        model = copy.deepcopy(reference)
        history = train_classifier(model, data, epochs=1, progress=False)
        assert history.epochs == 1 and 0 <= history.acc[0] <= 1
        assert 0 <= evaluate_accuracy(model, data) <= 1
    with pytest.raises(ValueError, match="labels"):
        train_classifier(copy.deepcopy(reference), images, epochs=1, progress=False)
    with pytest.raises(TypeError, match="Cannot read data"):
        train_classifier(copy.deepcopy(reference), "digits", epochs=1, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(copy.deepcopy(reference), (images, labels), epochs=-1)


def test_custom_optimizer_is_used(watermark):
    torch.manual_seed(0)
    model = DigitCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    before = copy.deepcopy(model.state_dict())
    history = train_classifier(
        model, watermark.train, epochs=1, progress=False, optimizer=opt, lr=1.0
    )
    assert history.lr == 0.0
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_evaluate_accuracy_restores_mode_and_counts():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    x = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    y = torch.tensor([0, 1, 1, 1])
    model.train()
    assert evaluate_accuracy(model, (x, y), batch_size=3) == pytest.approx(0.75)
    assert model.training
    model.eval()
    evaluate_accuracy(model, (x, y))
    assert not model.training


def test_progress_false_prints_nothing(capsys, watermark):
    model = DigitCNN()
    train_classifier(model, (watermark.train.images[:64], watermark.train.labels[:64]),
                     epochs=1, progress=False)  # fmt: skip
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_autoencoder_loss_decreases(watermark, tmp_path):
    torch.manual_seed(0)
    ae = DigitAutoencoder(latent_dim=16)
    images = watermark.train_clean.images
    before = torch.nn.functional.mse_loss(ae(images), images).item()
    history = train_autoencoder(
        ae, images, epochs=5, seed=0, progress=False, checkpoint_dir=tmp_path
    )
    assert history.epochs == 5 and history.acc == []
    assert all(b < a for a, b in zip(history.loss, history.loss[1:], strict=False))
    assert history.loss[-1] < 0.5 * history.loss[0]
    assert not ae.training
    with torch.no_grad():
        after = torch.nn.functional.mse_loss(ae(images), images).item()
    assert after < 0.5 * before
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"epoch_{k:03d}.pt" for k in range(1, 6)]
    # Labelled forms are accepted too: labels are ignored.
    train_autoencoder(ae, watermark.train_clean, epochs=1, progress=False)
