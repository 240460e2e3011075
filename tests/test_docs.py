"""The snippets of the user guide pages run as written, in order, page by page."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("page", ["foundation.md", "concepts.md", "architecture.md"])
def test_page_snippets_run(page, tmp_path, monkeypatch):
    text = (DOCS / page).read_text()
    snippets = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert snippets, f"{page} has no Python snippets"
    monkeypatch.chdir(tmp_path)  # snippets write stores, checkpoints and saved estimators here
    namespace: dict = {}
    for snippet in snippets:
        exec(compile(snippet, str(DOCS / page), "exec"), namespace)  # noqa: S102
