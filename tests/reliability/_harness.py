"""The bad-input harness: a call must raise our exception, with a message that names the argument,
what was expected and what was given, and must leave everything as it found it: the model's hooks,
``training`` and ``requires_grad`` flags, parameter and buffer values and identities, and every
pre-existing store byte-identical and still openable."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from latentsurgeon.errors import LatentSurgeonError
from latentsurgeon.hooks.state import HOOK_TABLES


@dataclass
class ModelState:
    hooks: list[dict[str, list[int]]]
    training: list[bool]
    grad_flags: list[bool]
    tensors: dict[str, torch.Tensor]
    identities: dict[str, int]


def model_state(model: nn.Module) -> ModelState:
    modules = list(model.modules())
    return ModelState(
        hooks=[{t: sorted(getattr(m, t, {}).keys()) for t in HOOK_TABLES} for m in modules],
        training=[m.training for m in modules],
        grad_flags=[p.requires_grad for p in model.parameters()],
        tensors={k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        identities={k: id(v) for k, v in model.state_dict(keep_vars=True).items()},
    )


def assert_same_state(model: nn.Module, before: ModelState) -> None:
    after = model_state(model)
    assert after.hooks == before.hooks, "hooks were left behind or removed"
    assert after.training == before.training, "training flags changed"
    assert after.grad_flags == before.grad_flags, "requires_grad flags changed"
    assert after.identities == before.identities, "parameters or buffers were rebound"
    for key, value in before.tensors.items():
        assert torch.equal(after.tensors[key], value), f"{key} changed"


def tree_digest(path: Path) -> dict[str, str]:
    """``{relative file: blake2b}`` of every file under ``path``."""
    return {str(f.relative_to(path)): hashlib.blake2b(f.read_bytes(), digest_size=16).hexdigest()
            for f in sorted(Path(path).rglob("*")) if f.is_file()}


@dataclass
class Case:
    """One bad input: ``call()`` must raise ``error`` with every string of ``mentions`` in the
    message (case-insensitive), leaving ``models`` and ``stores`` as they were."""

    name: str
    call: Callable[[], Any]
    error: type[BaseException] = LatentSurgeonError
    mentions: Sequence[str] = ()
    models: Iterable[nn.Module] = field(default_factory=tuple)
    stores: Iterable[Path] = field(default_factory=tuple)


def check(case: Case) -> None:
    from latentsurgeon.activations import ActivationStore

    models = list(case.models)
    stores = list(case.stores)
    states = [model_state(m) for m in models]
    digests = [tree_digest(s) for s in stores]
    with pytest.raises(case.error) as info:
        case.call()
    assert isinstance(info.value, LatentSurgeonError), (
        f"{case.name}: raised {type(info.value).__name__}, not one of latentsurgeon's errors")
    message = str(info.value).lower()
    for text in case.mentions:
        assert text.lower() in message, f"{case.name}: {text!r} not in {str(info.value)!r}"
    for model, state in zip(models, states, strict=True):
        assert_same_state(model, state)
    for store, digest in zip(stores, digests, strict=True):
        assert tree_digest(store) == digest, f"{case.name}: the store at {store} changed"
        ActivationStore(store)  # still opens and verifies
