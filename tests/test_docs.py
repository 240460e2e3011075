"""The snippets of the user guide pages run as written, in order, page by page."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
from _snippets import python_blocks, run_page

matplotlib.use("Agg")

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("page", ["foundation.md", "concepts.md", "architecture.md", "verify.md"])
def test_page_snippets_run(page, tmp_path, monkeypatch):
    assert list(python_blocks(DOCS / page)), f"{page} has no Python snippets"
    monkeypatch.chdir(tmp_path)  # snippets write stores, checkpoints and saved estimators here
    run_page(DOCS / page)
