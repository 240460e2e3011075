"""Example importance under torch.distributed (2 CPU processes on gloo) equals one process,
exactly: each rank scores whole batches of the single-process batch sequence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ._explain_worker import all_scores, build

HERE = Path(__file__).resolve().parent


def test_two_gloo_ranks_gather_the_single_process_matrices(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    checkpoints = tmp_path / "ckpt"
    build(checkpoints)  # write the checkpoints once, before the ranks start
    out = tmp_path / "scores.pt"
    procs = [subprocess.Popen([sys.executable, str(HERE / "_explain_worker.py"), str(rank), "2",
                               str(tmp_path / "init"), str(checkpoints), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for proc, text in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, text
    single = all_scores(checkpoints)
    assert single.pop("local_rows").tolist() == [23, 23, 9]
    # 6 training batches of 4: ranks take 3 each (12 and 11 samples); 3 test batches: 1 and 2
    expected_rows = {0: [12, 12, 4], 1: [11, 11, 5]}
    for rank in range(2):
        gathered = torch.load(f"{out}.rank{rank}", weights_only=True)
        assert gathered.pop("local_rows").tolist() == expected_rows[rank]
        assert gathered.keys() == single.keys()
        for name, expected in single.items():
            assert gathered[name].shape == (9, 23), name
            assert torch.equal(gathered[name], expected), name
