"""The snippets of docs/intervene.md run as written."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib
import pytest
from _snippets import python_blocks

matplotlib.use("Agg")

PAGE = Path(__file__).resolve().parents[2] / "docs" / "intervene.md"


def test_the_page_has_snippets_for_cnn_and_gpt2():
    snippets = [snippet.code for snippet in python_blocks(PAGE)]
    assert len(snippets) >= 4
    assert any("DigitCNN" in s for s in snippets) and any("GPT2LMHeadModel" in s for s in snippets)


def test_snippets_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the save/load snippet writes a file
    namespace: dict = {}
    for snippet in python_blocks(PAGE):
        if "transformers" in snippet.code and importlib.util.find_spec("transformers") is None:
            pytest.skip("transformers is not installed")
        snippet.run(namespace)
    assert namespace["res"].effect == {"transformer.h.0": 1.0, "transformer.h.1": 1.0}
    assert namespace["out"].shape == (1, 11)
