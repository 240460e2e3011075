"""The snippets of docs/cbm.md run as written, in order."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import torch
from _snippets import python_blocks, run_page

matplotlib.use("Agg")

PAGE = Path(__file__).resolve().parents[2] / "docs" / "cbm.md"


def test_the_page_intervenes_with_every_policy_on_a_user_model():
    snippets = [snippet.code for snippet in python_blocks(PAGE)]
    first = "\n".join(snippets[:2])
    for policy in ("UniformPolicy()", "RandomPolicy(", "UncertaintyPolicy()", "GradientPolicy()"):
        assert policy in first
    assert "intervention(model, \"concept_layer\"" in first


def test_snippets_run_in_order(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the curve snippet writes a CSV
    namespace = run_page(PAGE)
    results = namespace["results"]
    assert set(results) == {"no intervention", "uniform", "random", "uncertainty", "gradient"}
    # setting the least certain concept to the truth helps this noisy model
    assert results["uncertainty"] > results["no intervention"]
    assert (tmp_path / "checkmark_curves.csv").exists()
    assert "replaced per sample" in capsys.readouterr().out
    # the user-written policy and strategy: the most confident logit of each sample is halved
    logits = namespace["model"].concept_layer(namespace["model"].backbone(namespace["x"]))
    halved, kept = namespace["halved"], logits.abs().argmax(1)
    rows = range(len(logits))
    assert torch.allclose(halved[rows, kept], logits[rows, kept] / 2)
    assert int((halved != logits).sum()) == len(logits)
