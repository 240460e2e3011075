"""Resuming an interrupted extraction: a real SIGKILL, bit-identical results, refused mismatches."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from latentsurgeon import StoreError
from latentsurgeon.activations import ActivationStore
from latentsurgeon.errors import InvalidParameterError

WORKER = Path(__file__).with_name("_extract_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _load_worker():
    name = "_extract_worker"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, WORKER)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


W = _load_worker()
N = 120  # in-process tests use a shorter dataset: 15 batches of 8
N_BATCHES = N // W.BATCH_SIZE


# one torch thread, as in the worker process: the same bits
pytestmark = pytest.mark.usefixtures("one_thread")


def files_identical(a: ActivationStore, b: ActivationStore) -> None:
    assert a.layers == b.layers == W.LAYERS
    for layer in W.LAYERS:
        assert a[layer].shape == b[layer].shape
        assert np.array_equal(a[layer], b[layer]), layer
    # Same file fingerprints: the .npy files are byte for byte the same.
    assert {k: v["fingerprint"] for k, v in a.manifest["layers"].items()} == {
        k: v["fingerprint"] for k, v in b.manifest["layers"].items()}
    assert a.manifest["data_fingerprint"] == b.manifest["data_fingerprint"]
    assert a.manifest["model_fingerprint"] == b.manifest["model_fingerprint"]


def read_n_done(path: Path) -> int:
    try:
        return int(json.loads((path / "progress.json").read_text())["n_done"])
    except (OSError, ValueError, KeyError):
        return 0


# -- a real kill ----------------------------------------------------------------------------------

def test_sigkilled_extraction_resumes_bit_identical(tmp_path):
    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.Popen([sys.executable, str(WORKER), str(killed), "0.1"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while read_n_done(killed) == 0:
            if proc.poll() is not None:
                pytest.fail(f"the worker ended before it was killed: {proc.communicate()[1]!r}")
            if time.monotonic() > deadline:
                pytest.fail("the worker wrote no progress in time")
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    n_done = read_n_done(killed)
    assert 0 < n_done < W.N_SAMPLES
    assert n_done % W.BATCH_SIZE == 0
    assert not (killed / "manifest.json").exists()
    with pytest.raises(StoreError, match="resume"):
        ActivationStore(killed)

    resumed, resumed_calls = W.extract(killed)
    fresh, full_calls = W.extract(tmp_path / "fresh")
    assert full_calls == W.N_BATCHES
    # The batches committed before the kill were not recomputed (a batch caught mid-write was).
    assert resumed_calls <= W.N_BATCHES - n_done // W.BATCH_SIZE
    assert resumed_calls < full_calls
    files_identical(resumed, fresh)
    assert not (killed / "progress.json").exists()
    ActivationStore(killed, model=W.build_model())


# -- interruptions in process ---------------------------------------------------------------------

def interrupt(path: Path, after_batches: int, data=None, **kwargs) -> None:
    """Start an extraction that dies (an exception) in batch ``after_batches + 1``."""
    calls = []
    before = read_n_done(path)

    def dying(model, inputs):
        calls.append(1)
        if len(calls) > after_batches:
            raise KeyboardInterrupt
        return model(inputs)

    options = {"pooling": W.POOLING, "batch_size": W.BATCH_SIZE, "progress": False, **kwargs}
    with pytest.raises(KeyboardInterrupt):
        ActivationStore.extract(W.build_model(), W.build_data(N) if data is None else data,
                                W.LAYERS, path, forward_fn=dying, **options)
    assert read_n_done(path) == before + after_batches * W.BATCH_SIZE


@pytest.fixture
def fresh(tmp_path) -> ActivationStore:
    store, calls = W.extract(tmp_path / "fresh", data=W.build_data(N))
    assert calls == N_BATCHES
    return store


@pytest.fixture
def partial(tmp_path) -> Path:
    interrupt(tmp_path / "partial", 5)
    return tmp_path / "partial"


def test_resume_after_interruption_is_bit_identical(partial, fresh):
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore(partial)
    store, calls = W.extract(partial, data=W.build_data(N))
    assert calls == N_BATCHES - 5
    files_identical(store, fresh)


def test_resume_twice(tmp_path, fresh):
    path = tmp_path / "twice"
    interrupt(path, 3)
    interrupt(path, 4)  # resumes at batch 3, dies again 4 batches later
    assert read_n_done(path) == 7 * W.BATCH_SIZE
    store, calls = W.extract(path, data=W.build_data(N))
    assert calls == N_BATCHES - 7
    files_identical(store, fresh)


def test_resume_with_data_in_another_order_is_refused(partial):
    data = W.build_data(N)
    with pytest.raises(StoreError, match="order") as info:
        W.extract(partial, data=data.flip(0))
    assert isinstance(info.value, ValueError)
    swapped = data.clone()
    swapped[[3, 30]] = data[[30, 3]]  # two samples of the already-written batches swap places
    with pytest.raises(StoreError):
        W.extract(partial, data=swapped)
    # The refusals did not damage the partial store: resuming with the right data still works.
    store, calls = W.extract(partial, data=data)
    assert calls == N_BATCHES - 5


def test_resume_with_changed_data_or_batching_is_refused(partial):
    data = W.build_data(N)
    changed = data.clone()
    changed[9] += 1e-3
    with pytest.raises(StoreError):
        W.extract(partial, data=changed)
    with pytest.raises(StoreError):
        W.extract(partial, data=data, batch_size=16)
    with pytest.raises(StoreError):
        W.extract(partial, data=data[:-8])


def test_resume_with_another_model_layers_pooling_or_dtype_is_refused(partial):
    data = W.build_data(N)
    other = W.build_model()
    with torch.no_grad():
        other.features[0].weight[0, 0, 0, 0] += 1e-3
    with pytest.raises(StoreError, match="model fingerprint"):
        W.extract(partial, data=data, model=other)
    with pytest.raises(StoreError, match="pooling"):
        W.extract(partial, data=data, pooling="mean")
    with pytest.raises(StoreError, match="dtype"):
        W.extract(partial, data=data, dtype="float16")
    with pytest.raises(StoreError, match="layers"):
        ActivationStore.extract(W.build_model(), data, W.LAYERS[:2], partial,
                                pooling={k: W.POOLING[k] for k in W.LAYERS[:2]},
                                batch_size=W.BATCH_SIZE, progress=False)
    with pytest.raises(InvalidParameterError, match="pooling names layers that are not read"):
        ActivationStore.extract(W.build_model(), data, W.LAYERS[:2], partial,
                                pooling=W.POOLING, batch_size=W.BATCH_SIZE, progress=False)


def layer_file(path: Path, layer: str) -> Path:
    return path / json.loads((path / "progress.json").read_text())["shapes"][layer]["file"]


@pytest.mark.parametrize("layer", W.LAYERS)
def test_damaged_written_rows_are_refused_on_resume(partial, layer):
    file = layer_file(partial, layer)
    array = np.load(file, mmap_mode="r+")
    array[17].reshape(-1)[0] += 1.0  # row 17 lies in batch 3, already committed
    array.flush()
    del array
    with pytest.raises(StoreError, match="damaged"):
        W.extract(partial, data=W.build_data(N))


def test_flipped_byte_in_written_rows_is_refused_on_resume(partial):
    file = layer_file(partial, "features.3")
    offset = int(np.load(file, mmap_mode="r").offset) + 7
    with open(file, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(StoreError, match="rows 0..8"):
        W.extract(partial, data=W.build_data(N))


def test_unwritten_rows_may_hold_anything(partial, fresh):
    # Rows after the last committed batch are recomputed, so garbage there is harmless.
    file = layer_file(partial, "head")
    array = np.load(file, mmap_mode="r+")
    array[5 * W.BATCH_SIZE:] = np.nan
    array.flush()
    del array
    store, calls = W.extract(partial, data=W.build_data(N))
    assert calls == N_BATCHES - 5
    files_identical(store, fresh)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "no_config", "no_shapes",
                                    "checksum_dropped", "not_a_dict"])
def test_damaged_progress_file_is_refused(partial, damage):
    progress = partial / "progress.json"
    state = json.loads(progress.read_text())
    if damage == "truncated":
        progress.write_text(progress.read_text()[:40])
    elif damage == "garbage":
        progress.write_bytes(b"\xff\xfe\x00")
    elif damage == "not_a_dict":
        progress.write_text("[]")
    else:
        if damage == "no_config":
            del state["config"]
        elif damage == "no_shapes":
            state["shapes"] = None
        else:
            state["checksums"].pop()
        progress.write_text(json.dumps(state))
    with pytest.raises(StoreError, match="damaged|not a latentsurgeon store"):
        W.extract(partial, data=W.build_data(N))
    with pytest.raises(StoreError):
        ActivationStore(partial)


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_missing_or_truncated_file_of_an_incomplete_store_is_refused(partial, damage):
    file = layer_file(partial, "features.3")
    if damage == "deleted":
        file.unlink()
    else:
        with open(file, "r+b") as handle:
            handle.truncate(file.stat().st_size // 2)
    with pytest.raises(StoreError, match="damaged"):
        W.extract(partial, data=W.build_data(N))
    # overwrite=True starts over and succeeds.
    store, calls = W.extract(partial, data=W.build_data(N), overwrite=True)
    assert calls == N_BATCHES and store.n_samples == N


def test_resume_false_and_overwrite_start_over(tmp_path, fresh):
    for option in ({"resume": False}, {"overwrite": True}):
        path = tmp_path / next(iter(option))
        interrupt(path, 4)
        store, calls = W.extract(path, data=W.build_data(N), **option)
        assert calls == N_BATCHES
        files_identical(store, fresh)
    # Starting over also works when the partial store is one that could not be resumed.
    path = tmp_path / "mismatch"
    interrupt(path, 4, pooling="mean")
    store, calls = W.extract(path, data=W.build_data(N), resume=False)
    assert calls == N_BATCHES
    files_identical(store, fresh)
