"""Per-sample loss gradients with ``torch.func``: the machinery TracIn and influence functions share.

* :func:`parameter_names` - which parameters a gradient is taken with respect to.
* :class:`SampleLoss` - the loss of one sample (reconstruction, cross-entropy with the label or
  with the predicted class, or a user's loss of the output or of a layer's representation),
  evaluated with :func:`torch.func.functional_call` so that any weights (a checkpoint's) can be
  used without touching the model.
* :func:`per_sample_gradients` - ``vmap(grad(loss))`` over a batch, flattened to ``(B, P)``,
  optionally unit-normalised and randomly projected (:class:`CountSketch`).
* :func:`load_checkpoints` - checkpoints written by ``models.training.train(checkpoint_dir=)``
  or given in memory, as ``(state, lr)`` pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentsurgeon.activations.batching import batch_inputs
from latentsurgeon.errors import (
    InvalidParameterError,
    LatentSurgeonError,
    ShapeMismatchError,
)
from latentsurgeon.explain._forward import forward_to
from latentsurgeon.hooks import resolve_layers
from latentsurgeon.hooks.resolve import LayerSelector

logger = logging.getLogger(__name__)

LOSSES = ("reconstruction", "cross_entropy", "predicted")
#: ``"reconstruction"``, ``"cross_entropy"``, ``"predicted"`` or ``loss(output, batch) -> scalar``.
LossSpec = str | Callable[[torch.Tensor, Any], torch.Tensor]
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


def check_loss(loss: Any, what: str = "loss") -> None:
    if not (callable(loss) or loss in LOSSES):
        raise InvalidParameterError(
            f"{what} must be one of {', '.join(map(repr, LOSSES))} or a callable "
            f"loss(output, batch) -> scalar; got {loss!r}.")


class SampleLoss:
    """The loss of one sample, as a function of parameters (for ``torch.func`` transforms).

    Args:
        model: the network (in eval mode while gradients are taken).
        loss: ``"reconstruction"`` (mean squared error between the output and the input, as
            ``train_autoencoder`` trains), ``"cross_entropy"`` (with the label, the second
            element of a batch), ``"predicted"`` (cross-entropy with the predicted class), or
            ``loss(output, batch) -> scalar`` where ``output`` is the output (or ``layer``'s
            output) for a batch of one sample and ``batch`` that sample's batch (same structure
            as the data's, first dimension 1).
        layer: the loss is a function of this layer's output (the forward pass stops there);
            None: of the model's output.
        head: where the logits are in a structured output (cross-entropy losses).
    """

    def __init__(self, model: nn.Module, loss: LossSpec, layer: str | None = None,
                 head: str | int | None = "logits") -> None:
        check_loss(loss)
        self.model, self.loss, self.layer, self.head = model, loss, layer, head

    def output(self, state: Mapping[str, torch.Tensor], inputs: Any) -> torch.Tensor:
        head = self.head if self.loss in ("cross_entropy", "predicted") else None
        return forward_to(self.model, inputs, self.layer, state=state, head=head)

    def value(self, state: Mapping[str, torch.Tensor], batch: Any) -> torch.Tensor:
        """Loss of a batch of one sample (``batch`` with leading dimension 1): a scalar."""
        inputs = batch_inputs(batch)
        out = self.output(state, inputs)
        if callable(self.loss):
            value = self.loss(out, batch)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise ShapeMismatchError(
                    "A loss callable must return a scalar tensor for a batch of one sample; got "
                    f"{type(value).__name__}"
                    + (f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
                       else "") + ".")
            return value.reshape(())
        if self.loss == "reconstruction":
            if not isinstance(inputs, torch.Tensor) or out.shape != inputs.shape:
                raise ShapeMismatchError(
                    "loss='reconstruction' needs an output shaped like the input; got "
                    f"{tuple(out.shape)} for inputs {tuple(getattr(inputs, 'shape', ()))}. "
                    "Use a classification loss or a callable for other models.")
            return F.mse_loss(out, inputs)
        if out.dim() != 2:
            raise ShapeMismatchError(
                f"loss={self.loss!r} needs (N, n_classes) logits; the output has shape "
                f"{tuple(out.shape)} (pass head= for structured outputs).")
        if self.loss == "predicted":
            target = out.detach().argmax(dim=1)
        else:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise LatentSurgeonError(
                    "loss='cross_entropy' needs labelled data: (inputs, labels) tuples, a split "
                    "with .images and .labels, or a loader yielding (inputs, labels); use "
                    "loss='predicted' for unlabelled data.")
            target = batch[1].long().reshape(-1)
        return F.cross_entropy(out, target)


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
    """How per-sample gradients are taken: the loss, the parameters, their post-processing."""

    sample_loss: SampleLoss
    names: list[str]
    normalize: bool = False
    projector: CountSketch | None = None

    def function(self) -> Callable[[State, State, Any], torch.Tensor]:
        """``f(params, rest, sample) -> loss`` of one sample without a batch dimension."""
        sample_loss = self.sample_loss

        def loss_one(params: State, rest: State, sample: Any) -> torch.Tensor:
            batch = torch.utils._pytree.tree_map(lambda t: t.unsqueeze(0), sample)
            return sample_loss.value({**rest, **params}, batch)

        return loss_one

    def split(self, state: State) -> tuple[State, State]:
        """``(differentiated parameters, everything else)`` of a full state."""
        chosen = set(self.names)
        params = {n: state[n] for n in self.names}
        rest = {n: t for n, t in state.items() if n not in chosen}
        return params, rest


def per_sample_gradients(spec: GradientSpec, state: State, batch: Any) -> torch.Tensor:
    """``(B, P)`` gradients of each sample's loss (``(B, k)`` when projected), one vmap call.

    With ``spec.normalize`` each row has unit Euclidean norm before projection (a zero gradient
    stays zero).
    """
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
    return torch.cat(parts, dim=1)


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


def load_checkpoints(checkpoints: CheckpointSpec, lr: float | None, model: nn.Module,
                     device: torch.device) -> list[tuple[State, float]]:
    """``[(full state on device, learning rate), ...]`` for every checkpoint.

    ``lr`` (if given) replaces the learning rates the checkpoints record; a checkpoint without
    one (a plain state dict) needs it.
    """
    expected = current_state(model)
    out = []
    for index, item in enumerate(checkpoint_items(checkpoints)):
        if isinstance(item, str) and item == "current":
            out.append((expected, 1.0 if lr is None else float(lr)))
            continue
        state, recorded = _read(item, index)
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(model.state_dict()))
        if missing or unexpected:
            raise LatentSurgeonError(
                f"Checkpoint {index} does not fit {type(model).__name__}: missing "
                f"{missing[:6]}{' ...' if len(missing) > 6 else ''}, unexpected "
                f"{unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}.")
        rate = float(lr) if lr is not None else recorded
        if rate is None:
            raise LatentSurgeonError(
                f"Checkpoint {index} records no learning rate; pass lr= (TracIn weights each "
                "checkpoint by the learning rate in force after it).")
        full = {n: state[n].detach().to(device=device, dtype=expected[n].dtype)
                if expected[n].is_floating_point() else state[n].to(device)
                for n in expected}
        out.append((full, rate))
    return out


def gradient_matrix(spec: GradientSpec, state: State, data: Any, batch_size: int,
                    device: torch.device, *, desc: str = "gradients",
                    progress: bool = False) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Per-sample gradients of every sample of ``data``: ``(N, P)`` (or ``(N, k)`` projected)
    and the ``[start, end)`` rows of each batch, so products can be taken batch by batch
    exactly as they were computed."""
    from tqdm.auto import tqdm

    from latentsurgeon.activations.batching import iter_batches, n_batches, to_device

    parts, bounds = [], []
    position = 0
    for batch in tqdm(iter_batches(data, batch_size), total=n_batches(data, batch_size),
                      desc=desc, unit="batch", leave=False, disable=None if progress else True):
        grads = per_sample_gradients(spec, state, to_device(batch, device)).detach()
        parts.append(grads)
        bounds.append((position, position + len(grads)))
        position += len(grads)
    if not parts:
        size = spec.projector.dim if spec.projector is not None else sum(
            state[n].numel() for n in spec.names)
        return torch.zeros(0, size, dtype=state[spec.names[0]].dtype, device=device), []
    return torch.cat(parts), bounds
