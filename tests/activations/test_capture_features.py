"""capture(): layer inputs, gradients w.r.t. inputs, callbacks, never-run layers, inference mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentsurgeon.activations import capture
from latentsurgeon.errors import InvalidParameterError, LayerNotFoundError
from latentsurgeon.hooks import Select, hook_count

# small tensor work: one torch thread (tests/_threads.py says why)
pytestmark = pytest.mark.usefixtures("one_thread")


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3))


def x_data(n: int = 7) -> torch.Tensor:
    return torch.randn(n, 5, generator=torch.Generator().manual_seed(1))


def test_inputs_are_what_the_layer_received():
    model = mlp()
    x = x_data()
    with torch.no_grad(), capture(model, ["0", "2", "4"], inputs=True) as cap:
        model(x)
        h1 = model[1](model[0](x))
        h3 = model[3](model[2](h1))
    assert torch.equal(cap.inputs["0"], x)
    assert torch.equal(cap.inputs["2"], h1)
    assert torch.equal(cap.inputs["4"], h3)
    assert torch.equal(cap["2"], model[2](h1))


def test_input_gradients_equal_autograd_through_the_layer_only():
    model = mlp()
    x = x_data().requires_grad_(True)
    target = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    with capture(model, ["0", "2"], input_gradients=True, gradients=True) as cap:
        F.cross_entropy(model(x), target).backward()
    # d loss / d input of layer 2, by splitting the model at its input
    mid = model[:2](x).detach().requires_grad_(True)
    (ref2,) = torch.autograd.grad(F.cross_entropy(model[2:](mid), target), mid)
    torch.testing.assert_close(cap.input_gradients["2"], ref2, rtol=1e-6, atol=1e-8)
    xx = x.detach().requires_grad_(True)
    (ref0,) = torch.autograd.grad(F.cross_entropy(model(xx), target), xx)
    torch.testing.assert_close(cap.input_gradients["0"], ref0, rtol=1e-6, atol=1e-8)
    # the gradient w.r.t. the output of layer 0 equals the one w.r.t. the input of layer 1
    assert set(cap.gradients) == {"0", "2"}
    assert hook_count(model) == 0


def test_input_gradient_through_this_layer_only_with_a_shared_input():
    class Fork(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.a = nn.Linear(3, 2)
            self.b = nn.Linear(3, 2)

        def forward(self, x):
            return self.a(x) + 10 * self.b(x)  # x feeds both branches

    model = Fork()
    x = torch.randn(4, 3, requires_grad=True)
    with capture(model, "a", input_gradients=True) as cap:
        model(x).sum().backward()
    # only branch a's share: sum over outputs of a's weights, not x.grad (which has both)
    expected = model.a.weight.sum(dim=0).expand(4, 3)
    torch.testing.assert_close(cap.input_gradients["a"], expected)
    assert not torch.allclose(x.grad, expected)


def test_callback_instead_of_storing():
    model = mlp()
    x = x_data()
    got = []
    with torch.no_grad(), capture(model, ["0", "4"], callback=lambda n, t: got.append(
            (n, t.sum().item()))) as cap:
        model(x)
    assert [n for n, _ in got] == ["0", "4"]
    assert got[0][1] == pytest.approx(model[0](x).sum().item(), rel=1e-6)
    assert cap.activations == {}
    with pytest.raises(LayerNotFoundError, match="went to the callback"):
        cap["0"]


def test_callback_with_kind_receives_every_kind():
    model = mlp()
    x = x_data().requires_grad_(True)
    got = []

    def keep(name, tensor, kind):
        got.append((kind, name, tuple(tensor.shape)))

    with capture(model, "2", inputs=True, gradients=True, input_gradients=True,
                 callback=keep):
        model(x).sum().backward()
    assert sorted(got) == sorted([("input", "2", (7, 8)), ("output", "2", (7, 6)),
                                  ("gradient", "2", (7, 6)), ("input_gradient", "2", (7, 8))])


def test_bad_callbacks_are_refused_before_anything_is_registered():
    model = mlp()
    with pytest.raises(InvalidParameterError, match="`kind` keyword"):
        with capture(model, "2", inputs=True, callback=lambda n, t: None):
            pass  # pragma: no cover
    with pytest.raises(InvalidParameterError, match="callback must be a function"):
        with capture(model, "2", callback=5):
            pass  # pragma: no cover
    assert hook_count(model) == 0


def test_a_layer_that_never_runs_is_named_with_the_layers_that_did():
    class Spare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.Linear(2, 2)
            self.spare = nn.Linear(2, 2)

        def forward(self, x):
            return self.used(x)

    model = Spare()
    with capture(model, ["used", "spare"]) as cap:
        with pytest.raises(LayerNotFoundError, match="none of the captured layers"):
            cap["spare"]
        model(torch.randn(1, 2))
    with pytest.raises(LayerNotFoundError) as info:
        cap["spare"]
    message = str(info.value)
    assert "'spare' did not run in the model's forward" in message
    assert "['used']" in message and "forward pass run?" not in message
    with pytest.raises(LayerNotFoundError, match="not one of the captured layers"):
        cap["nothing"]


def test_capture_under_inference_mode_copies_what_it_cannot_watch():
    class AddInPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            h = self.lin(x)
            h += 1.0  # invisible to the `inplace` scan, and untracked in inference mode
            return h

    model = AddInPlace()
    x = torch.randn(4, 3)
    with torch.inference_mode(), capture(model, "lin") as cap:
        model(x)
    with torch.no_grad():
        expected = model.lin(x)
    torch.testing.assert_close(cap["lin"], expected, rtol=0, atol=0)


def test_select_through_capture_skips_containers():
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), nn.Linear(2, 1))
    with capture(model, Select("*", skip_containers=True)) as cap:
        model(torch.randn(3, 2))
    assert cap.layers == ["0.0", "0.1", "1"]
