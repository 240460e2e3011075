"""The contract every correction shares: fit -> self, attach/applied, export, save/load, state."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from latentsurgeon.correct import (
    AClarc,
    ExplanationRegularization,
    PClarc,
    RRClarc,
    default_settings,
)
from latentsurgeon.errors import LatentSurgeonError
from latentsurgeon.hooks import HookGroup, hook_count
from latentsurgeon.models import DigitCNN

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace


def make(name: str):
    if name == "pclarc":
        return PClarc("features", progress=False)
    if name == "aclarc":
        return AClarc("features", epochs=1, progress=False)
    if name == "rrclarc":
        return RRClarc("features", epochs=1, progress=False)
    return ExplanationRegularization(n_epochs=1, progress=False)


def fit(correction, model, watermark):
    if isinstance(correction, ExplanationRegularization):
        return correction.fit(model, watermark.train.images, watermark.train.labels,
                              watermark.poisoned.masks[0])
    return correction.fit(model, watermark.train)


@pytest.mark.parametrize("name", ["pclarc", "aclarc", "rrclarc", "rrr"])
def test_contract(name, base_model, watermark, tmp_path):
    correction = make(name)
    assert correction.get_params()  # constructor stores parameters only
    assert not correction.is_fitted()
    base_model.train()
    assert fit(correction, base_model, watermark) is correction
    assert hook_count(base_model) == 0
    # every correction leaves the mode as it was: fit changes weights, nothing else
    assert base_model.training
    base_model.eval()
    x = watermark.poisoned.images[:32]
    group = correction.attach(base_model)
    assert isinstance(group, HookGroup)
    hooked = base_model(x)
    group.remove()
    group.remove()
    assert hook_count(base_model) == 0
    with correction.applied(base_model):
        torch.testing.assert_close(base_model(x), hooked)
    exported = correction.export(base_model)
    assert hook_count(exported) == 0
    torch.testing.assert_close(exported(x), hooked)
    buffer = io.BytesIO()
    torch.save(exported, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.load(buffer, weights_only=False)(x), hooked)
    fresh = correction.export(DigitCNN())
    fresh.load_state_dict(exported.state_dict())
    torch.testing.assert_close(fresh(x), hooked)
    torch.testing.assert_close(torch.jit.trace(exported, x)(x), hooked)
    path = tmp_path / f"{name}.pt"
    correction.save(path)
    loaded = type(correction).load(path)
    assert loaded.get_params() == correction.get_params()
    for key, value in correction.learned_state().items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(getattr(loaded, key), value)
        else:
            assert getattr(loaded, key) == value


@pytest.mark.parametrize("name", ["aclarc", "rrclarc"])
def test_trained_clarc_accepts_loaders_and_device(name, base_model, watermark):
    split = watermark.train
    loader = DataLoader(TensorDataset(split.images, split.labels, split.artifact), batch_size=100)
    a, b = copy.deepcopy(base_model), copy.deepcopy(base_model)
    cls = AClarc if name == "aclarc" else RRClarc
    cls("features", epochs=1, device="cpu", progress=False).fit(a, loader)
    cls("features", epochs=1, progress=False).fit(b, split)
    for (key, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, msg=key)


def test_data_without_artifact_labels_is_refused(base_model, watermark):
    with pytest.raises(LatentSurgeonError, match="artifact labels"):
        AClarc("features", progress=False).fit(
            base_model, (watermark.train.images, watermark.train.labels))
    with pytest.raises(LatentSurgeonError, match="class labels"):
        RRClarc("features", progress=False).fit(base_model, watermark.train.images)


def test_default_settings_build_every_correction():
    for name, cls in (("pclarc", PClarc), ("aclarc", AClarc), ("rrclarc", RRClarc),
                      ("rrr", ExplanationRegularization),
                      ("rrr_finetune", ExplanationRegularization)):
        assert isinstance(cls(**default_settings(name)), cls)
    settings = default_settings("pclarc")
    settings["alpha"] = 5.0
    assert default_settings("pclarc")["alpha"] == 1.0  # a fresh copy every time
    with pytest.raises(LatentSurgeonError, match="known: pclarc"):
        default_settings("lrp")
