"""docs/models.md: every snippet runs as written, in order, in one namespace."""

from __future__ import annotations

from pathlib import Path

import torch
from _snippets import python_blocks, run_page

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"


def test_models_page_snippets_run(tmp_path, monkeypatch):
    assert len(list(python_blocks(DOC))) >= 6
    monkeypatch.chdir(tmp_path)  # the snippets write checkpoints under ./ckpt
    namespace = run_page(DOC)
    # what the page claims about the objects it built
    assert namespace["history"].checkpoints[-1].name == "epoch_003.pt"
    assert sorted(namespace["encoders"]) == sorted(namespace["PRETEXT_TASKS"])
    assert (tmp_path / "ckpt" / "denoiser" / "epoch_003.pt").exists()
    assert (tmp_path / "ckpt" / "btcvae" / "epoch_003.pt").exists()
    assert not namespace["denoiser"].training
    assert torch.equal(namespace["recon"], namespace["denoiser"](namespace["test_x"]))
