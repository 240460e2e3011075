"""capture(): equivalence with a hand-run forward, gradients, accumulation, graph, cleanup."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentsurgeon import LayerNotFoundError
from latentsurgeon.activations import capture
from latentsurgeon.hooks import hook_count

# small tensor work: one torch thread (tests/_threads.py says why)
pytestmark = pytest.mark.usefixtures("one_thread")


def make_cnn(inplace: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),  # 0
        nn.ReLU(inplace=inplace),  # 1
        nn.MaxPool2d(2),  # 2
        nn.Conv2d(4, 8, 3, padding=1),  # 3
        nn.ReLU(inplace=inplace),  # 4
        nn.AdaptiveAvgPool2d(2),  # 5
        nn.Flatten(),  # 6
        nn.Linear(32, 3),  # 7
    )


def by_hand(model: nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every submodule's output, computed by calling the submodules one at a time."""
    outs, h = {}, x
    for i, layer in enumerate(model):
        h = layer(h)
        outs[str(i)] = h.detach().clone()
    return outs


def data(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("inplace", [False, True])
def test_capture_equals_manual_forward(inplace):
    model = make_cnn(inplace).eval()
    x = data()
    with torch.no_grad():
        ref = by_hand(model, x)
    with torch.no_grad(), capture(model, "*") as cap:
        y = model(x)
    assert cap.layers == [str(i) for i in range(8)]
    for name, value in ref.items():
        # With ReLU(inplace=True) the conv output must still be the pre-activation.
        assert torch.equal(cap[name], value), name
    assert torch.equal(y, ref["7"])
    assert hook_count(model) == 0


def test_capture_selected_layers_only():
    model = make_cnn()
    x = data()
    with capture(model, [nn.Conv2d, "7"]) as cap:
        model(x)
    assert cap.layers == ["0", "3", "7"]
    assert set(cap.activations) == {"0", "3", "7"}
    assert "1" not in cap and "0" in cap
    with pytest.raises(KeyError, match="captured layers"):
        cap["1"]
    assert not cap["3"].requires_grad  # detached by default
    assert cap.gradients == {}


def test_capture_unknown_layer_registers_nothing():
    model = make_cnn()
    with pytest.raises(LayerNotFoundError, match="'3'"):
        with capture(model, ["0", "3x"]):
            pass  # pragma: no cover
    assert hook_count(model) == 0


def test_gradients_equal_autograd_grad_wrt_the_intermediate():
    model = make_cnn()
    x = data()
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    with capture(model, ["0", "3", "5"], gradients=True) as cap:
        F.cross_entropy(model(x), target).backward()
    assert set(cap.gradients) == {"0", "3", "5"}
    for split in (0, 3, 5):
        # Reference: run the model in two parts and differentiate w.r.t. the cut.
        mid = model[: split + 1](x)
        loss = F.cross_entropy(model[split + 1:](mid), target)
        (ref,) = torch.autograd.grad(loss, mid)
        grad = cap.gradients[str(split)]
        assert grad.shape == mid.shape
        torch.testing.assert_close(grad, ref, rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(cap[str(split)], mid.detach(), rtol=0, atol=0)


def test_gradients_not_recorded_without_grad():
    model = make_cnn()
    with torch.no_grad(), capture(model, "3", gradients=True) as cap:
        model(data())
    assert "3" in cap and cap.gradients == {}


def test_accumulate_concatenates_passes():
    model = make_cnn()
    x1, x2, x3 = data(4, 1), data(3, 2), data(5, 3)
    with torch.no_grad():
        with capture(model, ["0", "7"], accumulate=True) as cap:
            for x in (x1, x2, x3):
                model(x)
        refs = [by_hand(model, x) for x in (x1, x2, x3)]
        for name in ("0", "7"):
            assert torch.equal(cap[name], torch.cat([r[name] for r in refs]))
        assert cap["0"].shape[0] == 12

        with capture(model, "7") as latest:
            model(x1)
            model(x2)
        assert torch.equal(latest["7"], refs[1]["7"])

        cap.clear()
        assert "0" not in cap


def test_accumulate_gradients_over_passes():
    model = make_cnn()
    x1, x2 = data(4, 1), data(3, 2)
    with capture(model, "3", gradients=True, accumulate=True) as cap:
        for x in (x1, x2):
            model(x).sum().backward()
    refs = []
    for x in (x1, x2):
        mid = model[:4](x)
        refs.append(torch.autograd.grad(model[4:](mid).sum(), mid)[0])
    torch.testing.assert_close(cap.gradients["3"], torch.cat(refs), rtol=1e-6, atol=1e-8)


def test_detach_false_keeps_the_graph():
    model = make_cnn()
    x = data()
    with capture(model, "3", detach=False) as cap:
        y = model(x)
    h = cap["3"]
    assert h.requires_grad and h.grad_fn is not None
    (grad,) = torch.autograd.grad(y.square().sum(), h)
    mid = model[:4](x)
    (ref,) = torch.autograd.grad(model[4:](mid).square().sum(), mid)
    torch.testing.assert_close(grad, ref, rtol=1e-6, atol=1e-8)
    # Gradients w.r.t. parameters also flow through the captured tensor.
    (wgrad,) = torch.autograd.grad(h.sum(), model[0].weight)
    assert wgrad.abs().sum() > 0


def test_state_restored_after_exception_inside_block():
    model = make_cnn()
    model.train()
    model[3].eval()
    flags = [m.training for m in model.modules()]
    model[7].weight.requires_grad_(False)
    with pytest.raises(RuntimeError, match="inside"):
        with capture(model, "*", gradients=True):
            model.eval()
            model.requires_grad_(True)
            model[0].register_forward_hook(lambda *a: None)
            assert hook_count(model) == 9
            model(data())
            raise RuntimeError("inside")
    assert hook_count(model) == 0
    assert [m.training for m in model.modules()] == flags
    assert not model[7].weight.requires_grad and model[0].weight.requires_grad


def test_no_recording_after_the_block():
    model = make_cnn()
    x = data()
    with torch.no_grad(), capture(model, "7", accumulate=True) as cap:
        model(x)
    model(x)
    assert cap["7"].shape[0] == 6


class WithAux(nn.Module):
    """Returns ``(tensor, aux)`` like a transformer block."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        return h, {"norm": h.norm(dim=1)}


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = WithAux()
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h, _ = self.block(x)
        return self.out(h)


def test_tuple_output_captures_first_element():
    torch.manual_seed(0)
    model = Outer()
    x = torch.randn(5, 4)
    with torch.no_grad(), capture(model, "block", gradients=True) as cap:
        model(x)
        ref = model.block.lin(x)
    assert torch.equal(cap["block"], ref)
    with capture(model, "block", gradients=True) as cap:
        model(x).sum().backward()
    mid = model.block.lin(x)
    (ref_grad,) = torch.autograd.grad(model.out(mid).sum(), mid)
    torch.testing.assert_close(cap.gradients["block"], ref_grad)


def test_uncopied_capture_refuses_an_output_changed_in_place_later():
    from latentsurgeon.errors import LatentSurgeonError

    class AddInPlace(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, x):
            h = self.lin(x)
            h += 1.0  # functional in-place op: invisible to the `inplace` attribute scan
            return h

    model = AddInPlace()
    x = torch.randn(4, 3)
    with capture(model, "lin") as cap:
        model(x)
    with pytest.raises(LatentSurgeonError, match="copy=True"):
        cap["lin"]
    with capture(model, "lin", copy=True) as cap:
        model(x)
    torch.testing.assert_close(cap["lin"], model.lin(x))


def test_capture_without_inplace_modules_stores_the_output_itself():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
    outputs = []
    with capture(model, "0") as cap:
        y = model[0](torch.randn(2, 3))  # noqa: F841 - the module's own call goes through hooks
        outputs.append(cap["0"])
    assert outputs[0].data_ptr() == y.data_ptr()  # no copy was made


def test_model_device_of_a_stateless_model_falls_back_to_the_default():
    from latentsurgeon.activations.batching import model_device

    assert model_device(torch.nn.ReLU()) == torch.device("cpu")
    assert model_device(torch.nn.ReLU(), default=None) is None
    assert model_device(torch.nn.Linear(2, 2), default=None) == torch.device("cpu")
