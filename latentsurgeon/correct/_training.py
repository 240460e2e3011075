"""The fine-tuning machinery shared by A-ClArC, RR-ClArC and RRR.

Which parameters train, the optimiser, seeding, weight restoration on failure, BatchNorm handling
and the epoch loop with its progress bar live here, so each correction only defines its loss.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from latentsurgeon.correct._data import index_batches
from latentsurgeon.errors import LatentSurgeonError
from latentsurgeon.hooks import HookGroup, get_layer, preserve_model_state

logger = logging.getLogger(__name__)

Trainable = str | Sequence[str]
OptimizerSpec = str | Callable[[list[nn.Parameter]], torch.optim.Optimizer]
OPTIMIZERS = ("adam", "adamw", "sgd")


def parameters_after(model: nn.Module, layer: str, sample: Any) -> list[tuple[str, nn.Parameter]]:
    """Parameters of the modules that run *after* ``layer`` in one forward pass of ``sample``.

    Execution order is recorded with pre-forward hooks on every submodule: a module counts as
    "after" when every call of it starts after ``layer``'s forward has returned, so containers
    holding the layer and modules shared with earlier parts of the network are excluded. Parameters
    held directly by the root module are never included (their use cannot be ordered).
    """
    get_layer(model, layer)
    events: list[tuple[str, str]] = []

    def started(name: str, module: nn.Module, inputs: tuple) -> None:
        events.append(("start", name))

    def ended(name: str, module: nn.Module, inputs: tuple, output: Any) -> None:
        events.append(("end", name))

    with preserve_model_state(model), torch.no_grad(), HookGroup() as group:
        model.eval()
        group.forward_pre(model, "re:.*", started)
        group.forward(model, layer, ended)
        model(sample)
    ends = [i for i, (kind, name) in enumerate(events) if kind == "end"]
    if not ends:
        raise LatentSurgeonError(f"Layer {layer!r} did not run during a forward pass of the "
                                 "model, so nothing can be ordered after it.")
    cut = ends[-1]
    before = {name for i, (kind, name) in enumerate(events) if kind == "start" and i <= cut}
    after: list[str] = []
    for i, (kind, name) in enumerate(events):
        if kind == "start" and i > cut and name not in before and name not in after:
            after.append(name)
    modules = dict(model.named_modules())
    early = {id(p) for name in before for p in modules[name].parameters(recurse=False)}
    chosen: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    for name in after:
        for pname, param in modules[name].named_parameters(recurse=False):
            if id(param) not in early and id(param) not in seen:
                seen.add(id(param))
                chosen.append((f"{name}.{pname}", param))
    return chosen


def select_parameters(model: nn.Module, layer: str, trainable: Trainable, sample: Any
                      ) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs to fine-tune.

    Args:
        trainable: ``"above"`` (parameters of modules executed after ``layer``, see
            :func:`parameters_after`), ``"all"``, or a list of glob patterns over
            ``model.named_parameters()`` names (``["classifier.*"]``).
    """
    if isinstance(trainable, str) and trainable == "above":
        chosen = parameters_after(model, layer, sample)
        if not chosen:
            raise LatentSurgeonError(
                f"No parameters run after layer {layer!r}; choose an earlier layer or pass "
                "trainable='all' or a list of parameter-name globs.")
        return chosen
    named = list(model.named_parameters())
    if isinstance(trainable, str) and trainable == "all":
        return named
    if isinstance(trainable, str):
        raise LatentSurgeonError(
            f"trainable must be 'above', 'all' or a list of parameter-name globs; got "
            f"{trainable!r} (wrap a single glob in a list).")
    patterns = list(trainable)
    chosen = [(n, p) for n, p in named if any(fnmatch.fnmatchcase(n, g) for g in patterns)]
    if not chosen:
        names = ", ".join(n for n, _ in named[:10])
        raise LatentSurgeonError(
            f"The globs {patterns} match no parameter; parameter names look like: {names} ...")
    return chosen


def build_optimizer(spec: OptimizerSpec, params: list[nn.Parameter], lr: float
                    ) -> torch.optim.Optimizer:
    """``"adam"``, ``"adamw"``, ``"sgd"`` (momentum 0.9) at ``lr``, or ``spec(params)``."""
    if callable(spec):
        return spec(params)
    if spec == "adam":
        return torch.optim.Adam(params, lr=lr)
    if spec == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    if spec == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    raise LatentSurgeonError(
        f"Unknown optimizer {spec!r}; expected one of {OPTIMIZERS} or a callable params -> "
        "torch.optim.Optimizer.")


@contextmanager
def restore_weights_on_error(model: nn.Module) -> Iterator[None]:
    """Snapshot parameters and buffers; copy them back only if the block raises."""
    saved = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    try:
        yield
    except BaseException:
        with torch.no_grad():
            current = model.state_dict(keep_vars=True)
            for key, value in saved.items():
                current[key].copy_(value)
        logger.warning("fine-tuning failed; the model's weights were restored")
        raise


def _freeze_batchnorm(model: nn.Module) -> int:
    # Batch statistics couple the samples of a batch: gradients of the batch sum would then not be
    # per-sample gradients. Running statistics keep every sample independent.
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            count += 1
    return count


def check_epochs(epochs: int, batch_size: int, lr: float) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise LatentSurgeonError(f"epochs must be an int >= 0, got {epochs!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise LatentSurgeonError(f"batch_size must be an int >= 1, got {batch_size!r}.")
    if not lr > 0:
        raise LatentSurgeonError(f"lr must be > 0, got {lr!r}.")


def fine_tune(
    model: nn.Module,
    n_samples: int,
    step: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    *,
    params: list[tuple[str, nn.Parameter]],
    epochs: int,
    lr: float,
    optimizer: OptimizerSpec,
    batch_size: int,
    seed: int | None,
    progress: bool,
    desc: str,
    setup: Callable[[], Any] | None = None,
) -> dict[str, list[float]]:
    """Train ``params`` of ``model`` in place with the loss ``step(batch_indices)["loss"]``.

    Only ``params`` require grad during training; the model runs in train mode except BatchNorm
    layers (eval mode, see :func:`_freeze_batchnorm`). Afterwards hooks and ``requires_grad``
    flags are as before, the model is in eval mode, and if anything raised the weights are
    restored. ``seed`` drives the batch order and torch's global RNG (dropout) inside the call
    only. ``setup()`` runs once inside the guarded block (e.g. to register hooks).

    Returns:
        Per-epoch means (weighted by batch size) of every scalar ``step`` returns.
    """
    device = next((p.device for _, p in params), torch.device("cpu"))
    devices = [device.index if device.index is not None else 0] if device.type == "cuda" else []
    history: dict[str, list[float]] = {}
    with preserve_model_state(model), restore_weights_on_error(model), \
            torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed if seed is not None else
                                                  int(torch.randint(0, 2**31, ()).item()))
        for param in model.parameters():
            param.requires_grad_(False)
        for _, param in params:
            param.requires_grad_(True)
        model.train()
        if _freeze_batchnorm(model):
            logger.info("%s: BatchNorm layers run in eval mode (frozen statistics)", desc)
        opt = build_optimizer(optimizer, [p for _, p in params], lr)
        if setup is not None:
            setup()
        bar = tqdm(range(epochs), desc=desc, disable=True if not progress else None, leave=False)
        for epoch in bar:
            sums: dict[str, float] = {}
            for idx in index_batches(n_samples, batch_size, generator):
                opt.zero_grad(set_to_none=True)
                out = step(idx)
                out["loss"].backward()
                opt.step()
                for key, value in out.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach()) * len(idx)
            for key, value in sums.items():
                history.setdefault(key, []).append(value / n_samples)
            logger.debug("%s epoch %d: %s", desc, epoch + 1,
                         {k: v[-1] for k, v in history.items()})
            bar.set_postfix(loss=f"{history['loss'][-1]:.4f}")
    model.eval()
    return history
