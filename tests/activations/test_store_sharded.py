"""Sharded extraction under torch.distributed (2 CPU processes on gloo) equals one process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latentsurgeon.activations import ActivationStore
from latentsurgeon.errors import StoreError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _sharded_worker import build  # noqa: E402


def _run_two_ranks(path: Path, init_file: Path) -> None:
    procs = [subprocess.Popen([sys.executable, str(HERE / "_sharded_worker.py"), str(rank), "2",
                               str(init_file), str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out


def test_two_gloo_ranks_write_the_same_store_as_one_process(tmp_path):
    pytest.importorskip("torch.distributed")
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    sharded = tmp_path / "sharded"
    _run_two_ranks(sharded, tmp_path / "init1")
    model, data = build()
    single = ActivationStore.extract(model, data, ["0", "3"], tmp_path / "single",
                                     pooling={"0": "max", "3": "none"}, batch_size=16,
                                     progress=False)
    merged = ActivationStore(sharded, model=model)  # verifies fingerprints and weights
    assert merged.n_samples == 203 and merged.layers == single.layers
    assert merged.manifest["data_fingerprint"] == single.manifest["data_fingerprint"]
    for layer in single.layers:
        assert np.array_equal(np.asarray(merged[layer]), np.asarray(single[layer]))
    assert sorted(p.name for p in (sharded / "shards").iterdir()) == [
        "rank-000-of-002", "rank-001-of-002"]
    # a second run reuses every shard and the merged store
    before = (sharded / "manifest.json").stat().st_mtime_ns
    _run_two_ranks(sharded, tmp_path / "init2")
    assert (sharded / "manifest.json").stat().st_mtime_ns == before


def test_explicit_shards_merge_in_order(tmp_path):
    from latentsurgeon.activations.sharding import merge_shards

    model, data = build()
    parts = [ActivationStore.extract(model, data, ["3"], tmp_path / "s", batch_size=10,
                                     shard=(rank, 3), progress=False) for rank in range(3)]
    # 21 batches of 10: whole batches per rank, shards until the last one is in
    assert [p.n_samples for p in parts[:2]] == [70, 70]
    merged = ActivationStore(tmp_path / "s")
    assert parts[2].path == merged.path and merged.n_samples == 203
    with torch.no_grad():
        expected = model(data).numpy()
    np.testing.assert_allclose(np.asarray(merged["3"]), expected, rtol=0, atol=1e-6)
    # a shard extracted from other weights is refused when merging
    other = torch.nn.Sequential(*build()[0])
    with torch.no_grad():
        other[3].weight.add_(1.0)
    with pytest.raises(StoreError, match="another model fingerprint"):
        ActivationStore.extract(other, data, ["3"], tmp_path / "s", batch_size=10,
                                shard=(1, 3), overwrite=True, progress=False)
    with pytest.raises(StoreError, match="another model fingerprint"):
        merge_shards(tmp_path / "s", 3)


def test_a_shuffling_loader_cannot_be_sharded(tmp_path):
    model, data = build()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=8,
                                         shuffle=True)
    with pytest.raises(StoreError, match="fixed order"):
        ActivationStore.extract(model, loader, ["3"], tmp_path / "x", shard=(0, 2),
                                progress=False)


def test_overwriting_sharded_stores_keeps_the_old_merge_readable_until_the_new_one(tmp_path):
    model, data = build()
    path = tmp_path / "s"
    for rank in range(2):
        ActivationStore.extract(model, data, ["3"], path, batch_size=10, shard=(rank, 2),
                                progress=False)
    old = np.asarray(ActivationStore(path, model=model)["3"]).copy()
    other = torch.nn.Sequential(*build()[0])
    with torch.no_grad():
        other[3].bias.add_(1.0)
    # run by hand, shard 0 is redone first: the shards disagree until shard 1 is redone too
    with pytest.raises(StoreError, match="another model fingerprint"):
        ActivationStore.extract(other, data, ["3"], path, batch_size=10, shard=(0, 2),
                                overwrite=True, progress=False)
    still = ActivationStore(path, model=model)  # the old merge: intact and verified
    assert np.array_equal(np.asarray(still["3"]), old)
    merged = ActivationStore.extract(other, data, ["3"], path, batch_size=10, shard=(1, 2),
                                     overwrite=True, progress=False)
    assert merged.path == path
    new = ActivationStore(path, model=other)
    np.testing.assert_allclose(np.asarray(new["3"]), old + 1.0, rtol=0, atol=1e-5)
    npy = sorted(p.name for p in path.glob("*.npy"))
    assert npy == [new.manifest["layers"]["3"]["file"]]  # the old merge's file is gone
