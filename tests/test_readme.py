"""The README's Python snippets run as written, in order, and show what they claim."""

from __future__ import annotations

from pathlib import Path

import matplotlib
from _snippets import python_blocks, run_page

matplotlib.use("Agg")

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_snippets_run(tmp_path, monkeypatch, capsys):
    assert len(list(python_blocks(README))) >= 2
    monkeypatch.chdir(tmp_path)  # the store snippet writes ./acts
    namespace = run_page(README)
    assert namespace["cap"]["features"].shape[1:] == (32, 4, 4)
    assert namespace["store"].layers == ["features.0", "features.3"]
    assert namespace["result"].significant
    assert namespace["gap_closed"](namespace["before"], namespace["after"]) > 0.5
    assert namespace["certificate"].meets("reduced")
