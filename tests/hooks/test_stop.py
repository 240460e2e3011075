"""ForwardStopper: learned call counts, stopping after the last call, only its own stop caught."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from latentsurgeon.hooks import ForwardStopper, HookGroup, hook_count
from latentsurgeon.hooks.stop import _StopForward, forget_calls


class Counter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


class Twice(nn.Module):
    """``shared`` runs twice per pass; ``later`` runs after its second call."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(3, 3)
        self.between = Counter()
        self.later = Counter()

    def forward(self, x):
        h = self.between(self.shared(x))
        return self.later(self.shared(h))


def watch(model, stopper, names, seen):
    def hook(name, module, args, output):
        seen.append(name)
        if stopper.count(name):
            stopper.stop()

    group = HookGroup()
    group.forward(model, names, hook)
    return group


def test_first_pass_learns_the_counts_later_passes_stop_after_the_last_call():
    model = Twice()
    stopper = ForwardStopper(model, ["shared"])
    seen: list[str] = []
    x = torch.randn(2, 3)
    with watch(model, stopper, ["shared"], seen):
        out = stopper.run(model, x)
        assert out is not None and not stopper.stopped
        assert stopper.calls == {"shared": 2} and model.later.calls == 1
        assert stopper.run(model, x) is None and stopper.stopped
        # stopped after the *second* call: `between` ran, `later` did not
        assert seen == ["shared"] * 4 and model.between.calls == 2 and model.later.calls == 1
    assert hook_count(model) == 0
    # the counts are remembered for the model: a new stopper stops on its first pass
    again = ForwardStopper(model, ["shared"])
    with watch(model, again, ["shared"], []):
        assert again.run(model, x) is None and again.stopped
    assert model.later.calls == 1 and hook_count(model) == 0


def test_learned_counts_depend_on_the_layers_and_the_mode_and_can_be_forgotten():
    model = Twice()
    x = torch.randn(2, 3)
    for names in (["shared"], ["shared", "between"]):
        stopper = ForwardStopper(model, names)
        with watch(model, stopper, names, []):
            assert stopper.run(model, x) is not None  # a new layer set learns first
            assert stopper.run(model, x) is None
    model.eval()
    stopper = ForwardStopper(model, ["shared"])
    with watch(model, stopper, ["shared"], []):
        assert stopper.run(model, x) is not None  # another mode learns again
        forget_calls(model)
        assert stopper.run(model, x) is not None
        assert stopper.run(model, x) is None


def test_a_custom_forward_learns_within_the_stopper_only():
    model = Twice()
    x = torch.randn(2, 3)

    def forward(m, inputs):
        return m(inputs)

    stopper = ForwardStopper(model, ["shared"])
    with watch(model, stopper, ["shared"], []):
        assert stopper.run(forward, model, x) is not None
        assert stopper.run(forward, model, x) is None
    fresh = ForwardStopper(model, ["shared"])
    with watch(model, fresh, ["shared"], []):
        assert fresh.run(forward, model, x) is not None


def test_disabled_stopper_never_stops():
    model = Twice()
    stopper = ForwardStopper(model, ["shared"], enabled=False)
    with watch(model, stopper, ["shared"], []):
        for _ in range(3):
            assert stopper.run(model, torch.randn(1, 3)) is not None
    assert model.later.calls == 3


def test_only_its_own_stop_is_caught():
    model = Twice()
    outer = ForwardStopper(model, ["shared"])
    inner = ForwardStopper(model, ["shared"])
    x = torch.randn(2, 3)
    with pytest.raises(_StopForward):
        inner.run(outer.stop)
    assert outer.run(lambda: inner.run(outer.stop)) is None and outer.stopped
    with pytest.raises(ValueError, match="real"):
        outer.run(lambda: (_ for _ in ()).throw(ValueError("real error")))
    assert isinstance(_StopForward(outer), Exception)
    del x
