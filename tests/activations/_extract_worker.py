"""Deterministic model, data and extraction settings shared by the store tests.

Run as a script it performs one extraction (optionally slowed down so a test can kill it mid-way)::

    python _extract_worker.py STORE_DIR DELAY_SECONDS

and prints ``{"forward_calls": n}`` as JSON when it finishes. It defines its own small CNN so it does
not depend on ``latentsurgeon.models``.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from torch import nn

N_SAMPLES = 600
BATCH_SIZE = 8
N_BATCHES = N_SAMPLES // BATCH_SIZE
LAYERS = ["features.0", "features.3", "head"]
POOLING = {"features.0": "max", "features.3": "none", "head": "none"}


class TinyCNN(nn.Module):
    """(N, 1, 16, 16) -> (N, 3); named layers features.0..5, head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),  # features.0
            nn.ReLU(),  # features.1
            nn.MaxPool2d(2),  # features.2
            nn.Conv2d(4, 8, 3, padding=1),  # features.3
            nn.ReLU(),  # features.4
            nn.AdaptiveAvgPool2d(2),  # features.5
        )
        self.head = nn.Linear(8 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def build_model() -> TinyCNN:
    torch.manual_seed(0)
    return TinyCNN().eval()


def build_data(n: int = N_SAMPLES) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 16, 16, generator=generator)


def extract(path, delay: float = 0.0, *, model=None, data=None, **kwargs):
    """Extract the standard layers; returns ``(store, forward_calls)``."""
    from latentsurgeon.activations import ActivationStore

    calls = 0

    def forward(net, inputs):
        nonlocal calls
        calls += 1
        if delay:
            time.sleep(delay)
        return net(inputs)

    options = {"pooling": POOLING, "batch_size": BATCH_SIZE, "progress": False, **kwargs}
    store = ActivationStore.extract(
        build_model() if model is None else model,
        build_data() if data is None else data,
        LAYERS,
        path,
        forward_fn=forward,
        **options,
    )
    return store, calls


if __name__ == "__main__":
    torch.set_num_threads(1)  # as the in-process tests (their one_thread fixture)
    _, n_calls = extract(sys.argv[1], float(sys.argv[2]))
    print(json.dumps({"forward_calls": n_calls}))
