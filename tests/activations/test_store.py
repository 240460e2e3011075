"""ActivationStore: equivalence with in-memory capture, reuse, refusal, damage detection, state."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from latentsurgeon import LatentSurgeonError, LayerNotFoundError, StoreError
from latentsurgeon.activations import POOLINGS, ActivationStore, capture, pool
from latentsurgeon.errors import InvalidParameterError
from latentsurgeon.hooks import hook_count


def _load_worker():
    name = "_extract_worker"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(name + ".py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


W = _load_worker()
N = 40
LAYERS = ["features.0", "features.3", "features.5", "head"]


# small tensor work: one torch thread (tests/_threads.py says why)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def model() -> nn.Module:
    return W.build_model()


@pytest.fixture
def x() -> torch.Tensor:
    return W.build_data(N)


def reference(model, x, layers, pooling) -> dict[str, np.ndarray]:
    """In-memory capture over the whole data in one pass, then pool()."""
    model.eval()
    with torch.no_grad(), capture(model, layers) as cap:
        model(x)
    modes = {n: pooling if isinstance(pooling, str) else pooling.get(n, "none") for n in cap.layers}
    return {n: pool(cap[n], modes[n]).numpy() for n in cap.layers}


def extract(model, data, path, **kwargs) -> ActivationStore:
    kwargs.setdefault("progress", False)
    kwargs.setdefault("layers", LAYERS)
    layers = kwargs.pop("layers")
    return ActivationStore.extract(model, data, layers, path, **kwargs)


def arrays(store: ActivationStore) -> dict[str, np.ndarray]:
    return {name: np.array(store[name]) for name in store.layers}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], exact: bool = True) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].shape == b[name].shape, name
        if exact:
            assert np.array_equal(a[name], b[name]), name
        else:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-6, err_msg=name)


def data_offset(file: Path) -> int:
    return int(np.load(file, mmap_mode="r").offset)


def flip_byte(file: Path, offset: int) -> None:
    with open(file, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


# -- equivalence ---------------------------------------------------------------------------------

@pytest.mark.parametrize("pooling", POOLINGS)
def test_round_trip_equals_capture_and_pool(model, x, tmp_path, pooling):
    ref = reference(model, x, LAYERS, pooling)
    # One batch: exactly the same computation as the in-memory capture.
    store = extract(model, x, tmp_path / "one", pooling=pooling, batch_size=N)
    assert store.layers == LAYERS
    assert store.n_samples == N
    assert_same(arrays(store), ref, exact=True)
    for name in LAYERS:
        assert store.shape(name) == ref[name].shape
        assert store.pooling(name) == pooling
        assert store[name].dtype == np.float32
        assert torch.equal(store.tensor(name), torch.from_numpy(ref[name]))
    # And pool() itself does what the mode says (an independent computation).
    with torch.no_grad():
        conv = model.features[:4](x)  # (N, 8, 8, 8)
    by_hand = {"max": conv.flatten(2).max(dim=2).values, "mean": conv.flatten(2).mean(dim=2),
               "flatten": conv.reshape(N, -1), "none": conv}[pooling]
    assert store.shape("features.3") == tuple(by_hand.shape)
    np.testing.assert_allclose(store["features.3"], by_hand.numpy(), rtol=1e-6, atol=1e-6)
    # Several batches, reopened from disk: the same up to float rounding of batched convs.
    extract(model, x, tmp_path / "many", pooling=pooling, batch_size=7)
    reopened = ActivationStore(tmp_path / "many", model=model)
    assert_same(arrays(reopened), ref, exact=False)


@pytest.mark.parametrize("pooling", ["none", "flatten", "max"])
def test_in_place_activation_after_the_layer_does_not_leak_into_the_store(x, tmp_path, pooling):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(inplace=True),
                          nn.Conv2d(4, 2, 3, padding=1), nn.ReLU(inplace=True)).eval()
    with torch.no_grad():
        pre = model[0](x)  # before the in-place ReLU
    assert (pre < 0).any()
    store = extract(model, x, tmp_path / "s", layers=["0", "2"], pooling=pooling, batch_size=N)
    assert np.array_equal(store["0"], pool(pre, pooling).numpy())


def test_per_layer_pooling(model, x, tmp_path):
    pooling = {"features.0": "max", "features.3": "flatten", "features.5": "mean"}
    store = extract(model, x, tmp_path / "s", pooling=pooling, batch_size=N)
    assert [store.pooling(n) for n in LAYERS] == ["max", "flatten", "mean", "none"]
    assert store.shape("features.0") == (N, 4)
    assert store.shape("features.3") == (N, 512)
    assert store.shape("features.5") == (N, 8)
    assert store.shape("head") == (N, 3)
    assert_same(arrays(store), reference(model, x, LAYERS, pooling), exact=True)


def test_result_does_not_depend_on_batch_size(model, x, tmp_path):
    ref = reference(model, x, LAYERS, "none")
    results = {}
    for batch_size in (1, 7, 16, N):
        results[batch_size] = arrays(extract(model, x, tmp_path / str(batch_size),
                                             batch_size=batch_size))
        assert_same(results[batch_size], ref, exact=False)
    assert_same(results[N], ref, exact=True)  # the same single batch: the same bits


def test_dataloader_workers_give_identical_arrays(model, x, tmp_path):
    dataset = TensorDataset(x, torch.arange(N))
    serial = extract(model, DataLoader(dataset, batch_size=8), tmp_path / "w0", pooling="max")
    parallel = extract(model, DataLoader(dataset, batch_size=8, num_workers=2), tmp_path / "w2",
                       pooling="max")
    assert_same(arrays(serial), arrays(parallel), exact=True)
    assert serial.manifest["data_fingerprint"] == parallel.manifest["data_fingerprint"]


class PlainDataset(Dataset):
    """Yields bare tensors (no tuples)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


class PairDataset(PlainDataset):
    def __getitem__(self, i: int):
        return self.x[i], i % 3


def test_tensor_dataset_and_loader_inputs_agree(model, x, tmp_path):
    y = torch.arange(N) % 3
    sources = {
        "tensor": x,
        "tuple": (x, y),
        "plain_dataset": PlainDataset(x),
        "pair_dataset": PairDataset(x),
        "tensor_dataset": TensorDataset(x, y),
        "loader": DataLoader(TensorDataset(x), batch_size=8),
        "plain_loader": DataLoader(PlainDataset(x), batch_size=8),
    }
    results = {k: arrays(extract(model, v, tmp_path / k, batch_size=8)) for k, v in sources.items()}
    first = results.pop("tensor")
    for result in results.values():
        assert_same(result, first, exact=True)
    assert_same(first, reference(model, x, LAYERS, "none"), exact=False)


# -- memory ---------------------------------------------------------------------------------------

class LazyInputs(Dataset):
    """Samples made on demand: the whole input never exists in memory at once."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.linspace(-1, 1, 64).reshape(1, 8, 8) * ((i % 13) - 6) + i / self.n


def test_store_is_memory_mapped_and_extraction_streams(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1))  # 32*8*8 floats = 8 KiB per sample
    n, batch_size = 4000, 100  # a 31 MiB array; Python/numpy allocations must stay well below
    largest_batch = []
    model.register_forward_pre_hook(lambda m, inputs: largest_batch.append(len(inputs[0])))
    tracemalloc.start()
    try:
        store = ActivationStore.extract(model, LazyInputs(n), "0", tmp_path / "s",
                                        batch_size=batch_size, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    total = n * 32 * 8 * 8 * 4
    assert store.manifest["layers"]["0"]["bytes"] > total
    assert peak < total / 2, f"peak {peak / 2**20:.1f} MiB of Python/numpy memory"
    assert max(largest_batch) == batch_size

    array = store["0"]
    assert isinstance(array, np.memmap)
    assert not array.flags.writeable
    with pytest.raises(ValueError):
        array[0] = 0
    rows = [0, 17, 3999]
    with torch.no_grad():
        expected = model(torch.stack([LazyInputs(n)[i] for i in rows]))
    got = store.tensor("0", rows)
    assert not isinstance(got.numpy(), np.memmap)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    streamed = torch.cat(list(store.iter_batches("0", batch_size=999)))
    assert torch.equal(streamed, store.tensor("0"))


class Batches(Dataset):
    """Each item is a whole batch of 5 samples."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x) // 5

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[5 * i: 5 * i + 5]


def test_custom_batch_sampler_and_unbatched_loader(model, x, tmp_path):
    batches = [list(range(i, min(i + 6, N))) for i in range(0, N, 6)]
    store = extract(model, DataLoader(TensorDataset(x), batch_sampler=batches), tmp_path / "bs",
                    pooling="mean")
    assert store.n_samples == N
    assert_same(arrays(store), reference(model, x, LAYERS, "mean"), exact=False)
    # A loader without automatic batching cannot tell its number of samples: a clear error.
    with pytest.raises(LatentSurgeonError, match="batch_size=None"):
        extract(model, DataLoader(Batches(x), batch_size=None), tmp_path / "none")


# -- reuse and refusal ----------------------------------------------------------------------------

def test_complete_store_is_reused_without_running_the_model(model, x, tmp_path):
    first = extract(model, x, tmp_path / "s", pooling="mean", batch_size=8)
    before = arrays(first)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "s").iterdir()}
    forward_calls = []
    model.register_forward_pre_hook(lambda *a: forward_calls.append(1))
    again = extract(model, x, tmp_path / "s", pooling="mean", batch_size=8,
                    forward_fn=lambda m, inputs: pytest.fail("the model must not run"))
    assert forward_calls == []
    assert_same(arrays(again), before, exact=True)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "s").iterdir()} == mtimes
    # Same data given another way (a loader over the same tensors) is the same data.
    extract(model, DataLoader(TensorDataset(x), batch_size=8), tmp_path / "s", pooling="mean")
    assert forward_calls == []


@pytest.fixture
def complete(model, x, tmp_path) -> Path:
    extract(model, x, tmp_path / "s", pooling="max", batch_size=8)
    return tmp_path / "s"


def test_other_weights_are_refused(model, x, complete):
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.head.bias[0] += 1e-3
    with pytest.raises(StoreError, match="overwrite=True") as info:
        extract(other, x, complete, pooling="max", batch_size=8)
    assert isinstance(info.value, ValueError) and isinstance(info.value, LatentSurgeonError)
    # A buffer counts as a weight too.
    bn = nn.Sequential(copy.deepcopy(model), nn.BatchNorm1d(3)).eval()
    extract(bn, x, complete.parent / "bn", layers="0.head", batch_size=8)
    bn[1].running_mean += 1
    with pytest.raises(StoreError):
        extract(bn, x, complete.parent / "bn", layers="0.head", batch_size=8)


def test_other_data_is_refused(model, x, complete):
    changed = x.clone()
    changed[13, 0, 5, 5] += 1e-4
    with pytest.raises(StoreError, match="other data"):
        extract(model, changed, complete, pooling="max", batch_size=8)
    with pytest.raises(StoreError, match="other data"):
        extract(model, x.flip(0), complete, pooling="max", batch_size=8)
    with pytest.raises(StoreError):
        extract(model, x[:-1], complete, pooling="max", batch_size=8)


def test_other_layers_pooling_or_dtype_are_refused(model, x, complete):
    with pytest.raises(StoreError, match="layers"):
        extract(model, x, complete, layers=LAYERS[:2], pooling="max", batch_size=8)
    with pytest.raises(StoreError, match="pooling"):
        extract(model, x, complete, pooling="mean", batch_size=8)
    with pytest.raises(StoreError, match="pooling"):
        extract(model, x, complete, pooling={"features.0": "max"}, batch_size=8)
    with pytest.raises(StoreError, match="dtype"):
        extract(model, x, complete, pooling="max", batch_size=8, dtype="float64")


def test_overwrite_replaces(model, x, complete):
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-1)
    store = extract(other, x, complete, pooling="mean", batch_size=N, overwrite=True)
    assert_same(arrays(store), reference(other, x, LAYERS, "mean"), exact=True)
    ActivationStore(complete, model=other)
    with pytest.raises(StoreError, match="other weights"):
        ActivationStore(complete, model=model)
    assert sorted(p.name for p in complete.iterdir()) == sorted(
        ["manifest.json"] + [e["file"] for e in store.manifest["layers"].values()])


def test_open_with_another_model_is_refused(model, complete):
    assert ActivationStore(complete, model=model).n_samples == N
    other = W.TinyCNN()  # fresh random weights
    with pytest.raises(StoreError, match="other weights"):
        ActivationStore(complete, model=other)
    store = ActivationStore(complete)
    with pytest.raises(StoreError):
        store.check_model(other)
    with pytest.raises(StoreError, match="features.0"):
        store["classifier"]


# -- damage ---------------------------------------------------------------------------------------

def layer_file(path: Path, layer: str) -> Path:
    manifest = json.loads((path / "manifest.json").read_text())
    return path / manifest["layers"][layer]["file"]


@pytest.mark.parametrize("layer", ["features.0", "head"])
def test_one_flipped_byte_is_detected(model, x, complete, layer):
    file = layer_file(complete, layer)
    size = file.stat().st_size
    offset = data_offset(file)
    flip_byte(file, offset + (size - offset) // 2)
    with pytest.raises(StoreError, match="fingerprint"):
        ActivationStore(complete)
    with pytest.raises(StoreError):
        extract(model, x, complete, pooling="max", batch_size=8)  # reuse verifies too
    # Without verification the store opens (only sizes are checked) but verify() still fails.
    store = ActivationStore(complete, verify=False)
    with pytest.raises(StoreError):
        store.verify()
    # overwrite=True repairs it.
    extract(model, x, complete, pooling="max", batch_size=8, overwrite=True)
    ActivationStore(complete, model=model)


def test_flipped_header_byte_is_detected(complete):
    file = layer_file(complete, "features.3")
    text = file.read_bytes()
    position = text.index(b"(40, ")  # the shape in the .npy header
    flip_byte(file, position + 1)
    with pytest.raises(StoreError):
        ActivationStore(complete, verify=False)


def test_truncated_file_is_detected(complete):
    file = layer_file(complete, "features.3")
    with open(file, "r+b") as handle:
        handle.truncate(file.stat().st_size - 4)
    with pytest.raises(StoreError, match="damaged"):
        ActivationStore(complete, verify=False)
    with open(file, "r+b") as handle:
        handle.truncate(10)  # even the header is cut
    with pytest.raises(StoreError, match="damaged"):
        ActivationStore(complete, verify=False)


def test_missing_file_is_detected(complete):
    layer_file(complete, "head").unlink()
    with pytest.raises(StoreError, match="missing"):
        ActivationStore(complete)


def edit_manifest(path: Path, edit) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", [
    "deleted", "garbage", "truncated", "no_layers", "no_fingerprint", "no_entry_bytes",
    "shape", "bytes", "incomplete", "format", "not_a_dict",
])
def test_damaged_manifest_is_detected(model, x, complete, damage):
    manifest = complete / "manifest.json"
    if damage == "deleted":
        manifest.unlink()
    elif damage == "garbage":
        manifest.write_bytes(b"\x00\xffnot json")
    elif damage == "truncated":
        manifest.write_text(manifest.read_text()[:50])
    elif damage == "no_layers":
        edit_manifest(complete, lambda m: m.pop("layers"))
    elif damage == "no_fingerprint":
        edit_manifest(complete, lambda m: m.pop("model_fingerprint"))
    elif damage == "no_entry_bytes":
        edit_manifest(complete, lambda m: m["layers"]["head"].pop("bytes"))
    elif damage == "shape":
        edit_manifest(complete, lambda m: m["layers"]["head"].update(shape=[N, 4]))
    elif damage == "bytes":
        edit_manifest(complete, lambda m: m["layers"]["head"].update(bytes=12))
    elif damage == "incomplete":
        edit_manifest(complete, lambda m: m.update(complete=False))
    elif damage == "format":
        edit_manifest(complete, lambda m: m.update(format=99))
    elif damage == "not_a_dict":
        manifest.write_text("[1, 2, 3]")
    with pytest.raises(StoreError):
        ActivationStore(complete)
    if damage != "deleted":  # a deleted manifest (and no progress file) is just no store
        with pytest.raises(StoreError):
            extract(model, x, complete, pooling="max", batch_size=8)


def test_incomplete_store_is_refused_and_mentions_resume(model, x, tmp_path):
    calls = []

    def fail_on_third(m, inputs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("interrupted")
        return m(inputs)

    with pytest.raises(RuntimeError, match="interrupted"):
        extract(model, x, tmp_path / "s", batch_size=8, forward_fn=fail_on_third)
    assert (tmp_path / "s" / "progress.json").exists()
    assert not (tmp_path / "s" / "manifest.json").exists()
    with pytest.raises(StoreError, match="resume") as info:
        ActivationStore(tmp_path / "s")
    assert "16 samples" in str(info.value)
    with pytest.raises(StoreError, match="No activation store"):
        ActivationStore(tmp_path / "nothing")


# -- model state ----------------------------------------------------------------------------------

def test_model_state_restored_after_extract(model, x, tmp_path):
    model.train()
    model.features[3].eval()
    model.head.weight.requires_grad_(False)
    flags = [m.training for m in model.modules()]
    grads = [p.requires_grad for p in model.parameters()]
    model.features.register_forward_hook(lambda *a: None)
    seen = []

    def forward(m, inputs):
        seen.append((m.training, torch.is_grad_enabled(), hook_count(m)))
        return m(inputs)

    extract(model, x, tmp_path / "ok", batch_size=16, forward_fn=forward)
    assert seen == [(False, False, 1 + len(LAYERS))] * 3  # eval, no grad, our hooks on
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == grads
    assert hook_count(model) == 1

    def explode(m, inputs):
        if len(seen) > 4:
            raise RuntimeError("mid-way")
        seen.append(1)
        return m(inputs)

    with pytest.raises(RuntimeError, match="mid-way"):
        extract(model, x, tmp_path / "bad", batch_size=8, forward_fn=explode)
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == grads
    assert hook_count(model) == 1
    assert torch.is_grad_enabled()


# -- errors and options ---------------------------------------------------------------------------

def test_errors_are_value_errors(model, x, tmp_path):
    assert issubclass(StoreError, ValueError) and issubclass(StoreError, LatentSurgeonError)
    with pytest.raises(ValueError) as info:
        extract(model, x, tmp_path / "p", pooling="avg")
    assert isinstance(info.value, LatentSurgeonError)
    with pytest.raises(InvalidParameterError, match="dtype must be one of"):
        extract(model, x, tmp_path / "d", dtype="int8")
    with pytest.raises(LayerNotFoundError, match="features.3"):
        extract(model, x, tmp_path / "l", layers=["featurs.3"])
    assert not (tmp_path / "p").exists() and not (tmp_path / "l").exists()


def test_float16_and_float64_on_disk(model, x, tmp_path):
    ref = reference(model, x, LAYERS, "mean")
    for dtype, np_dtype in (("float16", np.float16), ("float64", np.float64)):
        store = extract(model, x, tmp_path / dtype, pooling="mean", batch_size=N, dtype=dtype)
        for name in LAYERS:
            assert store[name].dtype == np_dtype
            assert np.array_equal(store[name], ref[name].astype(np_dtype))


def test_summary_and_repr(model, x, tmp_path):
    store = extract(model, x, tmp_path / "s", pooling="max", batch_size=8)
    text = store.summary()
    for name in LAYERS:
        assert name in text
    assert "40 samples" in text
    assert "n_samples=40" in repr(store)
