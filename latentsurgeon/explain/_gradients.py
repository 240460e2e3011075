"""Per-sample loss gradients with ``torch.func``: the machinery TracIn and influence functions share.

* :func:`parameter_names` - which parameters a gradient is taken with respect to.
* :class:`GradientSpec` - the loss of one sample (through the method's
  :class:`~latentsurgeon.activations.access.ModelAccess`: reconstruction, cross-entropy with the
  label or with the predicted class, or a user's loss of the output or of a layer's
  representation, with any weights, a checkpoint's, swapped in without touching the model).
* :func:`per_sample_gradients` - ``vmap(grad(loss))`` over a batch, flattened to ``(B, P)``,
  optionally unit-normalised and randomly projected (:class:`CountSketch`).
* :func:`load_checkpoints` - checkpoints written by ``training.train(checkpoint_dir=)``
  or given in memory, as ``(state, lr)`` pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentsurgeon._validation import check_finite
from latentsurgeon.activations.access import ModelAccess
from latentsurgeon.errors import (
    InvalidParameterError,
    LatentSurgeonError,
    ShapeMismatchError,
)
from latentsurgeon.hooks import resolve_layers
from latentsurgeon.hooks.resolve import LayerSelector

logger = logging.getLogger(__name__)

#: ``"reconstruction"``, ``"cross_entropy"``, ``"predicted"`` or ``loss(output, batch) -> scalar``.
State = dict[str, torch.Tensor]


def parameter_names(model: nn.Module, params: LayerSelector | None) -> list[str]:
    """Names of the parameters gradients are taken with respect to.

    ``None``: every parameter with ``requires_grad=True``. Otherwise a layer selector (names,
    globs, ``re:`` regexes, classes; see :func:`~latentsurgeon.hooks.resolve_layers`): every
    parameter of the selected modules and their submodules, in the model's order.
    """
    if params is None:
        names = [n for n, p in model.named_parameters() if p.requires_grad]
    else:
        prefixes = list(resolve_layers(model, params))
        names = [n for n, _ in model.named_parameters()
                 if any(p == "" or n == p or n.startswith(p + ".") for p in prefixes)]
    if not names:
        raise InvalidParameterError(
            f"params={params!r} selects no parameter of {type(model).__name__}"
            + (" (no parameter requires grad)" if params is None else "")
            + "; name the layers whose parameters the gradients are taken with respect to.")
    return names


def _sample_tree(batch: Any) -> Any:
    """A batch as a pytree of tensors ``torch.func.vmap`` can map over."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        bad = [k for k, v in batch.items() if not isinstance(v, torch.Tensor)]
        tree: Any = dict(batch)
    elif isinstance(batch, (tuple, list)):
        bad = [i for i, v in enumerate(batch) if not isinstance(v, torch.Tensor)]
        tree = tuple(batch)
    else:
        raise LatentSurgeonError(
            f"Per-sample gradients need batches of tensors; got a {type(batch).__name__}.")
    if bad:
        raise LatentSurgeonError(
            f"Per-sample gradients need batches of tensors only; entries {bad} are not tensors.")
    return tree


class CountSketch:
    """A seeded sparse random projection ``R^P -> R^k`` (CountSketch): coordinate ``i`` is added,
    with a random sign, to a random one of ``k`` buckets.

    Inner products are preserved in expectation, ``E[<Sx, Sy>] = <x, y>``, with a standard
    deviation of about ``sqrt((|x|^2 |y|^2 + <x, y>^2) / k)``. It costs one pass over the
    gradient and stores two integers per parameter, so it scales to models whose dense Gaussian
    projection matrix would not fit in memory.
    """

    def __init__(self, sizes: Sequence[int], dim: int, seed: int,
                 device: torch.device) -> None:
        generator = torch.Generator().manual_seed(int(seed))
        self.dim = int(dim)
        self.buckets = [torch.randint(self.dim, (n,), generator=generator).to(device)
                        for n in sizes]
        self.signs = [(torch.randint(2, (n,), generator=generator) * 2 - 1).to(device)
                      for n in sizes]

    def __call__(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        first = parts[0]
        out = torch.zeros(first.shape[0], self.dim, dtype=first.dtype, device=first.device)
        for part, bucket, sign in zip(parts, self.buckets, self.signs, strict=True):
            out.index_add_(1, bucket, part * sign.to(part.dtype))
        return out


@dataclass
class GradientSpec:
    """How per-sample gradients are taken: the model access (its loss and head), the layer whose
    output the loss is a function of (None: the model's output), the parameters, their
    post-processing."""

    access: ModelAccess
    names: list[str]
    normalize: bool = False
    projector: CountSketch | None = None
    #: ``[(module name, has bias)]`` when every parameter belongs to an ``nn.Linear``: gradients
    #: are then kept factored (:class:`LinearFactors`); None: flat gradients through ``vmap``.
    linear: list[tuple[str, bool]] | None = None
    layer: str | None = None

    def function(self) -> Callable[[State, State, Any], torch.Tensor]:
        """``f(params, rest, sample) -> loss`` of one sample without a batch dimension."""
        access, layer = self.access, self.layer

        def loss_one(params: State, rest: State, sample: Any) -> torch.Tensor:
            batch = torch.utils._pytree.tree_map(lambda t: t.unsqueeze(0), sample)
            return access.loss_of_one(batch, layer=layer, state={**rest, **params})

        return loss_one

    def split(self, state: State) -> tuple[State, State]:
        """``(differentiated parameters, everything else)`` of a full state."""
        chosen = set(self.names)
        params = {n: state[n] for n in self.names}
        rest = {n: t for n, t in state.items() if n not in chosen}
        return params, rest


def per_sample_gradients(spec: GradientSpec, state: State, batch: Any
                         ) -> torch.Tensor | LinearFactors:
    """``(B, P)`` gradients of each sample's loss (``(B, k)`` when projected), one vmap call;
    :class:`LinearFactors` when ``spec.linear`` is set.

    With ``spec.normalize`` each row has unit Euclidean norm before projection (a zero gradient
    stays zero).
    """
    if spec.linear is not None:
        factors = linear_factors(spec, state, batch)
        if spec.normalize:
            norm = factors.squared_norms().sqrt()
            factors = factors.scaled(1.0 / norm.clamp_min(torch.finfo(norm.dtype).tiny))
        return factors
    params, rest = spec.split(state)
    grad_fn = torch.func.vmap(torch.func.grad(spec.function()), in_dims=(None, None, 0))
    grads = grad_fn(params, rest, _sample_tree(batch))
    parts = [grads[n].reshape(grads[n].shape[0], -1) for n in spec.names]
    if spec.normalize:
        norm = torch.sqrt(sum((p * p).sum(dim=1) for p in parts))  # type: ignore[arg-type]
        scale = 1.0 / norm.clamp_min(torch.finfo(norm.dtype).tiny)
        parts = [p * scale[:, None] for p in parts]
    if spec.projector is not None:
        return spec.projector(parts)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def current_state(model: nn.Module) -> State:
    """The model's parameters and buffers, detached (the weights ``functional_call`` uses)."""
    state = {n: p.detach() for n, p in model.named_parameters()}
    state.update({n: b.detach() for n, b in model.named_buffers()})
    return state


# -- checkpoints ----------------------------------------------------------------------------------
CheckpointSpec = Any  # "current" | path | directory | state dict | payload | list of these


def _read(item: Any, index: int) -> tuple[Mapping[str, torch.Tensor], float | None]:
    if isinstance(item, (str, Path)):
        path = Path(item)
        try:
            item = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged or missing file
            raise LatentSurgeonError(f"Cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(item, Mapping):
        raise InvalidParameterError(
            f"checkpoints[{index}] must be a path, a state dict or a checkpoint dict with "
            f"'state_dict' (and 'lr'); got {type(item).__name__}.")
    if "state_dict" in item:
        lr = item.get("lr")
        return item["state_dict"], None if lr is None else float(lr)
    return item, None


def checkpoint_items(checkpoints: CheckpointSpec) -> list[Any]:
    """The checkpoints named by ``checkpoints`` (a directory gives its ``epoch_*.pt`` files)."""
    if checkpoints is None:
        raise LatentSurgeonError(
            "No checkpoints were given: TracIn sums over the checkpoints saved during training "
            "(pass checkpoints=<directory of train(checkpoint_dir=...)>, a list of files or "
            "state dicts, or 'current' for the model's present weights).")
    if isinstance(checkpoints, str) and checkpoints == "current":
        return ["current"]
    if isinstance(checkpoints, (str, Path)):
        path = Path(checkpoints)
        if path.is_dir():
            items: list[Any] = sorted(path.glob("epoch_*.pt"))
            if not items:
                raise LatentSurgeonError(
                    f"No checkpoints (epoch_*.pt) in {path}; train with "
                    "train(..., checkpoint_dir=...) to record them.")
            return items
        return [path]
    if isinstance(checkpoints, Mapping):
        return [checkpoints]
    items = list(checkpoints)
    if not items:
        raise LatentSurgeonError(
            "checkpoints is empty: TracIn needs at least one checkpoint (lfxai silently returns "
            "zeros here). Record them with train(..., checkpoint_dir=...) or pass 'current'.")
    return items


def _check_shapes(state: Mapping[str, Any], expected: State, persistent: set[str], index: int,
                  item: Any, model: nn.Module) -> None:
    """Refuse a checkpoint whose tensors do not have the model's shapes (or kinds of dtype).

    Names alone do not tell architectures apart (``DigitCNN(hidden=32)`` and ``hidden=64``
    share every name); scoring with such a checkpoint would score another network."""
    where = f"checkpoints[{index}]" + (f" ({item})" if isinstance(item, (str, Path)) else "")
    for name in sorted(persistent):
        value, own = state[name], expected[name]
        if not isinstance(value, torch.Tensor):
            raise InvalidParameterError(
                f"{where}: entry {name!r} must be a tensor; got {type(value).__name__}.")
        if value.is_meta:
            raise InvalidParameterError(
                f"{where}: {name!r} is on the 'meta' device (shapes without values); pass "
                "checkpoints that hold the weights.")
        if tuple(value.shape) != tuple(own.shape):
            raise InvalidParameterError(
                f"{where} does not fit {type(model).__name__}: parameter {name!r} has shape "
                f"{tuple(value.shape)} in the checkpoint, {tuple(own.shape)} in the model (a "
                "checkpoint of another architecture). Pass the checkpoints this model was "
                "trained with.")
        # a floating value is cast to the model's dtype below; an integer or boolean buffer
        # (a step counter, a mask) must stay of its kind
        if value.is_floating_point() != own.is_floating_point():
            raise InvalidParameterError(
                f"{where} does not fit {type(model).__name__}: {name!r} is {value.dtype} in "
                f"the checkpoint, {own.dtype} in the model.")


def load_checkpoints(checkpoints: CheckpointSpec, lr: float | None, model: nn.Module,
                     device: torch.device) -> list[tuple[State, float]]:
    """``[(full state on device, learning rate), ...]`` for every checkpoint.

    ``lr`` (if given) replaces the learning rates the checkpoints record; a checkpoint without
    one (a plain state dict) needs it.
    """
    expected = current_state(model)
    # non-persistent buffers (constants the model rebuilds, e.g. a time encoding) are not in a
    # state_dict, hence not in a checkpoint: they come from the model itself
    persistent = set(model.state_dict())
    out = []
    for index, item in enumerate(checkpoint_items(checkpoints)):
        if isinstance(item, str) and item == "current":
            out.append((expected, 1.0 if lr is None else float(lr)))
            continue
        state, recorded = _read(item, index)
        missing = sorted(persistent - set(state))
        unexpected = sorted(set(state) - persistent)
        if missing or unexpected:
            raise LatentSurgeonError(
                f"Checkpoint {index} does not fit {type(model).__name__}: missing "
                f"{missing[:6]}{' ...' if len(missing) > 6 else ''}, unexpected "
                f"{unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}.")
        _check_shapes(state, expected, persistent, index, item, model)
        rate = float(lr) if lr is not None else recorded
        if rate is None:
            raise LatentSurgeonError(
                f"Checkpoint {index} records no learning rate; pass lr= (TracIn weights each "
                "checkpoint by the learning rate in force after it).")
        full = {n: expected[n] if n not in persistent
                else state[n].detach().to(device=device, dtype=expected[n].dtype)
                if expected[n].is_floating_point() else state[n].to(device)
                for n in expected}
        out.append((full, rate))
    return out


def gradient_matrix(spec: GradientSpec, state: State, data: Any, batch_size: int,
                    device: torch.device, *, desc: str = "gradients",
                    progress: bool = False) -> tuple[Any, list[tuple[int, int]]]:
    """Per-sample gradients of every sample of ``data``: ``(N, P)`` (or ``(N, k)`` projected)
    and the ``[start, end)`` rows of each batch, so products can be taken batch by batch
    exactly as they were computed."""
    from tqdm.auto import tqdm

    from latentsurgeon.activations.batching import iter_batches, n_batches, to_device

    parts: list[Any] = []
    bounds = []
    position = 0
    for batch in tqdm(iter_batches(data, batch_size), total=n_batches(data, batch_size),
                      desc=desc, unit="batch", leave=False, disable=None if progress else True):
        grads = per_sample_gradients(spec, state, to_device(batch, device))
        for block in (grads.inputs + grads.grads if isinstance(grads, LinearFactors)
                      else [grads]):
            check_finite(block, f"the {desc} (rows {position}-{position + len(grads) - 1})")
        parts.append(grads)
        bounds.append((position, position + len(grads)))
        position += len(grads)
    if parts and isinstance(parts[0], LinearFactors):
        return LinearFactors.cat(parts), bounds
    if not parts:
        size = spec.projector.dim if spec.projector is not None else sum(
            state[n].numel() for n in spec.names)
        return torch.zeros(0, size, dtype=state[spec.names[0]].dtype, device=device), []
    return (parts[0] if len(parts) == 1 else torch.cat(parts)), bounds


# -- factored gradients of linear layers ------------------------------------------------------------
class NotFactorable(LatentSurgeonError):
    """The model does not allow factored gradients (a layer ran twice, or on >2-D inputs)."""


@dataclass
class LinearFactors:
    """Per-sample gradients of ``nn.Linear`` layers kept as factors.

    For sample ``i`` and layer ``l`` with input ``a = A_l[i]`` and output gradient
    ``d = D_l[i]``, the weight gradient is the outer product ``d a^T`` and the bias gradient
    ``d``. So ``<g_i, g_j> = sum_l <D_l[i], D_l[j]> (<A_l[i], A_l[j]> + bias_l)`` without ever
    forming the ``P``-long gradients: ``O(in + out)`` memory per sample and layer instead of
    ``O(in * out)``. Exact (the same numbers as the flat gradients, up to rounding).
    """

    inputs: list[torch.Tensor]
    grads: list[torch.Tensor]
    bias: list[bool]

    def __len__(self) -> int:
        return int(self.grads[0].shape[0])

    def squared_norms(self) -> torch.Tensor:
        total = 0
        for a, d, b in zip(self.inputs, self.grads, self.bias, strict=True):
            total = total + (d * d).sum(dim=1) * ((a * a).sum(dim=1) + float(b))
        return total  # type: ignore[return-value]

    def scaled(self, scale: torch.Tensor) -> LinearFactors:
        return LinearFactors(self.inputs, [d * scale[:, None] for d in self.grads], self.bias)

    def __getitem__(self, rows: slice) -> LinearFactors:
        return LinearFactors([a[rows] for a in self.inputs], [d[rows] for d in self.grads],
                             self.bias)

    def dot(self, other: LinearFactors) -> torch.Tensor:
        """``(len(self), len(other))`` inner products of the per-sample gradients."""
        total = 0
        for a, d, oa, od, b in zip(self.inputs, self.grads, other.inputs, other.grads,
                                   self.bias, strict=True):
            inputs = a @ oa.T
            if b:
                inputs = inputs + 1.0
            total = total + (d @ od.T) * inputs
        return total  # type: ignore[return-value]

    def flat(self) -> torch.Tensor:
        """The flat ``(B, P)`` gradients (weight then bias per layer), for checks."""
        parts = []
        for a, d, b in zip(self.inputs, self.grads, self.bias, strict=True):
            parts.append((d[:, :, None] * a[:, None, :]).reshape(len(d), -1))
            if b:
                parts.append(d)
        return torch.cat(parts, dim=1)

    @staticmethod
    def cat(parts: Sequence[LinearFactors]) -> LinearFactors:
        if len(parts) == 1:
            return parts[0]
        n = len(parts[0].inputs)
        return LinearFactors([torch.cat([p.inputs[i] for p in parts]) for i in range(n)],
                             [torch.cat([p.grads[i] for p in parts]) for i in range(n)],
                             parts[0].bias)


def linear_layers(model: nn.Module, names: Sequence[str]) -> list[tuple[str, bool]] | None:
    """``[(module name, bias chosen)]`` if the parameters ``names`` are the weights (and maybe
    biases) of ``nn.Linear`` modules, in order; else None."""
    modules = dict(model.named_modules())
    layers: dict[str, set[str]] = {}
    for name in names:
        owner, _, attr = name.rpartition(".")
        if not isinstance(modules.get(owner), nn.Linear) or attr not in ("weight", "bias"):
            return None
        layers.setdefault(owner, set()).add(attr)
    if any("weight" not in attrs for attrs in layers.values()):
        return None
    return [(owner, "bias" in attrs) for owner, attrs in layers.items()]


def linear_factors(spec: GradientSpec, state: State, batch: Any) -> LinearFactors:
    """Factored per-sample gradients: one batched forward and one backward to the outputs of
    the selected linear layers (samples are independent in eval mode). The output gradients are
    the gradients at those layers (:meth:`~latentsurgeon.activations.access.ModelAccess.offsets`),
    the inputs what the layers received."""
    assert spec.linear is not None
    names = [name for name, _ in spec.linear]
    params = {n: state[n].detach().requires_grad_(True) for n in spec.names}
    try:
        with spec.access.offsets(names, inputs=True) as probe:
            losses = spec.access.losses(batch, layer=spec.layer, state={**state, **params})
            offsets = [probe.offset(n) for n in names]
            inputs = [probe.inputs[n][-1] for n in names]
    except ShapeMismatchError:
        raise  # the data do not fit the model: no way of computing gradients helps
    except LatentSurgeonError as exc:
        raise NotFactorable(f"a selected linear layer cannot be factored ({exc})") from exc
    if any(not isinstance(a, torch.Tensor) or a.dim() != 2 for a in inputs):
        raise NotFactorable("a selected linear layer runs on inputs that are not (N, in)")
    grads = torch.autograd.grad(losses.sum(), offsets, allow_unused=True)
    return LinearFactors(inputs,
                         [torch.zeros_like(o) if g is None else g.detach()
                          for g, o in zip(grads, offsets, strict=True)],
                         [b for _, b in spec.linear])


def inner(test: Any, train: Any) -> torch.Tensor:
    """``(n_test, n_train)`` inner products of two gradient blocks (flat or factored)."""
    if isinstance(test, LinearFactors):
        return test.dot(train)
    return test @ train.T


def gradients_to_data(gradients: Any) -> dict[str, Any]:
    """A gradient block (flat ``(N, P)`` or :class:`LinearFactors`) as CPU tensors and plain
    data, for saving an explainer; :func:`gradients_from_data` is the inverse."""
    if isinstance(gradients, LinearFactors):
        return {"kind": "factors", "inputs": [a.detach().cpu() for a in gradients.inputs],
                "grads": [d.detach().cpu() for d in gradients.grads],
                "bias": list(gradients.bias)}
    return {"kind": "flat", "tensor": gradients.detach().cpu()}


def gradients_from_data(data: dict[str, Any], device: torch.device) -> Any:
    """The gradient block :func:`gradients_to_data` stored, on ``device``."""
    if data["kind"] == "factors":
        return LinearFactors([a.to(device) for a in data["inputs"]],
                             [d.to(device) for d in data["grads"]], list(data["bias"]))
    return data["tensor"].to(device)
