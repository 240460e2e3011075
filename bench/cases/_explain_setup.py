"""Shared setup of the explain benchmarks: the same models, data and checkpoints for latentsurgeon
and lfxai (installed as a peer without its torchvision requirement: ``pip install --no-deps
lfxai``; its explanation modules import only torch, numpy, captum and tqdm).

Two autoencoders on 16x16 digits (flattened), both with the ``encoder`` attribute lfxai's
explainers differentiate:

* ``small``: encoder 256 -> 16 -> 4 (4,180 parameters), as the 4.2k-parameter autoencoder the
  reference notes time lfxai on;
* ``large``: encoder 256 -> 1024 -> 768 -> 16 (1.06M parameters), to show how costs grow.

Each is trained with ``training.train`` (Adam, lr 1e-3, 5 epochs, a checkpoint per
epoch); lfxai gets the same weights as plain state-dict files (its TracIn loads each file with
``load_state_dict(strict=False)``, which would silently load nothing from our checkpoint dicts).
"""

from __future__ import annotations

import functools
import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from latentsurgeon.data import decoy_digits
from latentsurgeon.training import train

WIDTHS = {"small": (16, 4), "large": (1024, 768, 16)}


def require_lfxai() -> None:
    """Stop the benchmark with the reason when the peer cannot be imported."""
    if importlib.util.find_spec("lfxai") is None:
        raise SystemExit(
            "The explain benchmarks compare against lfxai, which is not installed. Install it "
            "without its torchvision requirement: pip install --no-deps lfxai")
    try:
        import lfxai.explanations.examples  # noqa: F401
        import lfxai.explanations.features  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the peer's install
        raise SystemExit(f"lfxai is installed but cannot be imported: {exc}") from exc


class DigitsAE(nn.Module):
    """MLP autoencoder ``(N, 1, 16, 16) -> (N, code) -> (N, 1, 16, 16)``."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        previous = 256
        for i, width in enumerate(widths):
            layers.append(nn.Linear(previous, width))
            if i < len(widths) - 1:
                layers.append(nn.ReLU())
            previous = width
        self.encoder = nn.Sequential(*layers)
        self.decoder = nn.Sequential(nn.Linear(previous, 64), nn.ReLU(), nn.Linear(64, 256),
                                     nn.Sigmoid(), nn.Unflatten(1, (1, 16, 16)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


@dataclass
class Setup:
    model: DigitsAE
    train: torch.Tensor      # (N, 1, 16, 16) training images
    test: torch.Tensor       # test images
    checkpoint_dir: Path     # ours: epoch_XXX.pt with "state_dict" and "lr"
    plain_files: list[Path]  # lfxai: the same weights as plain state dicts
    lr: float

    @property
    def n_encoder_params(self) -> int:
        return sum(p.numel() for p in self.model.encoder.parameters())


@functools.cache
def setup(size: str) -> Setup:
    torch.set_num_threads(1)  # a shared 2-core machine: one thread keeps timings steady
    data = decoy_digits("watermark", seed=0)
    torch.manual_seed(0)
    model = DigitsAE(WIDTHS[size])
    root = Path(tempfile.mkdtemp(prefix=f"bench-explain-{size}-"))
    history = train(model, data.train.images,
                    lambda m, x: F.mse_loss(m(x), x), epochs=5, lr=1e-3, batch_size=64,
                    checkpoint_dir=root / "ours", progress=False, seed=0)
    plain = []
    for path in history.checkpoints:
        target = root / "lfxai" / path.name
        target.parent.mkdir(exist_ok=True)
        torch.save(torch.load(path, weights_only=True)["state_dict"], target)
        plain.append(target)
    return Setup(model.eval(), data.train.images, data.test.images, root / "ours", plain,
                 history.lr)


def max_relative_error(ours: torch.Tensor, peer: torch.Tensor) -> float:
    """``max |ours - peer| / max |peer|``."""
    ours, peer = torch.as_tensor(ours).double(), torch.as_tensor(peer).double()
    return float((ours - peer).abs().max() / peer.abs().max())
