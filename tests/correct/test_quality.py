"""Quality beyond the demo's setting: other shortcut classes and positions of the decoy digits, a
tabular MLP with a planted spurious feature, and means over seeds.

Every correction of the registry runs with its tuned settings (the ClArC methods at the DigitCNN's
``"features"``; on the MLP at its first hidden layer ``"1"``); RRR fine-tunes with the
artifact's region as every input's mask. The default run checks seed 0 of each setting; the
slow run (``-m slow``) holds the thresholds as means over seeds 0-2 and measures where a method
is weak. docs/correct.md records the numbers.
"""

from __future__ import annotations

import pytest
import torch
from _threads import one_thread

from latentsurgeon.activations.batching import Samples
from latentsurgeon.correct import REGISTRY, correction_entry
from latentsurgeon.data import decoy_digits
from latentsurgeon.data.tabular import spurious_tabular
from latentsurgeon.metrics import gap_closed, shortcut_gap
from latentsurgeon.models import DigitCNN, train_classifier

METHODS = tuple(name.replace("-", "") for name in REGISTRY)  # pclarc, aclarc, rrclarc, rrr
#: decoy_digits settings: another class, another position on background, and a position on the
#: shortcut class's own strokes (the left side of the 0's ring: mean ink 0.45 under the patch,
#: 0.07 at the default position).
DIGIT_SETTINGS = {
    "watermark": {},
    "other_class": {"shortcut_class": 3},
    "top_right": {"position": (1, 12)},
    "on_strokes": {"position": (6, 2)},
}
MLP_LAYER = "1"


def _digits(digit_cnn_state, setting: str, seed: int):
    """The decoy digits of ``setting`` and the demo's DigitCNN trained on them (the session's
    one training per setting and seed: "watermark" at seed 0 is the ``base_model``)."""
    data = decoy_digits("watermark", seed=seed, **DIGIT_SETTINGS[setting])
    torch.manual_seed(seed)  # torch's global RNG as after training here (training restores it)
    model = DigitCNN()
    model.load_state_dict(digit_cnn_state(seed, **DIGIT_SETTINGS[setting]))
    return data, model.eval(), "features", data.poisoned.masks[0]


_RESULTS: dict[tuple[str, int], dict[str, dict[str, float]]] = {}


@pytest.fixture
def results(nets, digit_cnn_state):
    """``results(setting, seed)``: ``{method: {"gap_closed", "clean_cost"}}`` plus ``"none":
    {"gap"}`` of one run (cached for the session: the fast and the slow checks share the seed-0
    runs)."""

    def run(setting: str, seed: int) -> dict[str, dict[str, float]]:
        if (setting, seed) not in _RESULTS:
            _RESULTS[setting, seed] = _run(nets, digit_cnn_state, setting, seed)
        return _RESULTS[setting, seed]

    return run


def _run(nets, digit_cnn_state, setting: str, seed: int) -> dict[str, dict[str, float]]:
    with one_thread():
        if setting == "tabular":
            data = spurious_tabular(seed=seed)
            torch.manual_seed(seed)
            model = nets.mlp(n_features=8, n_classes=4)
            train_classifier(model, data.train, epochs=30, seed=seed, progress=False)
            layer, region = MLP_LAYER, data.region
        else:
            data, model, layer, region = _digits(digit_cnn_state, setting, seed)
        model.eval()
        before = shortcut_gap(model, data.test, data.poisoned)
        out: dict[str, dict[str, float]] = {"none": {"gap": before["gap"]}}
        # labels, artifact flags and the artifact's region (every input's mask) travel together
        training = Samples(data.train.images, data.train.labels, data.train.artifact, region)
        for method in METHODS:
            entry = correction_entry(method)
            overrides = {"layer": layer} if entry.takes_layer else {}
            fixed = entry.build(progress=False, **overrides).corrected(model, training)
            after = shortcut_gap(fixed, data.test, data.poisoned)
            out[method] = {"gap_closed": gap_closed(before, after),
                           "clean_cost": before["clean_acc"] - after["clean_acc"]}
        return out


def mean(results, setting: str, method: str, key: str, seeds=(0, 1, 2)) -> float:
    return sum(results(setting, s)[method][key] for s in seeds) / len(seeds)


# -- default run: seed 0 of every new setting direction, every method -------------------------------
FAST = {  # (setting, method): minimum gap closed at seed 0
    **{("other_class", m): 0.7 for m in METHODS},
    ("top_right", "pclarc"): 0.6,
    **{("top_right", m): 0.7 for m in ("aclarc", "rrclarc", "rrr")},
    **{("tabular", m): 0.7 for m in METHODS},
}


@pytest.mark.parametrize("setting,method", list(FAST))
def test_seed0_closes_the_gap_at_no_clean_cost(setting, method, results):
    row = results(setting, 0)
    assert row["none"]["gap"] >= 0.10  # the premise: the uncorrected model took the shortcut
    assert row[method]["gap_closed"] >= FAST[(setting, method)], row
    assert row[method]["clean_cost"] <= 0.03, row


# -- slow run: means over three seeds, and the measured weakness ------------------------------------
SLOW = {  # setting: {method: minimum mean gap closed}
    "watermark": dict.fromkeys(METHODS, 0.8),
    "other_class": dict.fromkeys(METHODS, 0.8),
    "top_right": {"pclarc": 0.7, "aclarc": 0.8, "rrclarc": 0.8, "rrr": 0.8},
    "tabular": dict.fromkeys(METHODS, 0.8),
}


@pytest.mark.slow
@pytest.mark.parametrize("setting", list(SLOW))
def test_mean_over_three_seeds(setting, results):
    for method, threshold in SLOW[setting].items():
        assert mean(results, setting, method, "gap_closed") >= threshold, (method, [
            results(setting, s) for s in (0, 1, 2)])
        # the demo's promise: P-ClArC <= 2 points, the trained corrections <= 3
        limit = 0.02 if method == "pclarc" else 0.03
        assert mean(results, setting, method, "clean_cost") <= limit, method


@pytest.mark.slow
def test_one_projection_cannot_separate_an_artifact_on_the_class_strokes(results):
    """The watermark on the 0's own strokes: its latent effect depends on the stroke it covers,
    so P-ClArC's single direction removes less of the shortcut than on background (measured:
    60% vs 90% mean), while RRR, which acts on the pixels, still closes the gap."""
    on_strokes = mean(results, "on_strokes", "pclarc", "gap_closed")
    assert on_strokes <= mean(results, "watermark", "pclarc", "gap_closed") - 0.15
    assert mean(results, "on_strokes", "rrr", "gap_closed") >= on_strokes + 0.2
    assert mean(results, "on_strokes", "rrr", "gap_closed") >= 0.8
