"""The store under bad input and failures: a clear error of ours, and nothing changed.

Every case checks the same things afterwards: the model's hooks, ``training`` and ``requires_grad``
flags and its parameters and buffers are as before, a store that existed is byte-identical and
still opens, and no folder the failed call created is left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from latentsurgeon.activations import ActivationStore
from latentsurgeon.errors import (
    InvalidParameterError,
    LatentSurgeonError,
    LayerNotFoundError,
    NonFiniteError,
    StoreError,
)
from latentsurgeon.hooks import LayerSelectorError, hook_count

# small tensor work: one torch thread (tests/_threads.py says why)
pytestmark = pytest.mark.usefixtures("one_thread")


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()


def make_data(n: int = 20) -> torch.Tensor:
    return torch.randn(n, 1, 6, 6, generator=torch.Generator().manual_seed(0))


def extract(model, data, path, **kwargs):
    kwargs.setdefault("progress", False)
    kwargs.setdefault("batch_size", 8)
    layers = kwargs.pop("layers", ["0", "2"])
    return ActivationStore.extract(model, data, layers, path, **kwargs)


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (and the folder names), byte for byte."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(path.rglob("*"))}


def model_state(model: nn.Module) -> tuple:
    return (hook_count(model), [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()],
            {k: v.detach().clone() for k, v in model.state_dict().items()})


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.is_meta or b.is_meta:  # no values to compare
        return a.is_meta and b.is_meta and a.shape == b.shape and a.dtype == b.dtype
    return torch.equal(a, b)


@contextmanager
def nothing_changes(model: nn.Module, root: Path):
    """Assert on exit: model state as before, every file under ``root`` as before."""
    before_model, before_files = model_state(model), tree(root)
    yield
    after = model_state(model)
    assert after[:3] == before_model[:3]
    assert after[3].keys() == before_model[3].keys()
    assert all(_same(after[3][k], v) for k, v in before_model[3].items())
    assert tree(root) == before_files
    assert torch.is_grad_enabled()


@pytest.fixture
def model() -> nn.Sequential:
    return make_model()


@pytest.fixture
def old_store(model, tmp_path) -> Path:
    extract(model, make_data(), tmp_path / "store", pooling="max")
    return tmp_path / "store"


def assert_opens(path: Path, model: nn.Module) -> None:
    store = ActivationStore(path, model=model)
    assert store.n_samples == 20 and store.layers == ["0", "2"]


# -- atomic overwrite ------------------------------------------------------------------------------

def test_overwrite_with_a_bad_first_batch_leaves_the_old_store(model, old_store):
    bad = make_data()
    bad[3, 0, 0, 0] = float("nan")
    with nothing_changes(model, old_store.parent):
        with pytest.raises(NonFiniteError) as info:
            extract(model, bad, old_store, overwrite=True)
    assert "'0'" in str(info.value) and "rows 3" in str(info.value)
    assert_opens(old_store, model)

    def broken(m, inputs):
        raise RuntimeError("the first batch fails")

    with nothing_changes(model, old_store.parent):
        with pytest.raises(RuntimeError, match="first batch"):
            extract(model, make_data(), old_store, overwrite=True, forward_fn=broken)
    assert_opens(old_store, model)


def test_overwrite_failing_mid_way_leaves_the_old_store(model, old_store):
    calls = []

    def dies_later(m, inputs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return m(inputs)

    with nothing_changes(model, old_store.parent):
        with pytest.raises(KeyboardInterrupt):
            extract(model, make_data(), old_store, overwrite=True, forward_fn=dies_later,
                    pooling="mean")
    assert_opens(old_store, model)
    assert ActivationStore(old_store).pooling("0") == "max"


def test_overwrite_swaps_in_the_new_store_and_leaves_no_debris(model, old_store):
    other = make_model()
    with torch.no_grad():
        other[0].weight.mul_(-1)
    store = extract(other, make_data(), old_store, overwrite=True, pooling="mean")
    assert ActivationStore(old_store, model=other).pooling("0") == "mean"
    assert store.path == old_store
    assert sorted(p.name for p in old_store.parent.iterdir()) == ["store"]


def test_overwrite_refuses_a_folder_with_foreign_files(model, old_store):
    (old_store / "notes.txt").write_text("mine")
    with nothing_changes(model, old_store.parent):
        with pytest.raises(StoreError, match="notes.txt"):
            extract(model, make_data(), old_store, overwrite=True)


def test_a_failed_extraction_leaves_no_folder_it_created(model, tmp_path):
    bad = make_data()
    bad[0] = float("inf")
    with nothing_changes(model, tmp_path):
        with pytest.raises(NonFiniteError):
            extract(model, bad, tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()
    # an empty folder the user made stays, and stays empty
    (tmp_path / "mine").mkdir()
    with nothing_changes(model, tmp_path):
        with pytest.raises(NonFiniteError):
            extract(model, bad, tmp_path / "mine")
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


# -- non-finite activations ------------------------------------------------------------------------

def test_nonfinite_rows_are_refused_with_layer_and_rows(model, tmp_path):
    data = make_data()
    data[13, 0, 2, 2] = float("nan")  # batch 2, row 5 of it; sample 13 overall
    with pytest.raises(NonFiniteError) as info:
        extract(model, data, tmp_path / "s")
    message = str(info.value)
    assert "Layer '0'" in message and "rows 13" in message and "nonfinite='record'" in message
    # batches 0 (rows 0-7) were written and committed before: the store is resumable
    assert json.loads((tmp_path / "s" / "progress.json").read_text())["n_done"] == 8


def test_nonfinite_record_stores_and_reports_the_rows(model, tmp_path):
    data = make_data()
    data[[2, 13]] = float("nan")
    store = extract(model, data, tmp_path / "s", nonfinite="record", pooling="max")
    assert store.nonfinite_rows("0").tolist() == [2, 13]
    assert store.nonfinite_rows("2").tolist() == [2, 13]
    assert np.isnan(store["0"][2]).all() and np.isfinite(store["0"][3]).all()
    assert "2 rows NaN/Inf" in store.summary()
    reopened = ActivationStore(tmp_path / "s", model=model)
    assert reopened.manifest["nonfinite"] == {"0": [2, 13], "2": [2, 13]}
    clean = extract(model, make_data(), tmp_path / "clean")
    assert clean.nonfinite_rows("0").size == 0 and "nonfinite" not in clean.manifest
    with pytest.raises(InvalidParameterError, match="nonfinite must be one of"):
        extract(model, data, tmp_path / "x", nonfinite="ignore")
    assert not (tmp_path / "x").exists()


def test_float16_overflow_on_disk_is_caught(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.fill_(1e5)
    with pytest.raises(NonFiniteError, match="Layer '0'"):
        ActivationStore.extract(model, torch.ones(4, 2), "0", tmp_path / "s", dtype="float16",
                                progress=False)
    assert not (tmp_path / "s").exists()


# -- layer order ----------------------------------------------------------------------------------

def test_layers_are_listed_in_model_order(tmp_path):
    class Unsorted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.zeta = nn.Sequential(*[nn.Linear(3, 3) for _ in range(12)])
            self.alpha = nn.Linear(3, 2)

        def forward(self, x):
            return self.alpha(self.zeta(x))

    model = Unsorted()
    wanted = ["zeta.2", "zeta.10", "alpha"]
    store = ActivationStore.extract(model, torch.randn(5, 3), ["alpha", "zeta.10", "zeta.2"],
                                    tmp_path / "s", progress=False)
    assert store.layers == wanted
    assert ActivationStore(tmp_path / "s").layers == wanted
    assert sorted(wanted) != wanted  # alphabetical would differ
    assert [line.split()[0] for line in store.summary().splitlines()[1:]] == wanted


# -- bad arguments --------------------------------------------------------------------------------

@pytest.mark.parametrize("batch_size", [0, -3, 2.5, True, "8"])
def test_bad_batch_size(model, old_store, batch_size):
    with nothing_changes(model, old_store.parent):
        with pytest.raises(InvalidParameterError, match="batch_size must be an int >= 1") as info:
            extract(model, make_data(), old_store.parent / "new", batch_size=batch_size)
        assert repr(batch_size) in str(info.value)
        with pytest.raises(InvalidParameterError, match="batch_size"):
            extract(model, make_data(), old_store, batch_size=batch_size, overwrite=True)


def test_path_that_is_a_file(model, tmp_path):
    file = tmp_path / "acts.npy"
    file.write_bytes(b"not a store")
    with nothing_changes(model, tmp_path):
        for overwrite in (False, True):
            with pytest.raises(StoreError, match="is an existing file") as info:
                extract(model, make_data(), file, overwrite=overwrite)
            assert "path" in str(info.value) and str(file) in str(info.value)
        with pytest.raises(StoreError, match="is a file"):
            ActivationStore(file)


def _make_read_only(folder: Path) -> bool:
    """Make ``folder`` unwritable even for root (chattr +i) or by mode bits; False if neither."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        if not done:
            return False
    probe = folder / "probe"
    try:
        probe.write_text("x")
    except OSError:
        return True
    probe.unlink()
    return False


def _undo_read_only(folder: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


def test_read_only_and_missing_folders(model, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    if not _make_read_only(locked):
        _undo_read_only(locked)
        pytest.skip("cannot make a folder read-only here")
    try:
        with nothing_changes(model, tmp_path):
            for path in (locked, locked / "sub"):
                with pytest.raises(StoreError, match="cannot write an activation store") as info:
                    extract(model, make_data(), path)
                assert str(path) in str(info.value) and "writable" in str(info.value)
    finally:
        _undo_read_only(locked)
    with pytest.raises(StoreError, match="no such directory"):
        ActivationStore(tmp_path / "missing")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models(tmp_path, dtype):
    model = make_model().to(dtype)
    data = make_data()  # float32 inputs: cast to the model's dtype
    store = extract(model, data, tmp_path / "s", pooling="mean")
    with torch.no_grad():
        expected = model[0](data.to(dtype)).mean(dim=(2, 3)).float()  # pooled in the model's dtype
    assert store["0"].dtype == np.float32
    np.testing.assert_array_equal(np.asarray(store["0"]), expected.numpy())
    assert all(p.dtype == dtype for p in model.parameters())


def test_integer_images_for_a_float_model(model, old_store):
    images = torch.randint(0, 255, (20, 1, 6, 6))
    with nothing_changes(model, old_store.parent):
        with pytest.raises(InvalidParameterError) as info:
            extract(model, images, old_store.parent / "new")
        with pytest.raises(InvalidParameterError):
            extract(model, images, old_store, overwrite=True)
    message = str(info.value)
    assert message.startswith("data:") and "torch.int64" in message and "torch.float32" in message
    assert "images.float()" in message


def test_model_on_the_meta_device(old_store):
    with torch.device("meta"):
        model = make_model()
    with nothing_changes(model, old_store.parent):
        with pytest.raises(InvalidParameterError, match="'meta' device") as info:
            extract(model, make_data(), old_store.parent / "s")
        with pytest.raises(InvalidParameterError, match="'meta' device"):
            extract(model, make_data(), old_store, overwrite=True)
    assert str(info.value).startswith("model:")
    assert_opens(old_store, make_model())


def test_a_layer_that_never_runs(old_store):
    tmp_path = old_store.parent
    class Spare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(3, 3)
            self.spare = nn.Linear(3, 3)
            self.head = nn.Linear(3, 1)

        def forward(self, x):
            return self.head(self.used(x))

    model = Spare()
    with nothing_changes(model, tmp_path):
        with pytest.raises(LayerNotFoundError) as info:
            ActivationStore.extract(model, torch.randn(4, 3), ["used", "spare"], tmp_path / "s",
                                    progress=False)
    message = str(info.value)
    assert "'spare' did not run in the model's forward pass" in message
    assert "in call order: used, head" in message
    assert "forward pass run?" not in message
    assert_opens(old_store, make_model())


@pytest.mark.parametrize("selector", [2, [0, 2], None])
def test_an_int_or_none_as_the_layer_selector(model, old_store, selector):
    with nothing_changes(model, old_store.parent):
        with pytest.raises(LayerSelectorError) as info:
            extract(model, make_data(), old_store.parent / "s", layers=selector)
        with pytest.raises(LayerSelectorError):
            extract(model, make_data(), old_store, layers=selector, overwrite=True)
    assert_opens(old_store, model)
    assert isinstance(info.value, TypeError) and isinstance(info.value, LatentSurgeonError)
    assert str(info.value).startswith("layers must be a layer name")
    if selector == 2:
        assert "pass the string '2'" in str(info.value)


def test_another_device_than_the_models_is_refused(model, tmp_path):
    from latentsurgeon.errors import DeviceMismatchError

    with nothing_changes(model, tmp_path):
        with pytest.raises(DeviceMismatchError, match="never move"):
            extract(model, make_data(), tmp_path / "s", device="meta")
