"""Library reads get a layer's true output whatever the model does after it (issue 8, item 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from latentsurgeon.activations import ActivationStore, LayerReader, capture, layer_outputs, pool
from latentsurgeon.errors import LatentSurgeonError

# small tensor work: one torch thread (tests/_threads.py says why)
pytestmark = pytest.mark.usefixtures("one_thread")


class Basic(nn.Module):
    """A torchvision-style residual block: ``out += identity`` and in-place ReLUs."""

    def __init__(self, channels: int = 4, inplace: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


def net(inplace: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), Basic(inplace=inplace), Basic(inplace=inplace),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    for module in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def by_hand(model: nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The outputs of bn1/bn2 of block 1 and the ReLU'd input, computed step by step (copies)."""
    with torch.no_grad():
        h0 = model[0](x)
        block = model[1]
        bn1 = block.bn1(block.conv1(h0)).clone()
        bn2 = block.bn2(block.conv2(torch.relu(bn1))).clone()
        out = torch.relu(bn2 + h0)
    return {"0": h0.clone(), "1.bn1": bn1, "1.bn2": bn2, "1": out}


LAYERS = ["0", "1.bn1", "1.bn2", "1"]


def data(n: int = 12) -> torch.Tensor:
    return torch.randn(n, 1, 6, 6, generator=torch.Generator().manual_seed(2))


def test_the_reference_really_differs_from_what_in_place_ops_leave():
    model, x = net(), data()
    expected = by_hand(model, x)
    assert (expected["1.bn1"] < 0).any()           # the in-place ReLU would clip it
    assert not torch.equal(expected["1.bn2"], expected["1.bn2"] + expected["0"])
    assert (expected["0"] < 0).any()               # the block's in-place ReLU changes its input


@pytest.mark.parametrize("stop_early", [True, False])
@pytest.mark.parametrize("inplace", [True, False])
def test_layer_outputs_reads_true_outputs(stop_early, inplace):
    model, x = net(inplace), data()
    expected = by_hand(model, x)
    for _ in range(2):  # the second read stops early (when allowed)
        read = layer_outputs(model, LAYERS, x, batch_size=None, stop_early=stop_early)
    for name in LAYERS:
        torch.testing.assert_close(read[name], expected[name], rtol=0, atol=0, msg=name)
    for pooling in ("max", "mean", "flatten"):
        pooled = layer_outputs(model, LAYERS, x, batch_size=None, pooling=pooling)
        for name in LAYERS:
            assert torch.equal(pooled[name], pool(expected[name], pooling)), (pooling, name)


def test_reader_alone_and_the_store_read_true_outputs(tmp_path):
    model, x = net(), data()
    expected = by_hand(model, x)
    with LayerReader(model, ["1.bn2", "1.bn1"]) as reader:
        got = reader.read(x)
    assert list(got) == ["1.bn1", "1.bn2"]  # model order
    assert torch.equal(got["1.bn2"], expected["1.bn2"])
    store = ActivationStore.extract(model, x, LAYERS, tmp_path / "s", batch_size=12,
                                    progress=False)
    for name in LAYERS:
        assert np.array_equal(np.asarray(store[name]), expected[name].numpy()), name


def test_user_capture_copies_for_inplace_modules_and_detects_functional_changes():
    model, x = net(inplace=True), data()
    expected = by_hand(model, x)
    with torch.no_grad(), capture(model, LAYERS) as cap:
        model(x)
    for name in LAYERS:  # the model has ReLU(inplace=True): capture copies by default
        assert torch.equal(cap[name], expected[name]), name

    plain = net(inplace=False)  # no in-place module, but `out += identity` is still there
    expected = by_hand(plain, x)
    with torch.no_grad(), capture(plain, "1.bn2") as cap:
        plain(x)
    with pytest.raises(LatentSurgeonError, match="copy=True"):
        cap["1.bn2"]
    with torch.no_grad(), capture(plain, "1.bn2", copy=True) as cap:
        plain(x)
    assert torch.equal(cap["1.bn2"], expected["1.bn2"])
    with torch.no_grad(), capture(plain, "1.bn2", stop_early=True) as cap:
        cap.run(plain, x)
        cap.run(plain, x)  # stopped right after bn2: nothing can change it, so no copy needed
        assert cap.stopped
    assert torch.equal(cap["1.bn2"], expected["1.bn2"])


def test_inputs_changed_in_place_by_the_layer_itself():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(inplace=True), nn.Linear(3, 1))
    x = torch.randn(5, 3)
    with torch.no_grad():
        pre = model[0](x).clone()
    with torch.no_grad(), capture(model, "1", inputs=True) as cap:
        model(x)
    assert (pre < 0).any()
    assert torch.equal(cap.inputs["1"], pre)  # the ReLU's input before it clipped it
