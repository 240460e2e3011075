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

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from latentsurgeon._aliases import moved
from latentsurgeon.activations.access import ForwardFn, ModelAccess
from latentsurgeon.activations.batching import (
    DataLike,
    attention_mask_of,
    batch_inputs,
    check_batch_size,
    iter_batches,
    n_batches,
)
from latentsurgeon.activations.pooling import ALL_POOLINGS, check_pooling, pool
from latentsurgeon.errors import (
    InvalidParameterError,
    LatentSurgeonError,
    LayerNotFoundError,
    NonFiniteError,
)
from latentsurgeon.hooks import HookGroup, preserve_model_state, primary_tensor, resolve_layers
from latentsurgeon.hooks.resolve import LayerSelector, is_layer_selector

__all__ = ["LayerReader", "layer_outputs", "nonfinite_rows"]

Pooling = str | Mapping[str, str] | None


def resolve_poolings(names: Sequence[str], pooling: Pooling) -> dict[str, str]:
    """``{layer: pooling mode}``; a mapping naming layers that are not read is refused."""
    if pooling is None or isinstance(pooling, str):
        mode = check_pooling("none" if pooling is None else pooling)
        return dict.fromkeys(names, mode)
    if not isinstance(pooling, Mapping):
        raise InvalidParameterError(
            f"pooling must be None, one of {', '.join(ALL_POOLINGS)}, 'position:K', or a dict "
            f"{{layer: mode}}; got {pooling!r}.")
    unknown = sorted(set(pooling) - set(names))
    if unknown:  # a typo would silently read that layer unpooled
        raise InvalidParameterError(
            f"pooling names layers that are not read: {unknown}; the layers are {list(names)}.")
    return {n: check_pooling(pooling.get(n, "none")) for n in names}


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


class LayerReader:
    """Reads the selected layers of ``model`` batch by batch (see the module doc).

    Args:
        model: the network, or the :class:`~latentsurgeon.activations.access.ModelAccess` of
            a method (its forward function and device are used).
        layers: layer selector (default with an access: its layers).
        pooling: ``None``/``"none"`` (as is), a mode of
            :mod:`~latentsurgeon.activations.pooling` (``"max"``, ``"mean"``, ``"flatten"``,
            the token modes ``"cls"``, ``"last"``, ``"position:K"``, ``"token_mean"``,
            ``"token_max"``), or a dict per layer. A dict batch's ``attention_mask`` makes
            ``(N, T, D)`` outputs token sequences: ``"mean"`` is then over unmasked tokens.
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

    def __init__(self, model: nn.Module | ModelAccess, layers: LayerSelector | None = None, *,
                 pooling: Pooling = None, stop_early: bool = True,
                 forward_fn: ForwardFn | None = None,
                 device: str | torch.device | None = None) -> None:
        if isinstance(model, ModelAccess):
            access = model
            names = access.layers if layers is None else list(resolve_layers(access.model,
                                                                              layers))
        else:
            access = ModelAccess(model, forward_fn=forward_fn, device=device)
            names = list(resolve_layers(model, layers))
        self.access = access
        self.model = access.model
        self.names = list(names)
        self.poolings = resolve_poolings(self.names, pooling)
        self.stopper = access.stopper(self.names, enabled=stop_early)
        self._captured: dict[str, torch.Tensor] = {}
        self._mask: torch.Tensor | None = None  # the attention mask of the batch being read
        self._stack: ExitStack | None = None

    @property
    def device(self) -> torch.device | None:
        return self.access.device

    @property
    def dtype(self) -> torch.dtype | None:
        return self.access.dtype

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
        value = pool(tensor, self.poolings[name], self._mask)
        # Pooling made new memory, or nothing runs after this call: no copy needed. Otherwise a
        # later in-place op could still change the output, so keep a copy of it now.
        if not completes and value.untyped_storage().data_ptr() == \
                tensor.untyped_storage().data_ptr():
            value = value.clone()
        self._captured[name] = value  # a layer that runs twice: its last call, as in capture
        if completes:
            self.stopper.stop()

    # -- one batch ---------------------------------------------------------------------------------
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
        # A dict batch's attention mask makes (N, T, D) outputs token sequences for pooling.
        self._mask = attention_mask_of(inputs)
        try:
            self.access.run_stopped(self.stopper, inputs)
        finally:
            self._mask = None
        missing = [n for n in self.names if n not in self._captured]
        if missing:
            raise self._not_run(missing, inputs)
        values = {n: self._captured[n] for n in self.names}
        self._captured.clear()
        return values

    def _not_run(self, missing: list[str], inputs: Any) -> LayerNotFoundError:
        """Name the layers that did not run, and list those that did (one more, whole pass)."""
        try:
            order = [name for name, _ in self.access.call_order(inputs, "*", started=True)]
        except (LatentSurgeonError, RuntimeError):
            order = []
        shown = ", ".join(order[:40]) + (f" ... ({len(order)} in all)" if len(order) > 40 else "")
        return LayerNotFoundError(
            f"Layer{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)} did "
            f"not run in the model's forward pass (the forward never calls "
            f"{'them' if len(missing) > 1 else 'it'}, or not for these inputs). The layers that "
            f"ran, in call order: {shown or 'none'}.")


@moved(("model", "data", "layers"), is_old=lambda args: len(args) >= 2
       and not is_layer_selector(args[1]))
def layer_outputs(
    model: nn.Module,
    layers: LayerSelector,
    data: DataLike,
    *,
    pooling: Pooling = None,
    batch_size: int | None = 64,
    device: str | torch.device | None = None,
    forward_fn: ForwardFn | None = None,
    stop_early: bool = True,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """The outputs of ``layers`` for every sample of ``data``, read with early exit.

    The order is the library's (model, layer, data); the earlier ``(model, data, layers)``
    still works, with a ``FutureWarning``.

    Args:
        model: the network (run in eval mode without gradients; its state is restored).
        layers: layer selector (names, globs, ``path:`` globs, ``re:`` regexes, classes, Select).
        data: a tensor ``(N, ...)``, a tuple ``(inputs, labels, ...)``, a dict of tensors, a
            split, a Dataset or a DataLoader (the model input is a batch's first element).
        pooling: ``None`` (as is), a mode of :mod:`~latentsurgeon.activations.pooling` or a
            dict per layer; applied per batch, the moment the layer produces its output (with
            the batch's ``attention_mask`` for dict inputs: ``"mean"`` of ``(N, T, D)`` is then
            over unmasked tokens).
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
