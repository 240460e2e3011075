"""docs/models.md: every snippet runs as written, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def test_models_page_snippets_run(tmp_path, monkeypatch):
    snippets = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(snippets) >= 6
    monkeypatch.chdir(tmp_path)  # the snippets write checkpoints under ./ckpt
    namespace: dict = {}
    for snippet in snippets:
        exec(compile(snippet, str(DOC), "exec"), namespace)  # noqa: S102
    # what the page claims about the objects it built
    assert namespace["history"].checkpoints[-1].name == "epoch_003.pt"
    assert sorted(namespace["encoders"]) == sorted(namespace["PRETEXT_TASKS"])
    assert (tmp_path / "ckpt" / "denoiser" / "epoch_003.pt").exists()
    assert (tmp_path / "ckpt" / "btcvae" / "epoch_003.pt").exists()
    assert not namespace["denoiser"].training
    assert torch.equal(namespace["recon"], namespace["denoiser"](namespace["test_x"]))
