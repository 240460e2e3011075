"""The full demo at its default settings: reveal -> explain -> correct -> verify, results.json,
report.html.

One run (about 2-4 minutes on 2 cores) is shared by every test here. These are the quality goals
the demo promises, checked on exactly the settings `make demo` uses.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from latentsurgeon.demo import METHODS, DemoConfig, run_demo
from latentsurgeon.report import find_chromium, inspect_report

SCREENSHOT_DIR = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    lines: list[str] = []
    run_demo(DemoConfig(out=out, progress=False), echo=lines.append)
    return out, json.loads((out / "results.json").read_text()), "\n".join(lines)


def test_results_json_has_every_method_with_every_field(demo):
    _, results, printed = demo
    assert list(results["methods"]) == list(METHODS)
    for method, row in results["methods"].items():
        assert set(row) >= {"clean_acc", "poisoned_acc", "gap_closed", "artifact_relevance",
                            "seconds"}, method
        assert 0.0 <= row["clean_acc"] <= 1.0 and 0.0 <= row["poisoned_acc"] <= 1.0
    assert "report.html" in printed and "gap closed" in printed


def test_the_shortcut_costs_at_least_ten_points(demo):
    _, results, _ = demo
    none = results["methods"]["none"]
    assert none["clean_acc"] - none["poisoned_acc"] >= 0.10


def test_reveal_finds_the_watermark_and_not_a_random_concept(demo):
    _, results, _ = demo
    layers = results["reveal"]["layers"]
    block = next(row for row in layers if row["layer"] == "features")
    assert block["tcav_significant"] and block["tcav_p"] < 0.05
    assert block["cav_accuracy"] >= 0.9
    assert not any(row["random_significant"] for row in layers)
    fits = {row["fit"]: row for row in results["reveal"]["cav_fits"]}
    # fitted on all samples, the direction points along the class; within the class it does not
    assert (fits["all samples"]["cosine_with_class_direction"]
            > fits["within class 0"]["cosine_with_class_direction"] + 0.2)


def test_pclarc_closes_80_percent_at_two_points(demo):
    _, results, _ = demo
    none, row = results["methods"]["none"], results["methods"]["p-clarc"]
    assert row["gap_closed"] >= 0.80
    assert none["clean_acc"] - row["clean_acc"] <= 0.02


@pytest.mark.parametrize("method", ["a-clarc", "rr-clarc", "rrr"])
def test_trained_corrections_close_half_the_gap_at_three_points(demo, method):
    _, results, _ = demo
    none, row = results["methods"]["none"], results["methods"][method]
    assert row["gap_closed"] >= 0.50
    assert none["clean_acc"] - row["clean_acc"] <= 0.03


@pytest.mark.parametrize("method", ["nearest_neighbours", "simplex", "tracin_normalized"])
def test_explain_finds_the_watermarked_examples_behind_the_shortcut(demo, method):
    _, results, printed = demo
    explained = results["explain"]
    assert explained["n_misled"] >= 20 and "[4/5] Explain" in printed
    assert explained["shares"][method] >= 3 * explained["base_rate"]


def test_raw_tracin_is_dominated_by_large_gradients_normalised_is_not(demo):
    shares = demo[1]["explain"]["shares"]
    assert shares["tracin"] < 2 * demo[1]["explain"]["base_rate"] < shares["tracin_normalized"]


def test_label_free_feature_importance_concentrates_on_the_watermark(demo):
    explained = demo[1]["explain"]
    assert explained["feature_share"] >= 3 * explained["mask_area"]


@pytest.mark.parametrize("method", ["p-clarc", "a-clarc", "rr-clarc", "rrr"])
def test_after_each_correction_the_reliance_is_gone(demo, method):
    """The explain view on the same misled images: nearest neighbours and normalised TracIn
    fall to twice the base rate or less, and the feature share inside the watermark falls."""
    results = demo[1]
    base_rate = results["explain"]["base_rate"]
    before = results["methods"]["none"]["reliance"]
    after = results["methods"][method]["reliance"]
    for name in ("nearest_neighbours", "tracin_normalized"):
        assert after["shares"][name] <= 2 * base_rate < before["shares"][name], name
    assert after["feature_share"] < before["feature_share"]


@pytest.mark.parametrize("method", ["p-clarc", "rr-clarc", "rrr"])
def test_gradient_corrections_halve_artifact_relevance(demo, method):
    _, results, _ = demo
    before = results["methods"]["none"]["artifact_relevance"]
    assert results["methods"][method]["artifact_relevance"] <= 0.5 * before


def test_report_is_self_contained(demo):
    out, _, _ = demo
    text = (out / "report.html").read_text()
    assert "http://" not in text and "https://" not in text
    assert text.count("data:image/png;base64,") >= 5
    assert 'id="methods"' in text and 'id="cav-quality"' in text
    assert 'id="explain-examples"' in text and 'id="reliance-after"' in text
    assert 'id="run-info"' in text
    assert 'id="certificate"' in text and 'id="certificate-concepts"' in text


def test_report_renders_in_headless_chromium(demo):
    if find_chromium() is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    out, _, _ = demo
    found = inspect_report(out / "report.html", out / "report.png")
    assert found["images"] >= 5 and found["loaded"] == found["images"]
    tables = {t["id"]: t["rows"] for t in found["tables"]}
    assert tables.get("methods") == 1 + len(METHODS)
    SCREENSHOT_DIR.mkdir(exist_ok=True)
    shutil.copy(out / "report.png", SCREENSHOT_DIR / "demo-report.png")


def test_the_certificate_says_not_removed_before_and_removed_or_reduced_after(demo):
    """The demo's certificate: the uncorrected model keeps the shortcut, the control trained
    without the watermark has none, and each correction removes or reduces it, with intervals;
    the corrections that train are certified over 5 seeds."""
    _, results, printed = demo
    assert "reliance certificate" in printed
    certificate = results["certificate"]
    assert certificate["none"]["verdict"] == "not removed"
    assert certificate["clean-trained"]["verdict"] == "removed"
    for name in METHODS[1:]:
        assert certificate[name]["verdict"] in ("removed", "reduced"), certificate[name]["reason"]
        flips = certificate[name]["figures"]["insertion"]["flip_rate"]
        assert flips["low"] <= flips["value"] <= flips["high"] < 0.05
    assert {certificate[n]["settings"]["seeds"] for n in ("a-clarc", "rr-clarc", "rrr")} == {5}
    assert certificate["p-clarc"]["settings"]["seeds"] == 1
