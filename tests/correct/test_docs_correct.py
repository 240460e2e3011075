"""The snippets of docs/correct.md run, in order, in one namespace."""

from __future__ import annotations

from pathlib import Path

from _snippets import python_blocks, run_page

DOC = Path(__file__).resolve().parents[2] / "docs" / "correct.md"


def test_snippets_run(tmp_path, monkeypatch):
    assert len(list(python_blocks(DOC))) >= 6
    monkeypatch.chdir(tmp_path)  # the snippets write corrected.pt
    namespace = run_page(DOC)
    assert namespace["gap_closed"](namespace["before"], namespace["after"]) > 0.5
