"""The bad-input corpus of ``latentsurgeon.compat.tdhook``: every public name, given a bad input,
raises our exception with a message naming the argument, what was expected and what was given,
and leaves the model as it found it (``_harness.check``): no hooks left behind after a failed
context or call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from latentsurgeon.compat.tdhook import (
    ActivationAddition,
    ActivationCaching,
    ActivationPatching,
    HookedModule,
    HookingContext,
    HookingContextFactory,
    MeanDifferenceClassifier,
    Probe,
    ProbeManager,
    Probing,
    SteeringVectors,
    key_pattern_selector,
)
from latentsurgeon.errors import (
    InvalidParameterError,
    LatentSurgeonError,
    LayerNotFoundError,
)

from ._harness import Case, check

torch.manual_seed(0)
MODEL = nn.Sequential()
MODEL.add_module("linear1", nn.Linear(4, 6))
MODEL.add_module("activation", nn.ReLU())
MODEL.add_module("linear2", nn.Linear(6, 3))
X = torch.randn(5, 4)


class _Probe:
    def step(self, data: Any, **kwargs: Any) -> None:
        return None


def _in_context(method: HookingContextFactory, data: Any) -> Callable[[], Any]:
    """Enter ``method``'s context on MODEL, call the hooked module with ``data``, leave."""
    def call() -> Any:
        with method.prepare(MODEL) as hooked:
            return hooked(data)
    return call


def _after_exit() -> None:
    with ActivationCaching("linear1$").prepare(MODEL) as hooked:
        pass
    hooked(X)


def _enter_twice() -> None:
    context = ActivationCaching("linear1$").prepare(MODEL)
    with context:
        context.__enter__()


def _restore_managed() -> None:
    with ActivationCaching("linear1$").prepare(MODEL) as hooked:
        assert isinstance(hooked, HookedModule) and isinstance(hooked.hooking_context,
                                                                 HookingContext)
        hooked.restore()


def _manager_twice() -> None:
    manager = ProbeManager(MeanDifferenceClassifier, {}, lambda p, labels: {})
    manager.probe_factory("linear1", "fwd")
    manager.probe_factory("linear1", "fwd")


M = [MODEL]
CASES = [
    Case("key_pattern_selector: not a string", lambda: key_pattern_selector(3),
         InvalidParameterError, ["key_pattern", "regular expression", "int"]),
    Case("key_pattern_selector: an invalid regex", lambda: key_pattern_selector("linear("),
         InvalidParameterError, ["key_pattern", "valid regular expression", "linear("]),
    Case("ActivationCaching: a key_pattern that is a list", lambda: ActivationCaching(["a"]),
         InvalidParameterError, ["key_pattern", "list"]),
    Case("ActivationCaching: an unknown direction",
         lambda: ActivationCaching("linear", directions=["forward"]), InvalidParameterError,
         ["directions", "'fwd'", "'forward'"]),
    Case("ActivationCaching: a callback that is not callable",
         lambda: ActivationCaching("linear", callback="keep"), InvalidParameterError,
         ["callback", "function", "'keep'"]),
    Case("ActivationCaching: a cache that is a list",
         lambda: ActivationCaching("linear", cache=[]), InvalidParameterError,
         ["cache", "TensorDict or a dict", "list"]),
    Case("ActivationCaching: a pattern that matches nothing",
         _in_context(ActivationCaching("conv"), X), LayerNotFoundError,
         ["key_pattern", "'conv'", "matches no module"], M),
    Case("ActivationCaching: relative=False with a pattern for relative names",
         _in_context(ActivationCaching("linear1", relative=False), X), LayerNotFoundError,
         ["relative=False", "td_module.module"], M),
    Case("ActivationCaching: a record without the input key",
         _in_context(ActivationCaching("linear1$"), {"x": X}), InvalidParameterError,
         ["key 'input'", "['x']"], M),
    Case("HookingContextFactory.prepare: not a module",
         lambda: HookingContextFactory().prepare("model.pt"), InvalidParameterError,
         ["module", "nn.Module", "str"]),
    Case("prepare: two positional in_keys",
         lambda: ActivationCaching("linear1").prepare(MODEL, in_keys=["a", "b"]),
         InvalidParameterError, ["in_keys", "dict", "['a', 'b']"], M),
    Case("prepare: out_keys that are not a list",
         lambda: ActivationCaching("linear1").prepare(MODEL, out_keys=[0]),
         InvalidParameterError, ["out_keys", "list of keys", "[0]"], M),
    Case("HookedModule: called after its context was left", _after_exit, LatentSurgeonError,
         ["context", "left", "with"], M),
    Case("HookingContext: entered twice", _enter_twice, LatentSurgeonError, ["twice"], M),
    Case("HookedModule.restore: inside a with block", _restore_managed, LatentSurgeonError,
         ["restore()", "return_context=False"], M),
    Case("ActivationPatching: one name instead of a list",
         lambda: ActivationPatching("linear2"), InvalidParameterError,
         ["modules_to_patch", "list of module names", "'linear2'"]),
    Case("ActivationPatching: a patch_fn that is not callable",
         lambda: ActivationPatching(["linear2"], patch_fn=0.5), InvalidParameterError,
         ["patch_fn", "function", "0.5"]),
    Case("ActivationPatching: a cache_callback",
         lambda: ActivationPatching(["linear2"], cache_callback=lambda **kw: None),
         InvalidParameterError, ["cache_callback", "None", "patch_fn"]),
    Case("ActivationPatching: an unknown module",
         _in_context(ActivationPatching(["linear9"]), {"input": X, "patched": {"input": X}}),
         LayerNotFoundError, ["modules_to_patch", "'linear9'", "linear1"], M),
    Case("ActivationPatching: a record without the run to patch",
         _in_context(ActivationPatching(["linear2"]), {"input": X}), InvalidParameterError,
         ["('patched', 'input')", "['input']"], M),
    Case("ActivationPatching: one plain tensor",
         _in_context(ActivationPatching(["linear2"]), X), InvalidParameterError,
         ["hooked(clean, patched)", "Tensor"], M),
    Case("SteeringVectors: no steer_fn", lambda: SteeringVectors(["linear2"], None),
         InvalidParameterError, ["steer_fn", "function", "None"]),
    Case("SteeringVectors: an empty list", lambda: SteeringVectors([], lambda **kw: None),
         InvalidParameterError, ["modules_to_steer", "non-empty", "[]"]),
    Case("SteeringVectors: a module name that is an int",
         _in_context(SteeringVectors([0], lambda **kw: None), X), InvalidParameterError,
         ["modules_to_steer", "strings", "int"], M),
    Case("ActivationAddition: a cache_callback",
         lambda: ActivationAddition(["linear1"], cache_callback=print), InvalidParameterError,
         ["cache_callback", "None"]),
    Case("ActivationAddition: one plain tensor",
         _in_context(ActivationAddition(["linear1"]), X), InvalidParameterError,
         ["'positive'", "hooked(positive, negative)", "Tensor"], M),
    Case("ActivationAddition: a record without the negative input",
         _in_context(ActivationAddition(["linear1"]), {"positive": {"input": X}}),
         InvalidParameterError, ["('negative', 'input')", "['positive']"], M),
    Case("Probing: a probe_factory that is not callable",
         lambda: Probing("linear", probe_factory="linear"), InvalidParameterError,
         ["probe_factory", "function", "'linear'"]),
    Case("Probing: additional_keys that are one string",
         lambda: Probing("linear", lambda k, d: _Probe(), additional_keys="labels"),
         InvalidParameterError, ["additional_keys", "list of keys", "'labels'"]),
    Case("Probing: classes_to_hook that are not module classes",
         lambda: Probing("linear", lambda k, d: _Probe(), classes_to_hook=[int]),
         InvalidParameterError, ["classes_to_hook", "nn.Module classes", "int"]),
    Case("Probing: additional_keys with a plain tensor",
         _in_context(Probing("linear", lambda k, d: _Probe(), additional_keys=["labels"]), X),
         InvalidParameterError, ["additional_keys", "['labels']", "Tensor"], M),
    Case("Probing: classes_to_skip that leave nothing",
         _in_context(Probing("linear", lambda k, d: _Probe(), classes_to_skip=[nn.Linear]), X),
         LayerNotFoundError, ["classes_to_skip", "leave none"], M),
    Case("MeanDifferenceClassifier: two-dimensional labels",
         lambda: MeanDifferenceClassifier().fit(np.zeros((4, 2)), np.eye(2)[[0, 0, 1, 1]]),
         InvalidParameterError, ["y", "multiclass", "(4, 2)"]),
    Case("MeanDifferenceClassifier: one class only",
         lambda: MeanDifferenceClassifier().fit(np.zeros((4, 2)), np.ones(4)),
         InvalidParameterError, ["y", "both classes", "[1.0]"]),
    Case("MeanDifferenceClassifier: read before fit",
         lambda: MeanDifferenceClassifier().predict(np.zeros((2, 2))), LatentSurgeonError,
         ["not fitted", "fit"]),
    Case("Probe: an unknown step_type",
         lambda: Probe(object(), lambda p, labels: None).step(X, step_type="train"),
         InvalidParameterError, ["step_type", "'fit' or 'predict'", "'train'"]),
    Case("ProbeManager: the same probe twice", _manager_twice, LatentSurgeonError,
         ["linear1_fwd", "already exists", "allow_overwrite=True"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case) -> None:
    check(case)
