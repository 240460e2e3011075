"""The certificate's verdicts are calibrated: the uncorrected model gets ``not removed``, a model
trained without the artifact ``removed``, a correction ``removed`` or ``reduced``, and a model that
hides the artifact from one test is caught by another; on the demo's setting and on a second one
(another seed and a 4x4 watermark)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from latentsurgeon.correct import REGISTRY, PClarc
from latentsurgeon.data import decoy_digits
from latentsurgeon.models import DigitCNN, train_classifier
from latentsurgeon.verify import THRESHOLDS, certify, combine_seeds


class GradientBlocked(nn.Module):
    """The uncorrected model with its input gradient blocked on the artifact's region: its
    decisions are unchanged, its relevance on the artifact is zero."""

    def __init__(self, model: nn.Module, region: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("region", region.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * (1 - self.region) + (x * self.region).detach())


def _trained(split, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = DigitCNN()
    train_classifier(model, split, epochs=15, seed=seed, progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def second_setting():
    data = decoy_digits("watermark", seed=1, patch_size=4)
    return data, _trained(data.train, 1), _trained(data.train_clean, 1)


def _verdicts(data, model, clean_model):
    cert = lambda m: certify(m, data.test, data.poisoned, target=data.shortcut_class,  # noqa: E731
                             reference=model, progress=False)
    pclarc = REGISTRY["p-clarc"].build(progress=False).corrected(model, data.correction_data())
    hidden = GradientBlocked(model, data.poisoned.masks[0])
    return {"uncorrected": cert(model), "clean": cert(clean_model), "p-clarc": cert(pclarc),
            "hidden": cert(hidden)}


def _check(found):
    assert found["uncorrected"].verdict == "not removed"
    assert found["clean"].verdict == "removed", found["clean"].summary()
    assert found["p-clarc"].verdict in ("removed", "reduced"), found["p-clarc"].summary()
    hidden = found["hidden"]
    assert hidden.judgements["relevance"].verdict == "removed"   # fooled ...
    assert hidden.judgements["insertion"].verdict == "not removed"  # ... and caught
    assert hidden.verdict == "not removed"


def test_calibrated_on_the_demo_setting(watermark, base_model, clean_trained):
    _check(_verdicts(watermark, base_model, clean_trained))


def test_calibrated_on_a_second_setting(second_setting):
    data, model, clean_model = second_setting
    assert certify(model, data.test, data.poisoned, target=0, progress=False
                   ).figures["insertion"]["flip_rate"].value > 0.1  # the shortcut is used
    _check(_verdicts(data, model, clean_model))


def test_straight_through_pclarc_is_flagged_by_relevance(watermark, base_model):
    settings = {**REGISTRY["p-clarc"].settings, "gradient": "straight_through"}
    corrected = PClarc(**settings).corrected(base_model, watermark.correction_data())
    found = certify(corrected, watermark.test, watermark.poisoned, target=0,
                    reference=base_model, progress=False)
    assert found.judgements["insertion"].verdict == "removed"
    assert found.judgements["relevance"].verdict == "not removed"
    assert found.verdict == "reduced" and "relevance" in found.reason


def test_without_a_reference_relevance_is_reported_not_judged(watermark, base_model):
    found = certify(base_model, watermark.test, watermark.poisoned, target=0, progress=False)
    assert found.judgements["relevance"].verdict is None
    assert "needs a reference" in found.judgements["relevance"].reason
    assert found.verdict == "not removed"
    assert not found.meets("reduced") and found.meets("not removed")


def test_the_certificate_is_json_and_lists_every_figure_with_an_interval(watermark, base_model,
                                                                        clean_trained):
    found = certify(clean_trained, watermark.test, watermark.poisoned, target=0,
                    reference=base_model, layers=["features"], tcav_runs=3, progress=False)
    text = json.dumps(found.to_dict())
    back = json.loads(text)
    assert back["verdict"] == found.verdict
    for test, figures in back["figures"].items():
        for name, estimate in figures.items():
            assert estimate["low"] <= estimate["value"] <= estimate["high"], (test, name)
    assert back["concept"][0]["layer"] == "features"
    assert back["concept_reference"][0]["layer"] == "features"
    assert 0.0 <= back["concept"][0]["cav_accuracy"] <= 1.0
    assert set(back["criteria"]) == set(THRESHOLDS)
    assert "verdict:" in found.summary() and "concept (reported) features" in found.summary()


def test_the_reference_concept_rows_can_be_skipped(watermark, base_model, clean_trained):
    found = certify(clean_trained, watermark.test, watermark.poisoned, target=0,
                    reference=base_model, layers=["features"], tcav_runs=3,
                    concept_reference=False, progress=False)
    assert [row.layer for row in found.concept] == ["features"]
    assert found.concept_reference == []


def test_a_model_is_left_as_it_was(watermark, base_model):
    base_model.train()
    before = copy.deepcopy(base_model.state_dict())
    certify(base_model, watermark.test, watermark.poisoned, target=0, progress=False)
    assert base_model.training
    assert all(torch.equal(before[k], v) for k, v in base_model.state_dict().items())


def test_combined_over_seeds(watermark, base_model):
    entry = REGISTRY["rr-clarc"]
    certificates = [
        certify(entry.build(progress=False, seed=s).corrected(base_model,
                                                              watermark.correction_data()),
                watermark.test, watermark.poisoned, target=0, reference=base_model,
                progress=False, n_boot=200) for s in (0, 1)]
    combined = combine_seeds(certificates)
    assert combined.settings["seeds"] == 2
    flips = [c.figures["insertion"]["flip_rate"].value for c in certificates]
    estimate = combined.figures["insertion"]["flip_rate"]
    assert estimate.value == pytest.approx(sum(flips) / 2)
    assert estimate.method == "seeds" and estimate.low <= min(flips) and estimate.high >= max(flips)
    assert combined.verdict in ("removed", "reduced")
    same = combine_seeds([certificates[0]] * 3)
    assert same.figures["insertion"]["flip_rate"].value == pytest.approx(flips[0])
