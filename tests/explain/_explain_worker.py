"""Worker of the sharded example-importance test: one rank of a gloo job (or one process)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent


def build(checkpoint_dir: Path) -> tuple[nn.Module, tuple, tuple]:
    """A small classifier trained 2 epochs with checkpoints; 23 training and 9 test samples
    (23 is not a multiple of the batch size 4: 6 batches, the last one of 3)."""
    from latentsurgeon.training import train

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(23, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (23,),
                                                                               generator=g)
    xt, yt = torch.randn(9, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (9,),
                                                                                generator=g)
    if not (checkpoint_dir / "epoch_002.pt").exists():
        train(model, (x, y), lambda m, b: F.cross_entropy(m(b[0]), b[1]), epochs=2, lr=0.1,
              batch_size=8, optimizer="sgd", checkpoint_dir=checkpoint_dir, progress=False,
              seed=0)
    else:
        model.load_state_dict(torch.load(checkpoint_dir / "epoch_002.pt",
                                         weights_only=True)["state_dict"])
    return model.eval(), (x, y), (xt, yt)


def all_scores(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    from latentsurgeon.explain import InfluenceFunctions, NearestNeighbours, SimplEx, TracIn

    model, train, test = build(checkpoint_dir)
    explainers = {
        "nn": NearestNeighbours("cosine", "1", batch_size=4),
        "simplex": SimplEx("1", batch_size=4),
        "tracin": TracIn(checkpoint_dir, "cross_entropy", batch_size=4),
        "tracin_normalized": TracIn(checkpoint_dir, "cross_entropy", normalize=True,
                                    batch_size=4, cache_mb=0.0),
        "influence": InfluenceFunctions("cross_entropy", damping=1.0, batch_size=4),
        "influence_cg": InfluenceFunctions("cross_entropy", damping=1.0, solver="cg",
                                           batch_size=4),
    }
    scores = {name: e.scores(model, train, test) for name, e in explainers.items()}
    # what this process computed itself: training rows (TracIn, NN) and test rows (SimplEx)
    block = explainers["tracin"].train_block_
    scores["local_rows"] = torch.tensor([block[1] - block[0],
                                         len(explainers["nn"].train_representations_),
                                         len(explainers["simplex"].n_iter_)])
    return scores


def main(rank: int, world: int, init_file: str, checkpoint_dir: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        scores = all_scores(Path(checkpoint_dir))
        torch.save(scores, f"{out}.rank{rank}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
    # The results are on disk and the process group is destroyed; skip the interpreter's
    # teardown, where gloo's threads can abort the process ("terminate called without an
    # active exception") on a loaded machine, failing a run that succeeded.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
