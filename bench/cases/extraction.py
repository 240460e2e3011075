"""Activation extraction throughput: capture / store vs a plain forward pass with no hooks."""

from __future__ import annotations

import tempfile

import torch

from bench.runner import Case
from latentsurgeon.activations import ActivationStore, capture


def _model_and_data() -> tuple[torch.nn.Module, torch.Tensor]:
    from latentsurgeon.models import DigitCNN

    torch.manual_seed(0)
    model = DigitCNN().eval()
    data = torch.rand(4096, 1, 16, 16)
    return model, data


def cases() -> list[Case]:
    model, data = _model_and_data()
    batches = data.split(256)
    conv_layers = ["features.0", "features.3"]

    @torch.no_grad()
    def plain() -> torch.Tensor:
        return torch.cat([model(b) for b in batches])

    @torch.no_grad()
    def streaming() -> torch.Tensor:
        # The usual pattern: each batch's activations are consumed (here pooled) as they come.
        outs, pooled = [], []
        with capture(model, conv_layers) as cap:
            for b in batches:
                outs.append(model(b))
                pooled.append(cap["features.3"].amax(dim=(2, 3)))
        return torch.cat(outs)

    @torch.no_grad()
    def in_memory() -> torch.Tensor:
        outs = []
        with capture(model, conv_layers, accumulate=True) as cap:
            for b in batches:
                outs.append(model(b))
        captured = cap.activations  # materialise the concatenation like a user would
        assert len(captured) == len(conv_layers)
        return torch.cat(outs)

    tmp = tempfile.TemporaryDirectory()

    def disk() -> torch.Tensor:
        store = ActivationStore.extract(model, data, conv_layers, tmp.name, pooling="max",
                                        batch_size=256, overwrite=True, progress=False)
        return store.tensor("features.3")

    def same(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max())

    return [
        Case("capture_streaming_vs_plain_forward", streaming, plain,
             "plain forward (no hooks)",
             "DigitCNN, 4096 inputs in batches of 256, both conv layers captured per batch and "
             "consumed (max-pooled) as they come: the cost of the hooks (and of the pooling, which "
             "the plain forward does not do)",
             ">= 0.9", same),
        Case("capture_whole_dataset_vs_plain_forward", in_memory, plain,
             "plain forward (no hooks)",
             "same, but every batch's full-resolution activations (96 MB) are kept and "
             "concatenated: the price is the memory traffic of materialising them, not the hooks",
             "reported", same),
        Case("store_to_disk_vs_plain_forward", disk, plain, "plain forward (no hooks)",
             "same work streamed to a disk store (max pooling, atomic progress, checksums)",
             "reported", None),
    ]
