"""Worker of the sharded-extraction test: one rank of a 2-process gloo job."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn


def build() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 3))
    data = torch.randn(203, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return model, data


def main(rank: int, world: int, init_file: str, path: str) -> None:
    from latentsurgeon.activations import ActivationStore

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        model, data = build()
        store = ActivationStore.extract(model, data, ["0", "3"], path,
                                        pooling={"0": "max", "3": "none"}, batch_size=16,
                                        progress=False)
        assert store.n_samples == len(data)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
    # The results are on disk and the process group is destroyed; skip the interpreter's
    # teardown, where gloo's threads can abort the process ("terminate called without an
    # active exception") on a loaded machine, failing a run that succeeded.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
