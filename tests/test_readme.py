"""The README's Python snippets run as written, in order, and show what they claim."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_snippets_run(tmp_path, monkeypatch, capsys):
    snippets = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(snippets) >= 2
    monkeypatch.chdir(tmp_path)  # the store snippet writes ./acts
    namespace: dict = {}
    for snippet in snippets:
        exec(compile(snippet, str(README), "exec"), namespace)  # noqa: S102
    assert namespace["cap"]["features"].shape[1:] == (32, 4, 4)
    assert namespace["store"].layers == ["features.0", "features.3"]
    assert namespace["result"].significant
    assert namespace["gap_closed"](namespace["before"], namespace["after"]) > 0.5
