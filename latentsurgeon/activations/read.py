"""Reading layer activations the way every library method does: :func:`layer_outputs`.

Every internal activation pass (the store, probes, CAV/TCAV activation sets, steering fits,
correction fits) reads layers through :class:`LayerReader`, which guarantees:

* **the true output**: each layer's output is pooled (or copied) the moment it is produced, so an
  in-place op later in the model (``ReLU(inplace=True)``, a functional ``out += x``) cannot
  change what is read;
* **early exit** (``stop_early=True``, the default): the forward pass ends once every requested
  layer has produced its output (:mod:`latentsurgeon.hooks.stop`); the values are bit-identical to
  a whole pass. Pass ``stop_early=False`` when later layers have side effects you need;
* **no trace**: eval mode and no gradients during the pass; the model's hooks, modes and flags are
  as before afterwards, also when a pass fails or stops;
* **the model's device and dtype**: inputs go to the model's device, floating inputs are cast to
  the model's floating dtype (fp16/bf16 models read fp32 data); integer inputs to a model that
  wants floats get an error saying so; a model on the ``meta`` device is refused;
* **clear failures**: a layer that never runs is named together with the layers that did.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from latentsurgeon.activations.batching import (
    DataLike,
    analysis_device,
    batch_inputs,
    check_batch_size,
    iter_batches,
    model_device,
    n_batches,
    to_device,
)
from latentsurgeon.activations.pooling import check_pooling, pool
from latentsurgeon.errors import (
    InvalidParameterError,
    LatentSurgeonError,
    LayerNotFoundError,
    NonFiniteError,
)
from latentsurgeon.hooks import HookGroup, preserve_model_state, primary_tensor, resolve_layers
from latentsurgeon.hooks.resolve import LayerSelector
from latentsurgeon.hooks.stop import ForwardStopper

__all__ = ["LayerReader", "layer_outputs", "nonfinite_rows"]

ForwardFn = Callable[[nn.Module, Any], Any]
Pooling = str | Mapping[str, str] | None


def resolve_poolings(names: Sequence[str], pooling: Pooling) -> dict[str, str]:
    """``{layer: pooling mode}``; a mapping naming layers that are not read is refused."""
    if pooling is None or isinstance(pooling, str):
        mode = check_pooling("none" if pooling is None else pooling)
        return dict.fromkeys(names, mode)
    if not isinstance(pooling, Mapping):
        raise InvalidParameterError(
            "pooling must be None, one of 'max', 'mean', 'flatten', 'none', or a dict "
            f"{{layer: mode}}; got {pooling!r}.")
    unknown = sorted(set(pooling) - set(names))
    if unknown:  # a typo would silently read that layer unpooled
        raise InvalidParameterError(
            f"pooling names layers that are not read: {unknown}; the layers are {list(names)}.")
    return {n: check_pooling(pooling.get(n, "none")) for n in names}


def floating_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating parameter (or buffer); None if it has none."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def cast_floating(inputs: Any, dtype: torch.dtype | None) -> Any:
    """``inputs`` with every floating tensor cast to ``dtype`` (integer tensors untouched)."""
    if dtype is None:
        return inputs
    if isinstance(inputs, torch.Tensor):
        return inputs.to(dtype) if inputs.is_floating_point() and inputs.dtype != dtype else inputs
    if isinstance(inputs, Mapping):
        return {k: cast_floating(v, dtype) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(cast_floating(v, dtype) for v in inputs)
    return inputs


def _tensors(inputs: Any) -> list[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    if isinstance(inputs, Mapping):
        return [t for v in inputs.values() for t in _tensors(v)]
    if isinstance(inputs, (tuple, list)):
        return [t for v in inputs for t in _tensors(v)]
    return []


def nonfinite_rows(value: torch.Tensor) -> list[int]:
    """Indices of the rows (first dimension) of ``value`` holding NaN or Inf."""
    if not value.is_floating_point() or value.numel() == 0:
        return []
    finite = torch.isfinite(value.reshape(len(value), -1)).all(dim=1)
    if bool(finite.all()):
        return []
    return torch.nonzero(~finite).flatten().tolist()


def nonfinite_error(layer: str, rows: Sequence[int], *, hint: str = "") -> NonFiniteError:
    shown = ", ".join(str(r) for r in list(rows)[:10]) + (" ..." if len(rows) > 10 else "")
    return NonFiniteError(
        f"Layer {layer!r} produced NaN or Inf activations for {len(rows)} samples (rows {shown});"
        f" NaN or Inf is an error, never a result. Check those inputs and the model (an fp16 "
        f"overflow, a division by zero, a diverged training).{hint}")


def _dtype_problem(exc: BaseException, inputs: Any, dtype: torch.dtype | None) -> str | None:
    """A sentence explaining ``exc`` when it comes from integer inputs to a floating model."""
    integer = [t.dtype for t in _tensors(inputs) if not (t.is_floating_point() or t.is_complex())]
    text = str(exc).lower()
    # PyTorch's words for an integer tensor meeting float weights (conv, linear, norms)
    mismatch = ("should be the same", "must have the same dtype", "expected scalar type",
                "not implemented for 'long'", "not implemented for 'int'",
                "not implemented for 'byte'", "not implemented for 'short'",
                "not implemented for 'char'", "not implemented for 'bool'")
    if not integer or dtype is None or not any(k in text for k in mismatch):
        return None
    return (f"data: the model computes in {dtype} but its inputs are {integer[0]} tensors, which "
            "it cannot take. Pass floating-point inputs (images as float, e.g. "
            "`images.float() / 255`), or a forward_fn that converts them; integer inputs are for "
            "models that embed them (token ids).")


class LayerReader:
    """Reads the selected layers of ``model`` batch by batch (see the module doc).

    Args:
        model: the network.
        layers: layer selector.
        pooling: ``None``/``"none"`` (as is), ``"max"``, ``"mean"``, ``"flatten"``, or a dict per
            layer.
        stop_early: end each pass after the last requested layer (default).
        forward_fn: ``forward_fn(model, inputs)`` instead of the default call (``model(**inputs)``
            for a dict, else ``model(inputs)``).
        device: must be None or the model's device (analysis never moves the model).

    Use::

        with LayerReader(model, ["features.3"], pooling="max") as reader:
            for batch in batches:
                values = reader.read(batch)   # {name: pooled (N, ...) tensor on the model's device}

    Raises:
        InvalidParameterError: a model on the ``meta`` device; a bad pooling.
        DeviceMismatchError: ``device`` is not the model's.
    """

    def __init__(self, model: nn.Module, layers: LayerSelector, *, pooling: Pooling = None,
                 stop_early: bool = True, forward_fn: ForwardFn | None = None,
                 device: str | torch.device | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidParameterError(
                f"model must be a torch.nn.Module; got {type(model).__name__}.")
        if forward_fn is not None and not callable(forward_fn):
            raise InvalidParameterError(
                f"forward_fn must be a function forward_fn(model, inputs); got {forward_fn!r}.")
        self.model = model
        self.names = list(resolve_layers(model, layers))
        self.poolings = resolve_poolings(self.names, pooling)
        home = model_device(model)
        if home is not None and home.type == "meta":
            raise InvalidParameterError(
                "model: its weights are on the 'meta' device (shapes without values), so it "
                "cannot compute activations. Materialise it first, e.g. "
                "model.to_empty(device='cpu') then model.load_state_dict(...).")
        self.device = analysis_device(model, device)
        self.dtype = floating_dtype(model)
        self.forward_fn = forward_fn
        self.stopper = ForwardStopper(model, self.names, enabled=stop_early)
        self._captured: dict[str, torch.Tensor] = {}
        self._stack: ExitStack | None = None

    # -- context --------------------------------------------------------------------------------
    def __enter__(self) -> LayerReader:
        stack = ExitStack()
        try:
            stack.enter_context(preserve_model_state(self.model))
            group = stack.enter_context(HookGroup())
            stack.enter_context(torch.no_grad())
            self.model.eval()
            group.forward(self.model, self.names, self._record)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def _record(self, name: str, module: nn.Module, args: tuple, output: Any) -> None:
        tensor = primary_tensor(output).detach()
        completes = self.stopper.count(name)
        value = pool(tensor, self.poolings[name])
        # Pooling made new memory, or nothing runs after this call: no copy needed. Otherwise a
        # later in-place op could still change the output, so keep a copy of it now.
        if not completes and value.untyped_storage().data_ptr() == \
                tensor.untyped_storage().data_ptr():
            value = value.clone()
        self._captured[name] = value  # a layer that runs twice: its last call, as in capture
        if completes:
            self.stopper.stop()

    # -- one batch ---------------------------------------------------------------------------------
    def _call(self, inputs: Any) -> None:
        if self.forward_fn is not None:
            self.stopper.run(self.forward_fn, self.model, inputs)
        elif isinstance(inputs, Mapping):
            self.stopper.run(self.model, **inputs)
        else:
            self.stopper.run(self.model, inputs)

    def read(self, inputs: Any) -> dict[str, torch.Tensor]:
        """The pooled outputs of the layers for one batch of model inputs: ``{name: (N, ...)}``
        on the model's device, in the model's order.

        Raises:
            LayerNotFoundError: a layer did not run (the message lists the layers that did).
            InvalidParameterError: integer inputs to a model that computes in floats.
        """
        if self._stack is None:
            raise LatentSurgeonError("LayerReader.read() works inside `with LayerReader(...)`.")
        self._captured.clear()
        prepared = to_device(cast_floating(inputs, self.dtype), self.device)
        try:
            self._call(prepared)
        except RuntimeError as exc:
            problem = _dtype_problem(exc, prepared, self.dtype)
            if problem is not None:
                raise InvalidParameterError(f"{problem} ({exc})") from exc
            raise
        missing = [n for n in self.names if n not in self._captured]
        if missing:
            raise self._not_run(missing, prepared)
        values = {n: self._captured[n] for n in self.names}
        self._captured.clear()
        return values

    def _not_run(self, missing: list[str], inputs: Any) -> LayerNotFoundError:
        """Name the layers that did not run, and list those that did (one more, whole pass)."""
        order: list[str] = []

        def seen(name: str, module: nn.Module, args: tuple) -> None:
            if name not in order:
                order.append(name)

        try:
            with HookGroup() as group:
                group.forward_pre(self.model, "*", seen)
                if self.forward_fn is not None:
                    self.forward_fn(self.model, inputs)
                elif isinstance(inputs, Mapping):
                    self.model(**inputs)
                else:
                    self.model(inputs)
        except (LatentSurgeonError, RuntimeError):
            pass
        shown = ", ".join(order[:40]) + (f" ... ({len(order)} in all)" if len(order) > 40 else "")
        return LayerNotFoundError(
            f"Layer{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)} did "
            f"not run in the model's forward pass (the forward never calls "
            f"{'them' if len(missing) > 1 else 'it'}, or not for these inputs). The layers that "
            f"ran, in call order: {shown or 'none'}.")


def layer_outputs(
    model: nn.Module,
    data: DataLike,
    layers: LayerSelector,
    *,
    pooling: Pooling = None,
    batch_size: int | None = 64,
    device: str | torch.device | None = None,
    forward_fn: ForwardFn | None = None,
    stop_early: bool = True,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """The outputs of ``layers`` for every sample of ``data``, read with early exit.

    Args:
        model: the network (run in eval mode without gradients; its state is restored).
        data: a tensor ``(N, ...)``, a tuple ``(inputs, labels, ...)``, a dict of tensors, a
            split, a Dataset or a DataLoader (the model input is a batch's first element).
        layers: layer selector (names, globs, ``path:`` globs, ``re:`` regexes, classes, Select).
        pooling: ``None`` (as is), ``"max"``, ``"mean"``, ``"flatten"`` or a dict per layer;
            applied per batch, the moment the layer produces its output.
        batch_size: samples per forward pass (``None``: in-memory data in one pass).
        device: None or the model's device.
        forward_fn: ``forward_fn(model, inputs)`` instead of ``model(inputs)`` /
            ``model(**inputs)``.
        stop_early: end each pass once every requested layer has produced its output (default);
            ``False`` runs the whole model (needed when later layers have side effects you
            want: BatchNorm statistics in train mode, caches).
        progress: show a progress bar over batches.

    Returns:
        ``{name: tensor (N, ...)}`` on the CPU, in the model's layer order, in the model's dtype.

    Raises:
        NonFiniteError: a layer produced NaN or Inf (the message names the layer and the rows).
        LayerNotFoundError: a layer did not run (the message lists the layers that did).
        InvalidParameterError: bad ``batch_size``/``pooling``/``forward_fn``, a ``meta`` model,
            integer inputs to a floating model.
    """
    check_batch_size(batch_size, allow_none=True)
    parts: dict[str, list[torch.Tensor]] = {}
    offset = 0
    with LayerReader(model, layers, pooling=pooling, stop_early=stop_early,
                     forward_fn=forward_fn, device=device) as reader:
        parts = {n: [] for n in reader.names}
        bar = tqdm(iter_batches(data, batch_size), total=n_batches(data, batch_size),
                   desc="reading activations", unit="batch", leave=False,
                   disable=None if progress else True)
        for batch in bar:
            values = reader.read(batch_inputs(batch))
            for name, value in values.items():
                rows = nonfinite_rows(value)
                if rows:
                    raise nonfinite_error(name, [offset + r for r in rows])
                parts[name].append(value.cpu())
            offset += len(next(iter(values.values())))
        bar.close()
    if offset == 0:
        raise LatentSurgeonError("layer_outputs: data holds no samples.")
    return {name: torch.cat(chunks) for name, chunks in parts.items()}
