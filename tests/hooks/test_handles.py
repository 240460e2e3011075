"""Hook contexts: read, replace and modify outputs and inputs, backward hooks, cleanup guarantees."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from latentsurgeon import LayerNotFoundError
from latentsurgeon.hooks import HookGroup, hook_count, hooked

# small tensor work: one torch thread (tests/_threads.py says why)
pytestmark = pytest.mark.usefixtures("one_thread")


def make_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3))


def manual(model: nn.Sequential, x: torch.Tensor, *, edit: dict | None = None) -> list[torch.Tensor]:
    """Outputs of each submodule, computed by calling them one by one; ``edit[i]`` maps output i."""
    outs, h = [], x
    for i, layer in enumerate(model):
        h = layer(h)
        if edit and i in edit:
            h = edit[i](h)
        outs.append(h)
    return outs


@pytest.fixture
def mlp() -> nn.Sequential:
    return make_mlp()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(7, 5, generator=torch.Generator().manual_seed(3))


def test_forward_hook_reads_outputs_with_layer_name(mlp, x):
    seen: dict[str, torch.Tensor] = {}
    order: list[str] = []

    def read(name, module, inputs, output):
        assert module is dict(mlp.named_modules())[name]
        order.append(name)
        seen[name] = output.detach().clone()

    with hooked(mlp, ["2", "0", "4"], forward=read) as group:
        assert set(group.layers) == {"0", "2", "4"}
        assert hook_count(mlp) == 3
        y = mlp(x)
    assert order == ["0", "2", "4"]
    ref = manual(mlp, x)
    for i in (0, 2, 4):
        assert torch.equal(seen[str(i)], ref[i])
    assert torch.equal(y, ref[-1])
    assert hook_count(mlp) == 0


def test_forward_hook_return_value_replaces_output(mlp, x):
    with hooked(mlp, "2", forward=lambda name, m, i, out: 2 * out + 1):
        y = mlp(x)
    ref = manual(mlp, x, edit={2: lambda h: 2 * h + 1})[-1]
    assert torch.equal(y, ref)
    assert not torch.allclose(y, mlp(x))  # and the edit is gone afterwards
    assert torch.equal(mlp(x), manual(mlp, x)[-1])


def test_forward_hook_can_modify_output_in_place(mlp, x):
    def zero_first_unit(name, module, inputs, output):
        output[:, 0] = 0.0  # returns None: the (modified) output is kept

    with torch.no_grad(), hooked(mlp, "1", forward=zero_first_unit):
        y = mlp(x)

    def edit(h):
        h = h.clone()
        h[:, 0] = 0.0
        return h

    with torch.no_grad():
        assert torch.equal(y, manual(mlp, x, edit={1: edit})[-1])


def test_forward_pre_hook_replaces_inputs(mlp, x):
    def halve(name, module, inputs):
        return (inputs[0] * 0.5,)

    with hooked(mlp, "4", forward_pre=halve):
        y = mlp(x)
    ref = manual(mlp, x, edit={3: lambda h: h * 0.5})[-1]
    assert torch.equal(y, ref)


def test_forward_pre_and_forward_together(mlp, x):
    calls: list[str] = []
    with hooked(mlp, nn.Linear,
                forward_pre=lambda n, m, i: calls.append("pre" + n),
                forward=lambda n, m, i, o: calls.append("post" + n)) as group:
        assert len(group) == 6
        mlp(x)
    assert calls == ["pre0", "post0", "pre2", "post2", "pre4", "post4"]
    assert hook_count(mlp) == 0


def test_full_backward_hook_sees_grad_output(mlp, x):
    target = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    grads: dict[str, torch.Tensor] = {}

    def read(name, module, grad_input, grad_output):
        grads[name] = grad_output[0].detach().clone()

    with hooked(mlp, ["1", "2"], backward=read):
        F.cross_entropy(mlp(x), target).backward()
    assert set(grads) == {"1", "2"}

    # Reference: split the network at each layer and differentiate w.r.t. its output.
    for i in (1, 2):
        mid = mlp[: i + 1](x)
        loss = F.cross_entropy(mlp[i + 1:](mid), target)
        (ref,) = torch.autograd.grad(loss, mid)
        torch.testing.assert_close(grads[str(i)], ref, rtol=1e-6, atol=1e-7)


def test_backward_hook_can_replace_grad_input(mlp, x):
    def cut(name, module, grad_input, grad_output):
        return tuple(None if g is None else torch.zeros_like(g) for g in grad_input)

    with hooked(mlp, "2", backward=cut):
        mlp(x).sum().backward()
    assert torch.count_nonzero(mlp[0].weight.grad) == 0  # nothing flows past layer 2
    assert torch.count_nonzero(mlp[4].weight.grad) > 0


def test_hooked_needs_a_function(mlp):
    with pytest.raises(ValueError):
        with hooked(mlp, "0"):
            pass


def test_hook_group_remove_is_idempotent(mlp, x):
    group = HookGroup()
    group.forward(mlp, "*", lambda *a: None)
    group.forward_pre(mlp, "0", lambda *a: None)
    assert len(group) == 6
    assert hook_count(mlp) == 6
    group.remove()
    assert hook_count(mlp) == 0 and len(group) == 0 and group.layers == {}
    group.remove()
    group.remove()
    assert hook_count(mlp) == 0
    # A group can be reused after remove().
    group.forward(mlp, "0", lambda *a: None)
    assert hook_count(mlp) == 1
    group.remove()
    assert hook_count(mlp) == 0


def test_hook_group_iterates_over_its_handles(mlp, x):
    """detoxai's callers write ``for h in hooks: h.remove()`` on what add_clarc_hook returns."""
    from torch.utils.hooks import RemovableHandle

    from latentsurgeon.correct import add_clarc_hook, add_mass_mean_probe_hook

    plain = mlp(x)
    group = HookGroup().forward(mlp, ["0", "2"], lambda name, m, i, o: o * 2)
    handles = list(group)
    assert len(handles) == len(group) == 2
    assert all(isinstance(h, RemovableHandle) for h in handles)
    assert not torch.allclose(mlp(x), plain)
    for handle in group:  # a snapshot: removing while iterating is safe
        handle.remove()
    assert hook_count(mlp) == 0
    torch.testing.assert_close(mlp(x), plain)
    group.remove()  # the handles are gone already: nothing more happens, nothing raises
    assert hook_count(mlp) == 0 and list(group) == []

    hooks = [add_clarc_hook(mlp, torch.ones(8), torch.zeros(8), "0"),
             add_mass_mean_probe_hook(mlp, torch.ones(6), ["2"])]
    assert hook_count(mlp) == 2
    for hook_group in hooks:
        for handle in hook_group:
            handle.remove()
    assert hook_count(mlp) == 0
    torch.testing.assert_close(mlp(x), plain)


def test_hook_group_adopts_raw_handles(mlp):
    with HookGroup() as group:
        group.add(mlp[0].register_forward_hook(lambda *a: None))
        assert hook_count(mlp) == 1
    assert hook_count(mlp) == 0


def test_hooks_removed_when_block_raises(mlp, x):
    calls = []
    with pytest.raises(RuntimeError, match="boom"):
        with hooked(mlp, "*", forward=lambda n, m, i, o: calls.append(n)):
            assert hook_count(mlp) == 5
            mlp(x)
            raise RuntimeError("boom")
    assert hook_count(mlp) == 0
    n = len(calls)
    mlp(x)
    assert len(calls) == n

    with pytest.raises(KeyError):
        with HookGroup() as group:
            group.forward(mlp, "0", lambda *a: None)
            group.backward(mlp, "2", lambda *a: None)
            assert hook_count(mlp) == 2
            raise KeyError("x")
    assert hook_count(mlp) == 0


def test_nothing_registered_when_a_later_selector_is_unknown(mlp):
    with pytest.raises(LayerNotFoundError):
        with hooked(mlp, ["0", "2", "nope"], forward=lambda *a: None, backward=lambda *a: None):
            pass  # pragma: no cover
    assert hook_count(mlp) == 0


def test_nothing_registered_when_torch_refuses_a_later_registration(mlp):
    # PyTorch refuses a full backward hook on a module that has an old-style backward hook.
    # The forward hooks (registered first) and the backward hook on "0" must be rolled back.
    old = mlp[2].register_backward_hook(lambda *a: None)
    assert hook_count(mlp) == 1
    with pytest.raises(RuntimeError):
        with hooked(mlp, ["0", "2"], forward=lambda *a: None, backward=lambda *a: None):
            pass  # pragma: no cover
    assert hook_count(mlp) == 1  # only the user's own hook is left
    assert len(mlp[0]._backward_hooks) == 0 and len(mlp[0]._forward_hooks) == 0

    group = HookGroup()
    group.forward(mlp, "4", lambda *a: None)
    with pytest.raises(RuntimeError):
        group.backward(mlp, ["0", "2"], lambda *a: None)
    assert hook_count(mlp) == 1 and len(group) == 0
    old.remove()
    assert hook_count(mlp) == 0


def test_root_layer_hook(mlp, x):
    with hooked(mlp, "", forward=lambda n, m, i, o: -o):
        y = mlp(x)
    assert torch.equal(y, -manual(mlp, x)[-1])


def test_prepend_puts_a_replacing_hook_before_earlier_observers(mlp, x):
    seen: list[torch.Tensor] = []

    def observe(name, module, inputs, output):
        seen.append(output.detach().clone())

    with torch.no_grad(), HookGroup() as group:
        group.forward(mlp, "2", observe)
        group.forward(mlp, "2", lambda n, m, i, out: out * 0)  # appended: runs after observe
        mlp(x)
        group.forward(mlp, "2", lambda n, m, i, out: out + 1, prepend=True)  # runs first
        mlp(x)
    with torch.no_grad():
        ref = manual(mlp, x)[2]
    assert torch.equal(seen[0], ref)
    assert torch.equal(seen[1], ref + 1)
    assert hook_count(mlp) == 0


def test_forward_pre_prepend_runs_before_earlier_pre_hooks():
    from latentsurgeon.hooks import HookGroup

    model = nn.Sequential(nn.Identity())
    seen: list[str] = []
    with HookGroup() as group:
        group.forward_pre(model, "0", lambda name, m, args: seen.append("first"))
        group.forward_pre(model, "0", lambda name, m, args: seen.append("prepended"), prepend=True)
        model(torch.zeros(1))
    assert seen == ["prepended", "first"]


# -- hook functions of the wrong shape --------------------------------------------------------------

def _state(model: nn.Module) -> tuple:
    return (hook_count(model), [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()],
            [p.detach().clone() for p in model.parameters()])


def _same_state(a: tuple, b: tuple) -> bool:
    return a[:3] == b[:3] and all(torch.equal(x, y) for x, y in zip(a[3], b[3], strict=True))


def test_pytorch_style_hook_functions_are_refused_with_a_clear_message(mlp, x):
    from latentsurgeon.errors import InvalidParameterError

    def torch_forward(module, inputs, output):
        return output * 2

    def torch_pre(module, inputs):
        return None

    def torch_backward(module, grad_input, grad_output):
        return None

    before = _state(mlp)
    for kwargs, argument, ours in (
            ({"forward": torch_forward}, "forward", "fn(name, module, inputs, output)"),
            ({"forward_pre": torch_pre}, "forward_pre", "fn(name, module, inputs)"),
            ({"backward": torch_backward}, "backward",
             "fn(name, module, grad_input, grad_output)"),
            # a good function beside a bad one: still nothing is registered
            ({"forward": lambda n, m, i, o: None, "backward": torch_backward}, "backward",
             "grad_input")):
        with pytest.raises(InvalidParameterError) as info:
            with hooked(mlp, "*", **kwargs):
                pytest.fail("the block must not run")  # pragma: no cover
        message = str(info.value)
        assert message.startswith(f"{argument} must be a hook function")
        assert ours in message and "PyTorch's hook signature" in message
        assert "layer name" in message
        assert _same_state(before, _state(mlp))
    with pytest.raises(InvalidParameterError, match="fn must be a hook function"):
        HookGroup().forward(mlp, "0", torch_forward)
    with pytest.raises(InvalidParameterError, match="5 positional parameters, 5 required"):
        HookGroup().forward(mlp, "0", lambda a, b, c, d, e: None)
    with pytest.raises(InvalidParameterError, match="got 3"):
        HookGroup().forward(mlp, "0", 3)
    assert _same_state(before, _state(mlp))
    torch.testing.assert_close(mlp(x), manual(mlp, x)[-1])


def test_hook_functions_of_every_valid_shape_are_accepted(mlp, x):
    import functools

    class Recorder:
        def __init__(self) -> None:
            self.names = []

        def __call__(self, name, module, inputs, output):
            self.names.append(name)

        def method(self, name, module, inputs, output, extra=None):
            self.names.append(name)

    def with_context(context, name, module, inputs, output):
        context.append(name)

    recorder, context = Recorder(), []
    with hooked(mlp, "0", forward=recorder), hooked(mlp, "2", forward=recorder.method), \
            hooked(mlp, "4", forward=functools.partial(with_context, context)), \
            hooked(mlp, "1", forward=lambda *args: None,
                   forward_pre=lambda name, module, inputs, extra=None: None):
        mlp(x)
    assert recorder.names == ["0", "2"] and context == ["4"]
    assert hook_count(mlp) == 0


def test_forward_pre_with_kwargs_sees_and_replaces_keyword_arguments():
    class Block(nn.Module):
        def forward(self, x, *, scale=1.0):
            return x * scale

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = Block()

        def forward(self, x):
            return self.block(hidden_states := x, scale=2.0) + 0 * hidden_states

    model = Outer()
    seen = []

    def rescale(name, module, args, kwargs):
        seen.append((name, kwargs["scale"]))
        return args, {**kwargs, "scale": 3.0}

    x = torch.ones(2)
    with HookGroup() as group:
        group.forward_pre(model, "block", rescale, with_kwargs=True)
        assert torch.equal(model(x), 3 * x)
    assert seen == [("block", 2.0)]
    assert torch.equal(model(x), 2 * x)
