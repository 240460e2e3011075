"""The one way to turn what users pass (tensors, dicts, datasets, loaders, splits) into batches.

Every method reads user data through this module:

* :func:`iter_batches` - batches in the data's own structure (a tensor, a tuple of tensors, a
  dict of tensors such as a tokenizer's output, or whatever a ``DataLoader`` yields); in-memory
  data are sliced (or indexed by a seeded permutation) without per-sample collation.
* :func:`batch_inputs` - the model input of a batch (the first element of a tuple batch).
* :func:`attention_mask_of` - the ``(N, T)`` attention mask a dict batch carries (a tokenizer's
  ``attention_mask``), which pooling uses to read token activations (see
  :mod:`latentsurgeon.activations.pooling`).
* :func:`as_loader` - a ``DataLoader`` (for code that needs one: the store, sharding).
* :func:`as_samples` - labelled data held in memory as :class:`Samples` (corrections, metrics).
* :func:`model_device`, :func:`to_device` - where inputs go: the model's device.

A split object with ``.images`` and ``.labels`` (``decoy_digits(...).train``) counts as the tuple
``(images, labels)``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from latentsurgeon.errors import (
    DeviceMismatchError,
    InvalidParameterError,
    LatentSurgeonError,
    ShapeMismatchError,
)

__all__ = [
    "DataLike",
    "analysis_device",
    "attention_mask_of",
    "Samples",
    "as_loader",
    "as_samples",
    "batch_inputs",
    "batch_size_of",
    "check_batch_size",
    "count_samples",
    "index_batches",
    "iter_batches",
    "loader_length",
    "n_batches",
    "model_device",
    "to_device",
    "to_tensor",
]

logger = logging.getLogger(__name__)

DataLike = Any  # Tensor | tuple[Tensor, ...] | dict[str, Tensor] | Dataset | DataLoader | split

_DATA_HELP = (
    "pass a tensor (N, ...), a tuple of tensors such as (images, labels), a dict of tensors, a "
    "split with .images and .labels (e.g. decoy_digits(...).train), a Dataset or a DataLoader"
)


def check_batch_size(batch_size: Any, *, allow_none: bool = False) -> None:
    """Raise :class:`InvalidParameterError` unless ``batch_size`` is an int >= 1 (or None)."""
    if batch_size is None and allow_none:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        extra = " or None" if allow_none else ""
        raise InvalidParameterError(f"batch_size must be an int >= 1{extra}; got {batch_size!r}.")


def to_tensor(value: Any, name: str) -> torch.Tensor:
    """A tensor from a tensor, numpy array or nested list (no copy for tensors)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (np.ndarray, list, tuple)):
        try:
            return torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as exc:
            raise InvalidParameterError(f"{name} must be a tensor or a numpy array; {exc}") from exc
    raise InvalidParameterError(f"{name} must be a tensor or a numpy array, got {type(value).__name__}.")


def _split_tensors(data: Any) -> tuple[torch.Tensor, ...] | None:
    """``(images, labels)`` of a split object, else None."""
    images, labels = getattr(data, "images", None), getattr(data, "labels", None)
    if isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor):
        return images, labels
    return None


def _in_memory(data: Any) -> Any:
    """``data`` as a tensor, a tuple of tensors or a dict of tensors when it is held in memory
    (a TensorDataset and a split count), else None."""
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, TensorDataset):
        return tuple(data.tensors)
    split = _split_tensors(data)
    if split is not None:
        return split
    if isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        lengths = {len(t) for t in data}
        if len(lengths) != 1:
            raise ShapeMismatchError(
                f"Tensors given together must have the same length; got lengths {sorted(lengths)}.")
        return tuple(data)
    if isinstance(data, Mapping) and data and any(isinstance(v, torch.Tensor) for v in data.values()):
        return data
    return None


def batch_size_of(inputs: Any) -> int:
    """Number of samples in one batch (a tensor, a tuple/list or a mapping of tensors)."""
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0]) if inputs.dim() else 1
    if isinstance(inputs, Mapping):
        for value in inputs.values():
            if isinstance(value, torch.Tensor) and value.dim():
                return int(value.shape[0])
    if isinstance(inputs, (tuple, list)) and inputs and isinstance(inputs[0], torch.Tensor):
        return int(inputs[0].shape[0])
    raise LatentSurgeonError(
        f"Cannot tell the number of samples of data of type {type(inputs).__name__}; {_DATA_HELP}.")


def _take(data: Any, index: Any, n: int) -> Any:
    if isinstance(data, torch.Tensor):
        return data[index]
    if isinstance(data, Mapping):
        # Per-sample entries are sliced; anything else (a scalar flag, a cache) passes as is.
        return {k: v[index] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n else v
                for k, v in data.items()}
    return tuple(t[index] for t in data)


def iter_batches(data: DataLike, batch_size: int | None = 64, *, shuffle: bool = False,
                 generator: torch.Generator | None = None) -> Iterator[Any]:
    """Batches of ``data``, in order (or in a seeded random order with ``shuffle``).

    Args:
        data: a tensor ``(N, ...)``, a tuple of tensors, a dict of tensors ``(N, ...)``, a split
            with ``.images``/``.labels``, a ``TensorDataset`` (these are sliced in memory), a
            ``Dataset`` (wrapped in a ``DataLoader``) or a ``DataLoader`` (its own batches, order
            and workers; ``batch_size`` and ``shuffle`` are ignored).
        batch_size: samples per batch; ``None`` gives in-memory data as one batch.
        shuffle: a random order per call, drawn from ``generator`` (in-memory data and Datasets).
        generator: the random source of ``shuffle`` (default: torch's global one).

    Yields:
        Batches shaped like the data: a tensor, a tuple of tensors, a dict, or the loader's batch.
    """
    check_batch_size(batch_size, allow_none=True)
    if isinstance(data, DataLoader):
        yield from data
        return
    memory = _in_memory(data)
    if memory is not None:
        n = batch_size_of(memory)
        if batch_size is None and not shuffle:
            yield memory
            return
        order = torch.randperm(n, generator=generator) if shuffle else None
        step = n if batch_size is None else batch_size
        for start in range(0, n, step):
            index = slice(start, start + step) if order is None else order[start:start + step]
            yield _take(memory, index, n)
        return
    if hasattr(data, "dataset") and callable(data.dataset):  # a split object with .dataset()
        data = data.dataset()
    if isinstance(data, Dataset):
        yield from DataLoader(data, batch_size=batch_size or 64, shuffle=shuffle,
                              generator=generator)
        return
    raise InvalidParameterError(f"Cannot read data of type {type(data).__name__}; {_DATA_HELP}.")


def count_samples(data: DataLike) -> int | None:
    """Number of samples in ``data`` when it can be known without iterating, else None."""
    memory = _in_memory(data)
    if memory is not None:
        return batch_size_of(memory)
    if isinstance(data, DataLoader):
        try:
            return loader_length(data)
        except LatentSurgeonError:
            return None
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        return len(data)  # type: ignore[arg-type]
    return None


def n_batches(data: DataLike, batch_size: int | None) -> int | None:
    """Number of batches :func:`iter_batches` yields, when known (for progress bars)."""
    if isinstance(data, DataLoader):
        try:
            return len(data)
        except TypeError:
            return None
    n = count_samples(data)
    if n is None:
        return None
    return 1 if batch_size is None else math.ceil(n / batch_size)


def as_loader(data: DataLike, batch_size: int = 64, *, shuffle: bool = False,
              seed: int | None = None) -> DataLoader:
    """A ``DataLoader`` over ``data``: a loader is returned as is; a tensor or a tuple of tensors
    becomes a ``TensorDataset``; a split its ``(images, labels)``; a ``Dataset`` is wrapped."""
    check_batch_size(batch_size)
    if isinstance(data, DataLoader):
        return data
    split = _split_tensors(data)
    if split is not None:
        data = TensorDataset(*split)
    elif isinstance(data, torch.Tensor):
        data = TensorDataset(data)
    elif isinstance(data, (tuple, list)) and data and all(isinstance(t, torch.Tensor) for t in data):
        lengths = {len(t) for t in data}
        if len(lengths) != 1:
            raise ShapeMismatchError(
                f"Tensors given together must have the same length; got lengths {sorted(lengths)}.")
        data = TensorDataset(*data)
    elif hasattr(data, "dataset") and callable(data.dataset):
        data = data.dataset()
    if not isinstance(data, Dataset):
        raise InvalidParameterError(f"Cannot read data of type {type(data).__name__}; {_DATA_HELP}.")
    generator = None
    if shuffle:
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)


def batch_inputs(batch: Any) -> Any:
    """The model input of a batch: the first element of a tuple/list batch, else the batch."""
    if isinstance(batch, (tuple, list)) and not isinstance(batch, torch.Tensor):
        return batch[0]
    return batch


#: The key under which a dict batch (a tokenizer's output) carries its attention mask.
ATTENTION_MASK_KEY = "attention_mask"


def attention_mask_of(inputs: Any) -> torch.Tensor | None:
    """The ``(N, T)`` attention mask of a batch of model inputs, or None.

    A dict batch (a tokenizer's output: ``input_ids``, ``attention_mask``, ...) carries it under
    ``"attention_mask"``; a tensor or tuple input carries none. Only a 2-D tensor counts: an
    extended ``(N, 1, T, T)`` mask is the model's business, not a token mask.
    """
    if isinstance(inputs, Mapping):
        mask = inputs.get(ATTENTION_MASK_KEY)
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            return mask
    return None


def loader_length(loader: DataLoader) -> int:
    """Number of samples one pass over ``loader`` yields (sized datasets only)."""
    if isinstance(loader.dataset, IterableDataset):
        raise LatentSurgeonError(
            "This needs to know the number of samples in advance; an IterableDataset has no length."
        )
    if loader.batch_size is None:
        if loader.batch_sampler is None:  # automatic batching off: each item is a whole batch
            raise LatentSurgeonError(
                "This needs to know the number of samples in advance; a DataLoader with "
                "batch_size=None (each item a whole batch) does not say it. Pass the Dataset of "
                "samples with a batch_size, or a DataLoader that batches them."
            )
        return sum(len(b) for b in loader.batch_sampler)  # type: ignore[arg-type]
    n = len(loader.sampler)  # type: ignore[arg-type]
    return (n // loader.batch_size) * loader.batch_size if loader.drop_last else n


def index_batches(n: int, batch_size: int, generator: torch.Generator | None = None
                  ) -> Iterator[torch.Tensor]:
    """Index tensors of ``batch_size`` (the last one shorter), shuffled when ``generator`` is given."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    yield from order.split(batch_size)


# -- labelled data held in memory ----------------------------------------------------------------
@dataclass
class Samples:
    """Tensors of one dataset, first dimension ``N`` shared.

    Attributes:
        images: ``(N, ...)`` model inputs (images, or any input rank: ``(N, D)`` tabular rows).
        labels: ``(N,)`` int64 class labels, or None.
        artifact: ``(N,)`` bool artifact labels (1 = artifact present), or None.
        masks: artifact masks (the input's shape, or broadcastable to it), or None.
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    artifact: torch.Tensor | None = None
    masks: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


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


def _binary_labels(value: Any, name: str) -> torch.Tensor:
    t = to_tensor(value, name).reshape(-1)
    if t.dtype != torch.bool:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InvalidParameterError(f"{name} hold NaN or Inf; expected 0/1 flags.")
        bad = (t != 0) & (t != 1)
        if bool(bad.any()):
            raise InvalidParameterError(
                f"{name} must be 0/1 (or bool) flags; got the value {t[bad][0].item()!r} "
                "(soft labels are not supported: threshold them first).")
    return t.bool()


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
            a tuple ``(images[, labels[, artifact[, masks]]])``, an images tensor/array, a
            ``TensorDataset`` or a ``DataLoader`` (read once into memory).
        labels, artifact, masks: replace what ``data`` carries.
        need_labels: raise unless class labels are available.
        what: the argument's name, for error messages.

    Raises:
        InvalidParameterError: artifact flags other than 0/1; class labels that are not integers.
        ShapeMismatchError: labels or flags whose length differs from the number of inputs.
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
            raise InvalidParameterError(f"Cannot read {what} of type {type(data).__name__}; {_DATA_HELP}.")
        if len(tensors) > 4:
            raise LatentSurgeonError(
                f"{what} holds {len(tensors)} tensors; expected (images[, labels[, artifact[, "
                "masks]]]).")
        found = dict(zip(("images", "labels", "artifact", "masks"), tensors, strict=False))
    for key, value in (("labels", labels), ("artifact", artifact), ("masks", masks)):
        if value is not None:
            found[key] = value
    images = to_tensor(found["images"], f"{what}.images")
    if not images.is_floating_point():
        images = images.float()
    if images.dim() == 0:
        raise ShapeMismatchError(f"{what}: expected inputs (N, ...), got a scalar.")
    n = images.shape[0]
    out = Samples(images)
    if found.get("labels") is not None:
        y = to_tensor(found["labels"], "labels").reshape(-1)
        if y.is_floating_point():
            if not bool(torch.isfinite(y).all()) or bool((y != y.round()).any()):
                raise InvalidParameterError(
                    f"{what}: class labels must be integers; got non-integer values.")
        out.labels = y.long()
    if found.get("artifact") is not None:
        out.artifact = _binary_labels(found["artifact"], "artifact labels")
    if found.get("masks") is not None:
        out.masks = to_tensor(found["masks"], "masks")
    for key in ("labels", "artifact"):
        value = getattr(out, key)
        if value is not None and len(value) != n:
            raise ShapeMismatchError(f"{what}: {key} has {len(value)} entries but there are {n} "
                                     "inputs; they must match one to one.")
    if need_labels and out.labels is None:
        raise LatentSurgeonError(f"{what} carries no class labels; {_DATA_HELP}.")
    return out


# -- devices ---------------------------------------------------------------------------------------
_CPU = torch.device("cpu")


def model_device(model: torch.nn.Module,
                 default: torch.device | None = _CPU) -> torch.device | None:
    """The device of the model's first parameter (or buffer); ``default`` for a model with
    neither (CPU unless told otherwise; ``None`` lets callers leave inputs where they are)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return default


def to_device(inputs: Any, device: torch.device | str) -> Any:
    """Move a tensor, or the tensors of a dict/sequence, to ``device``."""
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, Mapping):
        return {k: to_device(v, device) for k, v in inputs.items()}
    if isinstance(inputs, Sequence) and not isinstance(inputs, str):
        return type(inputs)(to_device(v, device) for v in inputs)
    return inputs


#: One entry per process for the deprecation below (``warnings`` clears it when the filters
#: change, so a test that catches warnings sees it again).
_DEVICE_WARNED: dict[Any, Any] = {}
DEVICE_DEPRECATION = (
    "device= on analysis calls is deprecated and will be removed: an analysis runs where the "
    "model is (only the model's own device was ever accepted); leave device= out, and move the "
    "model (model.to(...)) to run elsewhere.")


def analysis_device(model: torch.nn.Module, device: str | torch.device | None) -> torch.device:
    """Where an analysis call runs: the model's device. An analysis never moves the model, so a
    ``device`` other than the model's is refused, and giving one at all is deprecated (it never
    offered a choice): a ``FutureWarning``, once per process."""
    home = model_device(model)
    if device is None:
        return home
    warnings.warn_explicit(DEVICE_DEPRECATION, FutureWarning, "latentsurgeon", 0,
                           module="latentsurgeon.activations", registry=_DEVICE_WARNED)
    wanted = torch.device(device)
    if wanted.type != home.type or (wanted.index is not None and home.index is not None
                                    and wanted.index != home.index):
        raise DeviceMismatchError(
            f"The model lives on {home} but device={wanted} was given; analysis calls never move "
            f"the model: move it first (model.to({str(wanted)!r})) or leave device=None.")
    return home
