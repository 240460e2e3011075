"""preserve_model_state: training flags, requires_grad flags, hooks and (optionally) weights."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from latentsurgeon.hooks import hook_count, preserve_model_state

HOOK_TABLES = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
               "_backward_pre_hooks")


# small tensor work: one torch thread (tests/_threads.py says why)
pytestmark = pytest.mark.usefixtures("one_thread")


def make_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )


def flags(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def grad_flags(model: nn.Module) -> list[bool]:
    return [p.requires_grad for p in model.parameters()]


def hook_tables(model: nn.Module) -> list[dict]:
    return [{t: list(getattr(m, t, {})) for t in HOOK_TABLES} for m in model.modules()]


@pytest.fixture
def net() -> nn.Sequential:
    return make_net()


def test_hook_count(net):
    assert hook_count(net) == 0
    handles = [
        net[0].register_forward_hook(lambda *a: None),
        net[0].register_forward_hook(lambda *a, **k: None, with_kwargs=True, always_call=True),
        net[1].register_forward_pre_hook(lambda *a: None),
        net[1].register_forward_pre_hook(lambda *a, **k: None, with_kwargs=True),
        net[5].register_full_backward_hook(lambda *a: None),
        net[5].register_full_backward_pre_hook(lambda *a: None),
        net.register_forward_hook(lambda *a: None),
    ]
    assert hook_count(net) == 7  # a kwargs/always-call hook is one hook, not two
    for h in handles:
        h.remove()
    assert hook_count(net) == 0


def test_restores_mixed_training_flags(net):
    net.train()
    net[1].eval()
    net[3].eval()
    before = flags(net)
    assert len(set(before)) == 2  # really mixed
    with preserve_model_state(net) as guarded:
        assert guarded is net
        net.eval()
        net[5].train()
    assert flags(net) == before

    net.eval()
    net[1].train()
    before = flags(net)
    with pytest.raises(RuntimeError):
        with preserve_model_state(net):
            net.train()
            raise RuntimeError
    assert flags(net) == before


def test_restores_requires_grad_flags(net):
    net[0].weight.requires_grad_(False)
    net[1].bias.requires_grad_(False)
    before = grad_flags(net)
    assert len(set(before)) == 2
    with pytest.raises(ValueError):
        with preserve_model_state(net):
            net.requires_grad_(True)
            net[5].weight.requires_grad_(False)
            raise ValueError
    assert grad_flags(net) == before


def test_removes_hooks_added_inside_and_keeps_old_ones(net):
    x = torch.randn(2, 1, 6, 6)
    old_calls, new_calls = [], []
    old = net[0].register_forward_hook(lambda *a: old_calls.append(1))
    old_pre = net[5].register_forward_pre_hook(lambda *a, **k: old_calls.append(2), with_kwargs=True)
    before_tables = hook_tables(net)
    assert hook_count(net) == 2

    with pytest.raises(RuntimeError):
        with preserve_model_state(net):
            net[0].register_forward_hook(lambda *a: new_calls.append(1))
            net[1].register_forward_hook(lambda *a, **k: new_calls.append(2), with_kwargs=True)
            net[1].register_forward_hook(lambda *a: new_calls.append(3), always_call=True)
            net[2].register_forward_pre_hook(lambda *a: new_calls.append(4))
            net[2].register_forward_pre_hook(lambda *a, **k: new_calls.append(5), with_kwargs=True)
            net[5].register_full_backward_hook(lambda *a: new_calls.append(6))
            net[5].register_full_backward_pre_hook(lambda *a: new_calls.append(7))
            net.register_forward_hook(lambda *a: new_calls.append(8))
            assert hook_count(net) == 10
            net(x).sum().backward()
            assert sorted(new_calls) == [1, 2, 3, 4, 5, 6, 7, 8]
            raise RuntimeError

    assert hook_count(net) == 2
    assert hook_tables(net) == before_tables  # no stale kwargs / always-call entries either
    new_calls.clear()
    old_calls.clear()
    net(x).sum().backward()
    assert new_calls == []
    assert old_calls == [1, 2]  # the hooks that were there before still run
    old.remove()
    old_pre.remove()
    assert hook_count(net) == 0


def test_restore_weights_after_failed_optimizer_step(net):
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = list(net.parameters())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    x = torch.randn(8, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    with pytest.raises(RuntimeError, match="diverged"):
        with preserve_model_state(net, restore_weights=True):
            net(x).square().mean().backward()
            optimizer.step()
            assert not torch.equal(net[5].weight, before["5.weight"])  # training did happen
            raise RuntimeError("diverged")
    after = net.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key  # weights and BN running stats / counters
    # The same Parameter objects are kept (an optimizer built before still points at them).
    assert all(a is b for a, b in zip(params, net.parameters(), strict=True))
    assert all(p.requires_grad for p in net.parameters())


def test_without_restore_weights_the_change_stays(net):
    reference = copy.deepcopy(net)
    with preserve_model_state(net):
        with torch.no_grad():
            net[5].weight.add_(1.0)
    assert not torch.equal(net[5].weight, reference[5].weight)


def test_restore_weights_on_success_too(net):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with preserve_model_state(net, restore_weights=True):
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(0)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])


# -- exact restore by identity (zennit's MergeBatchNorm re-attaches the original objects) ----------

def test_a_rebound_parameter_and_buffer_are_reattached(net):
    weight, bias, mean = net[0].weight, net[0].bias, net[1].running_mean
    values = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="fail"):
        with preserve_model_state(net, restore_weights=True):
            net[0].weight = nn.Parameter(torch.zeros_like(weight))   # rebound
            del net[0].bias
            net[0].bias = torch.ones(4)                                 # a plain tensor now
            net[1].running_mean = torch.full((4,), 7.0)                 # buffer rebound
            net[0].register_buffer("extra", torch.zeros(1))             # added
            with torch.no_grad():
                weight.add_(1.0)                                         # the original changed too
            raise RuntimeError("fail")
    assert net[0].weight is weight and net[0].bias is bias and net[1].running_mean is mean
    assert "bias" not in net[0].__dict__ and not hasattr(net[0], "extra")
    assert isinstance(net[0].bias, nn.Parameter)
    for key, value in net.state_dict().items():
        assert torch.equal(value, values[key]), key
    assert list(net.state_dict()) == list(values)
    # the optimizer built before still steers the model's own parameters
    assert optimizer.param_groups[0]["params"][0] is net[0].weight


def test_a_swapped_or_added_child_is_undone(net):
    children = dict(net.named_children())
    head = net[5]
    values = {k: v.clone() for k, v in net.state_dict().items()}
    with preserve_model_state(net, restore_weights=True):
        net[5] = nn.Linear(4 * 6 * 6, 3)       # swapped
        net.add_module("6", nn.Softmax(dim=1))  # added
        net[2] = nn.Identity()
        net[5].train()
    assert dict(net.named_children()) == children and net[5] is head
    assert len(net) == 6
    for key, value in net.state_dict().items():
        assert torch.equal(value, values[key]), key
    x = torch.randn(2, 1, 6, 6)
    net.eval()
    reference = make_net().eval()
    torch.testing.assert_close(net(x), reference(x), rtol=0, atol=0)


def test_a_parametrization_and_a_resized_tensor_are_undone(net):
    from torch.nn.utils import parametrize

    class Doubled(nn.Module):
        def forward(self, w):
            return 2 * w

    linear, weight = net[5], net[5].weight
    values = {k: v.clone() for k, v in net.state_dict().items()}
    with preserve_model_state(net, restore_weights=True):
        parametrize.register_parametrization(linear, "weight", Doubled())
        assert type(linear) is not nn.Linear
        net[0].bias.data = torch.zeros(9)  # resized in place
    assert type(linear) is nn.Linear and linear.weight is weight
    assert not hasattr(linear, "parametrizations")
    assert net[0].bias.shape == (4,)
    for key, value in net.state_dict().items():
        assert torch.equal(value, values[key]), key


def test_without_restore_weights_the_structure_is_left_alone(net):
    with preserve_model_state(net):
        net[5] = nn.Identity()
    assert isinstance(net[5], nn.Identity)  # only hooks, modes and flags are guarded then


def test_only_on_error_keeps_a_block_that_succeeds_and_undoes_one_that_fails():
    import pytest
    import torch
    from torch import nn

    from latentsurgeon.hooks import preserve_model_state

    model = nn.Sequential(nn.Linear(3, 2))
    before = model[0].weight.detach().clone()
    with preserve_model_state(model, restore_weights=True, only_on_error=True):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model.eval()
    assert torch.equal(model[0].weight, before + 1.0) and not model.training  # kept
    trained = model[0].weight.detach().clone()
    with pytest.raises(RuntimeError, match="boom"), \
            preserve_model_state(model, restore_weights=True, only_on_error=True):
        with torch.no_grad():
            model[0].weight.mul_(0.0)
        model[0] = nn.Linear(3, 2)  # a rebuilt layer is undone too
        model.train()
        raise RuntimeError("boom")
    assert torch.equal(model[0].weight, trained) and not model.training
