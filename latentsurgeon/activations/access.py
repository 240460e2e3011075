"""The one way library code reaches into a model: :class:`ModelAccess`.

A method states once what the model is (kronfluence calls this its task): the network, the
layers it works on (resolved once, to their canonical ``named_modules()`` names), where the
logits are in a structured output (``head``), how to call it (``forward_fn``) and, for example
importance, the per-sample loss. Everything it then needs comes from that object, through one
model-call dispatch and one early stop:

* :meth:`ModelAccess.call` - the model's output for a batch: inputs moved to the model's device,
  floating inputs cast to its floating dtype, a dict called as ``model(**inputs)``, or
  ``forward_fn(model, inputs)``; optionally with other weights (``state=``, through
  :func:`torch.func.functional_call`, the model's own parameters untouched);
* :meth:`ModelAccess.logits` / :meth:`ModelAccess.output` - the logits (``head``) or the primary
  output tensor;
* :meth:`ModelAccess.forward_to` - a layer's output *in the autograd graph*, the forward pass
  stopped after the layer (:mod:`latentsurgeon.hooks.stop`);
* layer outputs without gradients, pooled, stopped early:
  ``LayerReader(access, layers, pooling=...)`` (:mod:`latentsurgeon.activations.read`, built on
  this object's call and stop);
* :meth:`ModelAccess.offsets` - gradients *at* a layer: a zero offset that requires grad is added
  to the layer's output, so ``d output / d offset`` is the gradient w.r.t. the layer's output
  (whatever the model does after the layer, in-place ops included, acts on the sum, never on
  the tensor that is differentiated);
* :meth:`ModelAccess.losses` - per-sample losses (reconstruction, cross-entropy with the label or
  with the predicted class, or a user's loss), with any weights.

No method registers its own hooks to read or differentiate a layer, and none calls the model its
own way (``tests/test_architecture.py`` checks the calls).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentsurgeon.activations.batching import analysis_device, batch_inputs, model_device
from latentsurgeon.errors import (
    InvalidParameterError,
    LatentSurgeonError,
    LayerNotFoundError,
    ShapeMismatchError,
)
from latentsurgeon.hooks import (
    HookGroup,
    classification_logits,
    preserve_model_state,
    primary_tensor,
    replace_primary,
    resolve_layer,
    resolve_layers,
    select_logits,
)
from latentsurgeon.hooks.resolve import LayerSelector
from latentsurgeon.hooks.stop import ForwardStopper

__all__ = ["LOSSES", "ForwardFn", "LayerOffsets", "LossSpec", "ModelAccess", "call_model",
           "cast_floating", "check_loss", "floating_dtype"]

ForwardFn = Callable[[nn.Module, Any], Any]
#: The named per-sample losses; a callable ``loss(output, batch) -> scalar`` is the other form.
LOSSES = ("reconstruction", "cross_entropy", "predicted")
LossSpec = str | Callable[[torch.Tensor, Any], torch.Tensor]
State = Mapping[str, torch.Tensor]
#: ``lift(activation, name) -> (offset, change)``: the leaf ``offset`` that requires grad and the
#: ``change`` (built from it) added to the layer's output; default: ``change = offset``, a zero
#: tensor of the activation's shape.
Lift = Callable[[torch.Tensor, str], tuple[torch.Tensor, torch.Tensor]]


# -- the dispatch ----------------------------------------------------------------------------------
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


def _move(inputs: Any, device: torch.device) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, Mapping):
        return {k: _move(v, device) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_move(v, device) for v in inputs)
    return inputs


class _WithForward(nn.Module):
    """``forward_fn(model, inputs)`` as a module, so :func:`torch.func.functional_call` can run
    a custom forward with other weights (the parameters are the model's, under ``model.``)."""

    def __init__(self, model: nn.Module, forward_fn: ForwardFn) -> None:
        super().__init__()
        self.model = model
        self.forward_fn = forward_fn

    def forward(self, inputs: Any) -> Any:
        return self.forward_fn(self.model, inputs)


def call_model(model: nn.Module, inputs: Any, *, forward_fn: ForwardFn | None = None,
               state: State | None = None) -> Any:
    """The one model call: ``forward_fn(model, inputs)``, ``model(**inputs)`` for a dict (a
    tokenizer's output), else ``model(inputs)``; with ``state``, the same call with those weights
    swapped in (:func:`torch.func.functional_call`; the model's own tensors are untouched).

    Inputs are passed as they are: :meth:`ModelAccess.call` moves and casts them first."""
    if state is None:
        if forward_fn is not None:
            return forward_fn(model, inputs)
        if isinstance(inputs, Mapping):
            return model(**inputs)
        return model(inputs)
    if forward_fn is not None:
        wrapper = _WithForward(model, forward_fn)
        return torch.func.functional_call(
            wrapper, {f"model.{k}": v for k, v in state.items()}, (inputs,), strict=False)
    args, kwargs = ((), dict(inputs)) if isinstance(inputs, Mapping) else ((inputs,), {})
    return torch.func.functional_call(model, dict(state), args, kwargs, strict=False)


def _tensors(inputs: Any) -> list[torch.Tensor]:
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    if isinstance(inputs, Mapping):
        return [t for v in inputs.values() for t in _tensors(v)]
    if isinstance(inputs, (tuple, list)):
        return [t for v in inputs for t in _tensors(v)]
    return []


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


#: PyTorch's words for inputs whose shape a layer cannot take (linear, conv, norms, reshapes)
_SHAPE_WORDS = ("shapes cannot be multiplied", "size mismatch", "expected input", "channels, but",
                "must match the size", "dimensional input", "is invalid for input of size",
                "sizes of tensors must match", "expected 4d", "expected 3d", "expected 2d",
                "padded input size")


def _shape_problem(exc: BaseException, inputs: Any) -> str | None:
    """A sentence naming the inputs' shape when ``exc`` says a layer cannot take it."""
    text = str(exc).lower()
    if not any(words in text for words in _SHAPE_WORDS):
        return None
    shapes = ", ".join(str(tuple(t.shape)) for t in _tensors(inputs)) or "?"
    return (f"data: the model cannot take inputs of shape {shapes} (a layer refused them); "
            "pass inputs of the shape the model was built for")


def check_loss(loss: Any, what: str = "loss") -> None:
    """Raise :class:`InvalidParameterError` unless ``loss`` is a named loss or a callable."""
    if not (callable(loss) or loss in LOSSES):
        raise InvalidParameterError(
            f"{what} must be one of {', '.join(map(repr, LOSSES))} or a callable "
            f"loss(output, batch) -> scalar; got {loss!r}.")


def _describe(output: Any) -> str:
    if isinstance(output, torch.Tensor):
        return str(tuple(output.shape))
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        extra = f" (+{len(output) - 1} more)" if len(output) > 1 else ""
        return f"{tuple(output[0].shape)}{extra}"
    return type(output).__name__


# -- gradients at a layer --------------------------------------------------------------------------
def _zero_offset(activation: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    offset = torch.zeros_like(activation, requires_grad=True)
    return offset, offset


class LayerOffsets:
    """Zero offsets added to layers' outputs on every forward pass inside the block: the handle
    through which a gradient *at* a layer is taken (see the module doc).

    Attributes (of the latest pass, after :meth:`clear`):
        offsets: ``{layer: [offset per call]}``, leaves that require grad.
        outputs: ``{layer: [the layer's own output per call]}`` (before the offset).
        inputs: ``{layer: [a detached copy of the layer's first tensor argument per call]}``
            (recorded with ``inputs=True``; None where the call had no tensor argument).
    """

    def __init__(self, access: ModelAccess, layers: Sequence[str], lift: Lift | None,
                 max_calls: int | None, record_inputs: bool = False) -> None:
        self.access = access
        self.layers = list(layers)
        self.lift = lift or _zero_offset
        self.max_calls = max_calls
        self.record_inputs = record_inputs
        self.offsets: dict[str, list[torch.Tensor]] = {n: [] for n in self.layers}
        self.outputs: dict[str, list[torch.Tensor]] = {n: [] for n in self.layers}
        self.inputs: dict[str, list[torch.Tensor | None]] = {n: [] for n in self.layers}

    def _add(self, name: str, module: nn.Module, args: tuple, output: Any) -> Any:
        tensor = primary_tensor(output)
        if not tensor.is_floating_point():
            raise ShapeMismatchError(
                f"Layer {name!r} returns a {tensor.dtype} tensor; a gradient at a layer needs "
                "floating-point output (choose another layer).")
        if self.max_calls is not None and len(self.offsets[name]) >= self.max_calls:
            times = "once" if self.max_calls == 1 else f"{self.max_calls} times"
            raise LatentSurgeonError(
                f"Layer {name!r} ran more than {times} in one forward pass; a gradient at the "
                "layer would be ambiguous, so this needs a layer that runs once per forward "
                "(choose another layer).")
        offset, change = self.lift(tensor, name)
        self.offsets[name].append(offset)
        self.outputs[name].append(tensor)
        if self.record_inputs:
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            self.inputs[name].append(None if first is None else first.detach().clone())
        # Adds exactly zero: the forward pass is unchanged, but the output now depends on it.
        return replace_primary(output, tensor + change)

    def clear(self) -> None:
        """Forget the offsets of earlier passes (call before each pass)."""
        for name in self.layers:
            self.offsets[name] = []
            self.outputs[name] = []
            self.inputs[name] = []

    def call(self, inputs: Any, **kwargs: Any) -> Any:
        """:meth:`clear`, then the model's output for ``inputs`` (:meth:`ModelAccess.call`)."""
        self.clear()
        return self.access.call(inputs, **kwargs)

    def offset(self, layer: str | None = None) -> torch.Tensor:
        """The one offset of ``layer`` (default: the only layer) in the latest pass.

        Raises:
            LatentSurgeonError: the layer did not run in the pass.
        """
        name = self.layers[0] if layer is None else layer
        found = self.offsets[name]
        if not found:
            raise LatentSurgeonError(
                f"Layer {name!r} did not run during the forward pass; choose a layer on the path "
                "to the output.")
        return found[-1]

    def output(self, layer: str | None = None) -> torch.Tensor:
        """The layer's own output (before the offset) in the latest pass."""
        self.offset(layer)
        return self.outputs[self.layers[0] if layer is None else layer][-1]


# -- the object ------------------------------------------------------------------------------------
class ModelAccess:
    """How a method reaches into ``model`` (see the module doc).

    Args:
        model: the network.
        layers: the layers the method works on (any selector), resolved here once; ``layers``
            holds their canonical names in the model's order. None: no layers.
        head: where the logits are in a structured output (a dict key or attribute, a tuple
            index; see :func:`~latentsurgeon.hooks.select_logits`); None: the output must hold
            one tensor.
        forward_fn: ``forward_fn(model, inputs)`` instead of ``model(inputs)`` /
            ``model(**inputs)``.
        loss: the per-sample loss of :meth:`losses` (``"reconstruction"``, ``"cross_entropy"``,
            ``"predicted"`` or ``loss(output, batch) -> scalar``).
        device: None or the model's device: an analysis never moves the model, so another device
            is a :class:`~latentsurgeon.errors.DeviceMismatchError`.

    Raises:
        InvalidParameterError: ``model`` is not a module, ``forward_fn`` or ``loss`` is not
            callable or known, or the model is on the ``meta`` device.
        LayerNotFoundError: a layer selector matches nothing.
    """

    def __init__(self, model: nn.Module, layers: LayerSelector | None = None, *,
                 head: str | int | None = "logits", forward_fn: ForwardFn | None = None,
                 loss: LossSpec | None = None, device: str | torch.device | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidParameterError(
                f"model must be a torch.nn.Module; got {type(model).__name__}.")
        if forward_fn is not None and not callable(forward_fn):
            raise InvalidParameterError(
                f"forward_fn must be a function forward_fn(model, inputs); got {forward_fn!r}.")
        if loss is not None:
            check_loss(loss)
        home = model_device(model, default=None)
        if home is not None and home.type == "meta":
            raise InvalidParameterError(
                "model: its weights are on the 'meta' device (shapes without values), so it "
                "cannot compute anything. Materialise it first, e.g. "
                "model.to_empty(device='cpu') then model.load_state_dict(...).")
        if home is not None:
            analysis_device(model, device)
        self.model = model
        self.layers: tuple[str, ...] = (tuple(resolve_layers(model, layers))
                                        if layers is not None else ())
        self.head = head
        self.forward_fn = forward_fn
        self.loss = loss
        self._stoppers: dict[tuple[str, ...], ForwardStopper] = {}

    # -- what and where ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device | None:
        """Where inputs go: the model's device (None for a model without tensors: inputs stay
        where they are)."""
        return model_device(self.model, default=None)

    @property
    def dtype(self) -> torch.dtype | None:
        """The model's floating dtype (floating inputs are cast to it)."""
        return floating_dtype(self.model)

    def layer(self, layer: LayerSelector | None = None) -> str:
        """The canonical name of one layer: of ``layer`` (a selector matching one layer), or the
        access's only layer when None."""
        if layer is None:
            if len(self.layers) != 1:
                raise LayerNotFoundError(
                    f"This access has {len(self.layers)} layers {list(self.layers)}; name one.")
            return self.layers[0]
        if isinstance(layer, str) and layer in self.layers:
            return layer
        return resolve_layer(self.model, layer)

    def stopper(self, names: Sequence[str], *, enabled: bool = True) -> ForwardStopper:
        """The early stop for passes that read ``names`` (one per layer set, so what it learns
        about a custom forward is kept across passes)."""
        key = (*names, "" if enabled else "\0whole")
        stopper = self._stoppers.get(key)
        if stopper is None:
            stopper = self._stoppers[key] = ForwardStopper(self.model, list(names),
                                                           enabled=enabled)
        return stopper

    # -- calling -------------------------------------------------------------------------------------
    def prepare(self, inputs: Any) -> Any:
        """``inputs`` on the model's device, floating tensors in the model's floating dtype."""
        device = self.device
        if device is None:
            return inputs
        return _move(cast_floating(inputs, self.dtype), device)

    def call(self, inputs: Any, *, state: State | None = None) -> Any:
        """The model's raw output for one batch of model inputs (see the module doc).

        Raises:
            InvalidParameterError: integer inputs to a model that computes in floats.
        """
        prepared = self.prepare(inputs)
        try:
            return call_model(self.model, prepared, forward_fn=self.forward_fn, state=state)
        except RuntimeError as exc:
            problem = _dtype_problem(exc, prepared, self.dtype)
            if problem is not None:
                raise InvalidParameterError(f"{problem} ({exc})") from exc
            problem = _shape_problem(exc, prepared)
            if problem is not None:
                raise ShapeMismatchError(f"{problem}: {exc}") from exc
            raise

    def run_stopped(self, stopper: ForwardStopper, inputs: Any, *,
                    state: State | None = None) -> Any:
        """:meth:`call` through ``stopper``: the output, or None when the pass was stopped."""
        return stopper.run_as(self.forward_fn or self.model,
                              lambda: self.call(inputs, state=state))

    def output(self, inputs: Any, *, state: State | None = None) -> torch.Tensor:
        """The primary output tensor (the first of a tuple, the first tensor of a dict)."""
        return primary_tensor(self.call(inputs, state=state))

    def logits(self, inputs: Any, *, state: State | None = None,
               classification: bool = True) -> torch.Tensor:
        """The logits of ``head``; ``(N, K)``-checked unless ``classification=False``."""
        output = self.call(inputs, state=state)
        if classification:
            return classification_logits(output, self.head)
        return select_logits(output, self.head)

    def n_outputs(self, sample: Any) -> int:
        """Number of logits ``K`` the model gives (one forward pass of ``sample`` in eval mode,
        without gradients; the model's state is restored)."""
        with preserve_model_state(self.model), torch.no_grad():
            self.model.eval()
            logits = self.logits(sample, classification=False)
        return 1 if logits.dim() <= 1 else int(logits.shape[1])

    # -- layers --------------------------------------------------------------------------------------
    def forward_to(self, inputs: Any, layer: LayerSelector | None = None, *,
                   state: State | None = None) -> torch.Tensor:
        """The output of ``layer`` for ``inputs``, in the autograd graph; the pass stops right
        after the layer's last call (a layer that runs twice gives its second output, as
        :func:`~latentsurgeon.activations.capture` and the reader do). With ``layer=None``:
        the model's output (:meth:`logits` of ``head`` when ``head`` is set, else
        :meth:`output`).

        Raises:
            LayerNotFoundError: ``layer`` selects no single layer, or did not run.
        """
        if layer is None:
            output = self.call(inputs, state=state)
            return primary_tensor(output) if self.head is None else select_logits(output,
                                                                                   self.head)
        name = self.layer(layer)
        stopper = self.stopper([name])
        found: list[torch.Tensor] = []

        def record(hooked: str, module: nn.Module, args: tuple, output: Any) -> None:
            tensor = primary_tensor(output)
            completes = stopper.count(hooked)
            # A pass that goes on (the first, learning one) could change the output in place
            # later; a clone keeps the value and the graph.
            found.append(tensor if completes else tensor.clone())
            if completes:
                stopper.stop()

        with HookGroup() as group:
            group.forward(self.model, [name], record)
            self.run_stopped(stopper, inputs, state=state)
        if not found:
            raise LayerNotFoundError(
                f"The forward pass of {type(self.model).__name__} did not run layer {name!r}; "
                "choose a layer the model's forward uses.")
        return found[-1]

    @contextmanager
    def offsets(self, layers: LayerSelector | None = None, *, lift: Lift | None = None,
                max_calls: int | None = 1, inputs: bool = False) -> Iterator[LayerOffsets]:
        """Add zero offsets (that require grad) to the outputs of ``layers`` (default: the
        access's) in every forward pass inside the block; yields the :class:`LayerOffsets`.

        Args:
            lift: how the offset enters (see :data:`Lift`); default: an offset of the output's
                shape.
            max_calls: how often a layer may run per pass (default once: a gradient w.r.t. "the"
                output of a layer that runs twice would be ambiguous); None: any number.
            inputs: also record what each layer received (``probe.inputs``).

        Use::

            with access.offsets(["features"]) as probe:
                logits = access.logits(probe_inputs)       # or probe.call(inputs)
                (grad,) = torch.autograd.grad(logits[:, k].sum(), probe.offset())
        """
        names = self.layers if layers is None else tuple(resolve_layers(self.model, layers))
        probe = LayerOffsets(self, names, lift, max_calls, inputs)
        # prepend: observers registered earlier see the offset output, as the model's rest does
        with torch.enable_grad(), HookGroup() as group:
            group.forward(self.model, list(names), probe._add, prepend=True)
            yield probe

    def call_order(self, inputs: Any, layers: LayerSelector = "*", *, stop_early: bool = False,
                   started: bool = False) -> list[tuple[str, str]]:
        """``[(layer, output)]``: the selected layers that run in one pass without gradients, in
        the order they finish (a container such as ``features`` after its children; with
        ``started=True``, in the order they start), each with its output described (the primary
        tensor's shape, ``"(1, 16) (+2 more)"`` for a tuple, else the type's name). First call of
        each. ``stop_early`` ends the pass after the last of them."""
        names = list(resolve_layers(self.model, layers))
        starts: list[str] = []
        shapes: dict[str, str] = {}
        stopper = self.stopper(names, enabled=stop_early)

        def start(name: str, module: nn.Module, args: tuple) -> None:
            if name not in starts:
                starts.append(name)

        def finish(name: str, module: nn.Module, args: tuple, output: Any) -> None:
            if name not in shapes:
                shapes[name] = _describe(output)
            if stopper.count(name):
                stopper.stop()

        with preserve_model_state(self.model), HookGroup() as group, torch.no_grad():
            self.model.eval()
            if started:
                group.forward_pre(self.model, names, start)
            group.forward(self.model, names, finish)
            self.run_stopped(stopper, inputs)
        order = [n for n in starts if n in shapes] if started else list(shapes)
        return [(name, shapes[name]) for name in order]

    # -- per-sample losses ---------------------------------------------------------------------------
    def _loss_output(self, inputs: Any, layer: str | None, state: State | None) -> torch.Tensor:
        if layer is not None:
            return self.forward_to(inputs, layer, state=state)
        output = self.call(inputs, state=state)
        if self.loss in ("cross_entropy", "predicted"):
            return select_logits(output, self.head)
        return primary_tensor(output)

    def loss_of_one(self, batch: Any, *, layer: str | None = None,
                    state: State | None = None) -> torch.Tensor:
        """The loss of a batch of one sample (leading dimension 1), a scalar: the differentiable
        function ``torch.func`` transforms take per sample.

        ``layer``: the loss is a function of that layer's output (the pass stops there)."""
        if not callable(self.loss):
            return self.losses(batch, layer=layer, state=state).reshape(())
        out = self._loss_output(batch_inputs(batch), layer, state)
        value = self.loss(out, batch)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ShapeMismatchError(
                "A loss callable must return a scalar tensor for a batch of one sample; got "
                f"{type(value).__name__}"
                + (f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                   else "") + ".")
        return value.reshape(())

    def losses(self, batch: Any, *, layer: str | None = None,
               state: State | None = None) -> torch.Tensor:
        """Per-sample losses ``(B,)`` of a batch (the named losses; in eval mode samples are
        independent, so the gradient of their sum w.r.t. one sample's activations is that
        sample's own).

        Raises:
            LatentSurgeonError: the loss is a callable (evaluated one sample at a time), or
                ``"cross_entropy"`` without labels.
            ShapeMismatchError: ``"reconstruction"`` of an output unlike the input; a
                classification loss of an output that is not ``(N, K)``.
        """
        if self.loss is None:
            raise LatentSurgeonError("This ModelAccess has no loss; pass loss=... to build it.")
        if callable(self.loss):
            raise LatentSurgeonError("A loss callable is evaluated one sample at a time.")
        inputs = batch_inputs(batch)
        out = self._loss_output(inputs, layer, state)
        if self.loss == "reconstruction":
            target = self.prepare(inputs)
            if not isinstance(target, torch.Tensor) or out.shape != target.shape:
                raise ShapeMismatchError(
                    "loss='reconstruction' needs an output shaped like the input; got "
                    f"{tuple(out.shape)} for inputs {tuple(getattr(inputs, 'shape', ()))}. "
                    "Use a classification loss or a callable for other models.")
            return ((out - target) ** 2).reshape(out.shape[0], -1).mean(dim=1)
        if out.dim() != 2:
            raise ShapeMismatchError(
                f"loss={self.loss!r} needs (N, n_classes) logits; the output has shape "
                f"{tuple(out.shape)} (pass head= for structured outputs).")
        if self.loss == "predicted":
            labels = out.detach().argmax(dim=1)
        else:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise LatentSurgeonError(
                    "loss='cross_entropy' needs labelled data: (inputs, labels) tuples, a split "
                    "with .images and .labels, or a loader yielding (inputs, labels); use "
                    "loss='predicted' for unlabelled data.")
            labels = batch[1].long().reshape(-1).to(out.device)
        return F.cross_entropy(out, labels, reduction="none")
