"""The whole loop from the shell on a user's own model and data: train -> extract -> tcav ->
correct -> verify, passing checkpoints between the commands (not DigitCNN, layer names of its own)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

USER_MODEL = textwrap.dedent(
    """
    import torch
    from torch import nn

    class BarNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential()
            self.encoder.add_module("conv1", nn.Conv2d(1, 6, 3, padding=1))
            self.encoder.add_module("act1", nn.ReLU())
            self.encoder.add_module("conv2", nn.Conv2d(6, 8, 3, padding=1))
            self.encoder.add_module("act2", nn.ReLU())
            self.head = nn.Sequential()
            self.head.add_module("flat", nn.Flatten())
            self.head.add_module("fc", nn.Linear(8 * 8 * 8, 2))

        def forward(self, x):
            return self.head(self.encoder(x))

    def make():
        torch.manual_seed(0)
        return BarNet()
    """
)

USER_DATA = textwrap.dedent(
    """
    import torch

    def _images(labels, generator):
        # class 0: a vertical bar, class 1: a horizontal bar, at a random offset, plus noise
        n = len(labels)
        x = 0.15 * torch.rand(n, 1, 8, 8, generator=generator)
        offset = torch.randint(2, 6, (n,), generator=generator)
        for i in range(n):
            if labels[i] == 0:
                x[i, 0, 1:7, offset[i]] += 0.6
            else:
                x[i, 0, offset[i], 1:7] += 0.6
        return x.clamp(0, 1)

    def _patch(x):
        x = x.clone()
        x[:, 0, 6:8, 6:8] = 1.0   # the shortcut: a bright corner
        return x

    def _split(n, seed, poison):
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, 2, (n,), generator=g)
        images = _images(labels, g)
        if poison == "class0":
            artifact = (labels == 0) & (torch.rand(n, generator=g) < 0.9)
        elif poison == "all":
            artifact = torch.ones(n, dtype=torch.bool)
        else:
            artifact = torch.zeros(n, dtype=torch.bool)
        images[artifact] = _patch(images[artifact])
        masks = torch.zeros(n, 8, 8, dtype=torch.bool)
        masks[artifact, 6:8, 6:8] = True
        return {"images": images, "labels": labels, "artifact": artifact, "masks": masks}

    def make():
        return {"train": _split(400, 0, "class0"), "test": _split(200, 1, "none"),
                "poisoned": _split(200, 1, "all"), "shortcut_class": 0}

    def concept():
        return _patch(_split(60, 2, "none")["images"])

    def pool():
        return _split(120, 3, "none")["images"]
    """
)


def _cli(cwd, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "latentsurgeon", *args, "--quiet"], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _cmd(name: str, *args: str) -> list[str]:
    return [name, "--model", "barnet:make", "--data", "bardata:make", *args]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    (root / "barnet.py").write_text(USER_MODEL)
    (root / "bardata.py").write_text(USER_DATA)
    return root


def test_the_loop_runs_from_the_shell_on_a_user_model(workdir):
    out = _cli(workdir, *_cmd("train", "--epochs", "8", "--lr", "1e-2", "--out", "model.pt"))
    assert "poisoned" in out
    out = _cli(workdir, *_cmd("extract", "--weights", "model.pt", "--layers", "encoder.conv2",
                              "--out", "acts"))
    assert "encoder.conv2" in out and "400 samples" in out
    _cli(workdir, *_cmd("tcav", "--weights", "model.pt", "--layers", "encoder", "--target", "0",
                        "--concept", "bardata:concept", "--random", "bardata:pool", "--runs", "5",
                        "--json", "tcav.json"))
    tcav = json.loads((workdir / "tcav.json").read_text())
    assert tcav["layers"][0]["layer"] == "encoder" and tcav["target"] == 0
    out = _cli(workdir, *_cmd("correct", "--weights", "model.pt", "--method", "p-clarc",
                              "--layer", "encoder", "--save", "fixed.pt"))
    assert "gap closed" in out
    assert (workdir / "fixed.correction.pt").exists()
    _cli(workdir, *_cmd("verify", "--weights", "model.pt", "--corrected", "fixed.pt",
                        "--json", "verify.json"))
    rows = json.loads((workdir / "verify.json").read_text())
    before, after = rows["before"], rows["after"]
    assert before["gap"] > 0.05, "the user model should have learned the shortcut"
    assert after["poisoned_acc"] > before["poisoned_acc"] + 0.3
    # P-ClArC's backward pass is the derivative of its forward: the attribution follows
    assert after["artifact_relevance"] < before["artifact_relevance"]
    # the corrected weights are a plain state_dict of the exported model
    assert all(isinstance(v, torch.Tensor)
               for v in torch.load(workdir / "fixed.pt", weights_only=True).values())
