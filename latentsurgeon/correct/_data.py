"""What corrections and metrics accept as data, normalised to tensors held in memory."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from latentsurgeon.errors import LatentSurgeonError, ShapeMismatchError

logger = logging.getLogger(__name__)

_DATA_HELP = (
    "pass a split with .images and .labels (e.g. decoy_digits(...).train), an (images, labels) "
    "or (images, labels, artifact) tuple of tensors, a TensorDataset or a DataLoader"
)


@dataclass
class Samples:
    """Tensors of one dataset, first dimension ``N`` shared.

    Attributes:
        images: ``(N, ...)`` model inputs.
        labels: ``(N,)`` int64 class labels, or None.
        artifact: ``(N,)`` bool artifact labels (1 = artifact present), or None.
        masks: ``(N, H, W)`` artifact masks, or None.
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    artifact: torch.Tensor | None = None
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


def to_tensor(value: Any, name: str) -> torch.Tensor:
    """A tensor from a tensor, numpy array or nested list (no copy for tensors)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (np.ndarray, list, tuple)):
        return torch.as_tensor(np.asarray(value))
    raise TypeError(f"{name} must be a tensor or a numpy array, got {type(value).__name__}.")


def _from_loader(loader: DataLoader) -> tuple[torch.Tensor, ...]:
    # Corrections take several passes with their own seeded order; a loader is read once.
    parts: list[tuple[torch.Tensor, ...]] = []
    for batch in loader:
        batch = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
        parts.append(tuple(t for t in batch if isinstance(t, torch.Tensor)))
    if not parts:
        raise LatentSurgeonError("The DataLoader yielded no batches.")
    logger.debug("read %d batches from a DataLoader into memory", len(parts))
    return tuple(torch.cat(column) for column in zip(*parts, strict=True))


def as_samples(
    data: Any,
    labels: Any = None,
    artifact: Any = None,
    masks: Any = None,
    *,
    need_labels: bool = False,
    what: str = "data",
) -> Samples:
    """Normalise ``data`` (and overrides given separately) to :class:`Samples`.

    Args:
        data: an object with ``.images`` (and optionally ``.labels``, ``.artifact``, ``.masks``),
            a tuple ``(images[, labels[, artifact]])``, an images tensor/array, a
            ``TensorDataset`` or a ``DataLoader`` (read once into memory).
        labels, artifact, masks: replace what ``data`` carries.
        need_labels: raise unless class labels are available.
        what: the argument's name, for error messages.
    """
    found: dict[str, Any] = {}
    if hasattr(data, "images"):
        for key in ("images", "labels", "artifact", "masks"):
            found[key] = getattr(data, key, None)
    else:
        if isinstance(data, DataLoader):
            tensors: tuple[Any, ...] = _from_loader(data)
        elif isinstance(data, TensorDataset):
            tensors = tuple(data.tensors)
        elif isinstance(data, Dataset):
            tensors = _from_loader(DataLoader(data, batch_size=256))
        elif isinstance(data, (tuple, list)) and data and not isinstance(data[0], (int, float)):
            tensors = tuple(data)
        elif isinstance(data, (torch.Tensor, np.ndarray)):
            tensors = (data,)
        else:
            raise TypeError(f"Cannot read {what} of type {type(data).__name__}; {_DATA_HELP}.")
        if len(tensors) > 3:
            raise LatentSurgeonError(
                f"{what} holds {len(tensors)} tensors; expected (images[, labels[, artifact]]).")
        found = dict(zip(("images", "labels", "artifact"), tensors, strict=False))
    for key, value in (("labels", labels), ("artifact", artifact), ("masks", masks)):
        if value is not None:
            found[key] = value
    images = to_tensor(found["images"], f"{what}.images")
    if not images.is_floating_point():
        images = images.float()
    n = images.shape[0]
    out = Samples(images)
    if found.get("labels") is not None:
        out.labels = to_tensor(found["labels"], "labels").reshape(-1).long()
    if found.get("artifact") is not None:
        out.artifact = to_tensor(found["artifact"], "artifact labels").reshape(-1).bool()
    if found.get("masks") is not None:
        out.masks = to_tensor(found["masks"], "masks")
    for key in ("labels", "artifact"):
        value = getattr(out, key)
        if value is not None and len(value) != n:
            raise ShapeMismatchError(f"{what}: {key} has {len(value)} entries but there are {n} "
                                     "images; they must match one to one.")
    if need_labels and out.labels is None:
        raise LatentSurgeonError(f"{what} carries no class labels; {_DATA_HELP}.")
    return out


def index_batches(n: int, batch_size: int, generator: torch.Generator | None = None
                  ) -> Iterator[torch.Tensor]:
    """Index tensors of ``batch_size`` (the last one shorter), shuffled when ``generator`` is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    yield from order.split(batch_size)


def select_logits(output: Any, head: str | int = "logits") -> torch.Tensor:
    """The ``(N, K)`` logits of a model output: the tensor itself; ``output[head]`` for a dict
    (string head) or a tuple/list (int head); ``output.logits`` for tuple-like outputs with a
    ``logits`` attribute (named tuples)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        if head in output and isinstance(output[head], torch.Tensor):
            return output[head]
        raise LatentSurgeonError(
            f"The model returned a dict without a tensor under head={head!r}; its keys are "
            f"{list(output.keys())}. Pass head=<key of the logits>.")
    if isinstance(output, (tuple, list)):
        if isinstance(head, int) and not isinstance(head, bool):
            if -len(output) <= head < len(output) and isinstance(output[head], torch.Tensor):
                return output[head]
            raise LatentSurgeonError(
                f"head={head} does not index a tensor of the model's {len(output)}-element "
                "output.")
        if isinstance(getattr(output, str(head), None), torch.Tensor):
            return getattr(output, str(head))
        raise LatentSurgeonError(
            f"The model returned a {type(output).__name__} of {len(output)} elements; pass the "
            f"position of the logits as head=<int> (head={head!r} names no element).")
    raise LatentSurgeonError(
        f"Cannot find logits in a model output of type {type(output).__name__}; the model must "
        "return a tensor, a tuple or a dict of tensors.")
