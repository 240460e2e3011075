"""The snippets of docs/explain.md run as written, in order."""

from __future__ import annotations

from pathlib import Path

import torch
from _snippets import python_blocks, run_page

PAGE = Path(__file__).resolve().parents[2] / "docs" / "explain.md"


def test_snippets_run_in_order(tmp_path, monkeypatch):
    assert len(list(python_blocks(PAGE))) >= 6
    monkeypatch.chdir(tmp_path)  # checkpoints and stores are written here
    namespace = run_page(PAGE)
    assert namespace["ig"].shape == (40, 1, 16, 16)
    assert namespace["per_unit"].shape == (5, 8, 1, 16, 16)
    assert namespace["weights"].shape == (40, 200)
    assert namespace["scores"].shape == (20, 400)
    assert (namespace["influence"].solver_, namespace["influence"].n_params_) == ("exact", 650)
    assert set(namespace["tops"]) == {"nearest_neighbours", "simplex", "tracin",
                                      "tracin_normalized"}
    # the store gives the same neighbours as the model
    direct = namespace["NearestNeighbours"]("cosine", "classifier.1").scores(
        namespace["cnn"], namespace["subset"], namespace["data"].poisoned.images[:20])
    torch.testing.assert_close(namespace["from_store"], direct, rtol=1e-5, atol=1e-6)
